"""Every host the library knows, readable before any framework starts.

One `HostEntry` per host says what the rest of the project needs without importing
TensorFlow or Keras: the `host` setting's values and the order tables list them in
(`config`, `tools/train_flags.py`, `reports`), the name people read (`tools/console.py`,
the tables), the settings only that host reads (`config.TrainConfig` refuses them for
another host), the accuracy it reports and the hosts whose phase 0 is the same
(`protocol.run_state.adopt_phase0`, `benchmarks.hosts`). `host_for` builds the entry's
implementation, a `Host` subclass in this package, named by module and class so that
reading the registry imports no framework.

Adding a host: its module in this package and its entry here.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class HostEntry:
    """One class-incremental method, as the framework-free code sees it."""
    name: str  # the `host` setting's value
    display_name: str  # in summaries and tables
    headline: str  # the classifier whose accuracy the method reports: "cnn" or "nme"
    # Hosts of one family here train the same phase 0 (head, loss, step after herding),
    # so a run of one can take another's phase 0.
    phase0_family: str
    options: tuple[str, ...]  # `TrainConfig` fields only this host reads
    implementation: str  # "module:Class", a `aanets_tf.hosts.host.Host` subclass

    def load(self) -> type:
        """The entry's `Host` subclass (importing it starts the framework)."""
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)


# In the paper's table order.
ENTRIES = (
    HostEntry("icarl", "iCaRL", headline="nme", phase0_family="cosine", options=(),
              implementation="aanets_tf.hosts.icarl:Icarl"),
    HostEntry("lucir", "LUCIR", headline="cnn", phase0_family="cosine",
              options=("lambda_base", "margin", "top_k"),
              implementation="aanets_tf.hosts.lucir:Lucir"),
    HostEntry("podnet", "PODNet", headline="cnn", phase0_family="podnet",
              options=("pod_spatial_base", "pod_flat_base", "nca_margin", "proxies_per_class",
                       "finetune_epochs", "finetune_lr"),
              implementation="aanets_tf.hosts.podnet:Podnet"),
)

BY_NAME = {e.name: e for e in ENTRIES}
HOSTS = tuple(BY_NAME)
HOST_NAMES = {e.name: e.display_name for e in ENTRIES}
HOST_HEADLINES = {e.name: e.headline for e in ENTRIES}
HOST_OPTIONS = {e.name: e.options for e in ENTRIES}
PHASE0_FAMILIES = {e.name: e.phase0_family for e in ENTRIES}


def entry(name: str) -> HostEntry:
    """The entry of host `name`."""
    if name not in BY_NAME:
        raise ValueError(f"Unknown host. Expected one of {sorted(BY_NAME)}. "
                         f"Received: host={name!r}")
    return BY_NAME[name]
