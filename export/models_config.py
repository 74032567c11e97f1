r"""Write TF Serving's `models.config` for exported models.

    python export/models_config.py --base_path=runs/cifar/export/aanets \
        --output=runs/cifar/export/models.config
    python export/models_config.py --base_path=/models/aanets --policy=specific \
        --versions=4,5 --labels=stable=4,canary=5 --output=models.config

Version policies are TF Serving's: `latest` (the `--num_latest` highest
versions), `all`, or `specific` (`--versions`). A label (`stable`, `canary`)
names one version; TF Serving accepts a label only for a version it has
loaded, so labels must name served versions. When the base path exists on
this machine its versions are checked too; a container path such as
`/models/aanets` is written as given.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from aanets_tf import atomic_io  # noqa: E402
from aanets_tf.serving.serving_config import (POLICIES, model_config,  # noqa: E402,F401
                                              models_config_text, parse_labels,
                                              parse_models_config)

FLAGS = flags.FLAGS
def define_flags() -> None:
    flags.DEFINE_string("name", "aanets", "Model name clients ask for.")
    flags.DEFINE_string("base_path", None,
                        "The model's export directory (holding versions 1, 2, ...) as the server "
                        "sees it. A relative local path is made absolute.")
    flags.DEFINE_enum("policy", "latest", list(POLICIES), "Version policy.")
    flags.DEFINE_integer("num_latest", 1, "Versions served by the `latest` policy.")
    flags.DEFINE_list("versions", [], "Versions served by the `specific` policy, e.g. 4,5.")
    flags.DEFINE_list("labels", [], "Version labels, e.g. stable=4,canary=5.")
    flags.DEFINE_string("output", "-", "Where to write models.config ('-': stdout).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    base_path = FLAGS.base_path
    if "://" not in base_path and not os.path.isabs(base_path):
        base_path = os.path.abspath(base_path)
    try:
        bad = [v for v in FLAGS.versions if not v.strip().isdigit()]
        if bad:
            raise ValueError(f"--versions takes positive integers. Received: {bad}")
        config = model_config(FLAGS.name, base_path, policy=FLAGS.policy,
                              num_latest=FLAGS.num_latest,
                              versions=[int(v) for v in FLAGS.versions],
                              version_labels=parse_labels(FLAGS.labels))
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    text = models_config_text([config])
    if FLAGS.output == "-":
        sys.stdout.write(text)
    else:
        atomic_io.write_text(FLAGS.output, text)
        print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("base_path")
    app.run(main)
