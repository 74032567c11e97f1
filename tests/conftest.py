"""Shared test setup: quiet TensorFlow, importable tools, absl flags usable under pytest.

Also the suite's two tiers: tests marked `slow` (end-to-end runs, real CIFAR-10,
fresh processes, servers, XLA compiles, SavedModel exports) run after all the
others, and the wall time of each tier is printed.
`python -m pytest -q -m "not slow" tests` runs the fast tier alone.
Helpers tests share are in `support.py`.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import support  # noqa: E402,F401 - puts the repository on the path (tools, the library)

# Before any test module imports Keras or TensorFlow: the library's choice of kernels and
# allocator (aanets_tf.cpu), so that this process computes as the tools it starts do (on a
# CPU without AVX-512, TensorFlow would otherwise run Eigen's kernels here and oneDNN's
# there, and runs compared bit for bit would differ).
import aanets_tf  # noqa: E402,F401

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# pytest does not parse absl flags; tools read them only through FLAGS.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def phase_networks():
    """Phase 0 (ResNet-8, 4 classes) and phase 1 (AANet, 6 classes) of tests/serving_networks.py."""
    from serving_networks import two_phases

    return two_phases()


@pytest.fixture(scope="session")
def exported_phases(phase_networks, tmp_path_factory):
    """A model base path with versions 1 (phase 0, a ResNet) and 2 (phase 1, an AANet)."""
    from aanets_tf.serving import serving
    from serving_networks import CLASS_ORDER, LABEL_NAMES, PHASE_CLASSES

    base = str(tmp_path_factory.mktemp("export") / "aanets")
    for phase, network in enumerate(phase_networks):
        serving.export_phase(network, base, phase + 1, CLASS_ORDER[:PHASE_CLASSES[phase]],
                             LABEL_NAMES)
    return base


@pytest.fixture(scope="session")
def limited_export(phase_networks, tmp_path_factory):
    """`(version directory, limits)`: phase 0 exported as version 1 with small request limits."""
    from aanets_tf.serving import serving
    from serving_networks import CLASS_ORDER, LABEL_NAMES, PHASE_CLASSES

    base = str(tmp_path_factory.mktemp("limited") / "aanets")
    limits = serving.ServingLimits(max_batch=3, max_image_bytes=4000, max_image_pixels=64 * 64)
    path = serving.export_phase(phase_networks[0], base, 1, CLASS_ORDER[:PHASE_CLASSES[0]],
                                LABEL_NAMES, limits=limits)
    return path, limits


@pytest.fixture(scope="session")
def small_cifar():
    """Real CIFAR-10, 5 training, 7 test and 3 validation images per class: read once for
    the data and pipeline tests."""
    from aanets_tf.data import datasets

    return datasets.load_dataset("cifar10", support.SHARED_DATA_DIR, train_images_per_class=5,
                                 test_images_per_class=7, validation_images_per_class=3)


@pytest.fixture(scope="session")
def tiny_cifar():
    """The real CIFAR-10 images of `support.TINY`'s runs: 12 training and 10 test images per
    class."""
    from aanets_tf.data import datasets

    return datasets.load_dataset("cifar10", support.SHARED_DATA_DIR, train_images_per_class=12,
                                 test_images_per_class=10)


@pytest.fixture(scope="session")
def finished_run(tiny_cifar, tmp_path_factory):
    """`(config, results)`: the one finished run of `support.TINY` (deterministic, on
    `tiny_cifar`) that every test needing one shares. Read it or copy it; never change
    its workdir."""
    from aanets_tf.config import TrainConfig
    from aanets_tf.protocol import incremental

    config = TrainConfig(**support.TINY, workdir=str(tmp_path_factory.mktemp("finished_run")),
                         deterministic=True)
    return config, incremental.run(config, data=tiny_cifar, verbose=0, log=lambda _: None)


# Fixtures that train, read real CIFAR-10, write SavedModels or start a server: a test
# taking one is slow.
_SLOW_FIXTURES = {"tiny_cifar", "finished_run", "small_cifar", "exported_phases",
                  "limited_export", "server"}

_TIER_STARTS = {"fast": time.monotonic()}
_SLOW_IDS: set[str] = set()
FAST_TIER_BUDGET_MINUTES = 2
SUITE_BUDGET_MINUTES = 15


# Fixtures that are set up for each test anyway: sharing them ties no tests together.
_PER_TEST_FIXTURES = {"request", "tmp_path", "tmp_path_factory", "monkeypatch", "capsys",
                      "capfd", "caplog", "recwarn"}


def pytest_collection_modifyitems(session, config, items):
    """The fast tier first, then the slow one, each in collection order.

    The slow tier holds the tests marked `slow`, those taking a fixture that
    trains, reads real CIFAR-10, writes SavedModels or starts a server
    (`_SLOW_FIXTURES`), and the tests of their module that share a fixture with
    them, so a costly fixture is built once.
    """
    shared = {}
    for item in items:
        if item.get_closest_marker("slow") is not None:
            shared.setdefault(item.path, set()).update(item.fixturenames)
    late = {item.nodeid for item in items
            if item.get_closest_marker("slow") is not None
            or _SLOW_FIXTURES & set(item.fixturenames)
            or (set(item.fixturenames) - _PER_TEST_FIXTURES) & shared.get(item.path, set())}
    items.sort(key=lambda item: item.nodeid in late)
    _SLOW_IDS.update(late)


def pytest_runtest_logstart(nodeid, location):
    del location
    if "slow" not in _TIER_STARTS and nodeid in _SLOW_IDS:
        _TIER_STARTS["slow"] = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    """Each tier's wall time against its budget, above pytest's own summary line."""
    end = time.monotonic()
    fast_end = _TIER_STARTS.get("slow", end)
    terminalreporter.write_line(
        f"fast tier wall time: {(fast_end - _TIER_STARTS['fast']) / 60:.1f} min "
        f"(budget: {FAST_TIER_BUDGET_MINUTES} min)")
    if "slow" in _TIER_STARTS:
        terminalreporter.write_line(
            f"slow tier wall time: {(end - _TIER_STARTS['slow']) / 60:.1f} min")
    terminalreporter.write_line(f"suite wall time: {(end - _TIER_STARTS['fast']) / 60:.1f} min "
                                f"(CI budget: {SUITE_BUDGET_MINUTES} min)")
