"""Tests for tools.train_flags: flags <-> TrainConfig, and the repository's flagfiles."""

import copy
import dataclasses
import glob
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from aanets_tf.data.class_order import PhasePlan
from aanets_tf.config import TrainConfig
from support import REPO_ROOT
from tools import train_flags

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
FLAGFILES = sorted(glob.glob(os.path.join(REPO_ROOT, "*.flags"))
                   + glob.glob(os.path.join(REPO_ROOT, "flags", "*.flags")))


@pytest.fixture(scope="module", autouse=True)
def defined():
    train_flags.define_flags()


def _fresh_flag_values():
    """A private FlagValues holding default-valued copies of the run's flags."""
    fv = flags.FlagValues()
    for name in FIELDS + ["overwrite"]:
        flag = copy.deepcopy(flags.FLAGS[name])
        flag.unparse()
        fv[name] = flag
    return fv


def _parse(argv_tail):
    fv = _fresh_flag_values()
    fv(["train.py"] + list(argv_tail))
    return fv


def _config_from_file(path):
    return train_flags.config_from_flags(_parse([f"--flagfile={path}"]))


def test_one_flag_per_field_plus_overwrite():
    names = set(flags.FLAGS)
    for name in FIELDS:
        assert name in names
        assert train_flags.HELP[name]
    assert "overwrite" in names
    assert flags.FLAGS["overwrite"].default is False
    assert set(train_flags.HELP) == set(FIELDS)


def test_flag_defaults_are_the_config_defaults():
    defaults = TrainConfig()
    for name in FIELDS:
        flag_default = flags.FLAGS[name].default
        if name == "lr_decay_epochs":
            assert [float(v) for v in flag_default] == list(defaults.lr_decay_epochs)
        else:
            assert flag_default == getattr(defaults, name), name
    assert train_flags.config_from_flags(_parse([])) == defaults


def test_auto_precision_is_resolved_before_the_config(monkeypatch):
    """`--mixed_precision=auto` becomes the machine's precision: the config (and the
    run's config.json) holds the resolved name, never `auto`."""
    from aanets_tf.training import precision
    for flags_of_cpu, expected in ((["avx2", "avx512_bf16"], "mixed_bfloat16"),
                                   (["avx2"], "float32")):
        monkeypatch.setattr(precision.cpu, "cpu_info",
                            lambda flags_of_cpu=flags_of_cpu: {"model": "x", "flags": flags_of_cpu})
        config = train_flags.config_from_flags(_parse(["--mixed_precision=auto"]))
        assert config.mixed_precision == expected
    with pytest.raises(flags.IllegalFlagValueError, match="mixed_precision"):
        _parse(["--mixed_precision=bf16"])


def test_define_flags_is_idempotent():
    before = {name: flags.FLAGS[name] for name in FIELDS}
    train_flags.define_flags()
    assert all(flags.FLAGS[name] is before[name] for name in FIELDS)


def test_enum_flags_reject_unknown_choices():
    for arg in ("--arch=resnet50", "--branch_mode=triple", "--aggregation=adaptive"):
        with pytest.raises(flags.IllegalFlagValueError):
            _parse([arg])


def test_command_line_values_reach_the_config():
    fv = _parse(["--dataset=cifar10", "--epochs=7", "--lr_decay_epochs=0.2,0.4,0.8",
                 "--jit_compile", "--noexport", "--learning_rate=0.05", "--arch=resnet8",
                 "--data_dir=/tmp/tfds", "--overwrite"])
    config = train_flags.config_from_flags(fv)
    assert config == TrainConfig(dataset="cifar10", epochs=7, lr_decay_epochs=(0.2, 0.4, 0.8),
                                 jit_compile=True, export=False, learning_rate=0.05,
                                 arch="resnet8", data_dir="/tmp/tfds")
    assert fv.overwrite is True
    # The private FlagValues leaves the process-wide flags alone.
    assert flags.FLAGS["epochs"].value != 7 and flags.FLAGS["overwrite"].value is False


def test_config_from_flags_reads_global_flags_by_default():
    with flagsaver.flagsaver(epochs=3, margin=0.25):
        config = train_flags.config_from_flags()
    assert config.epochs == 3 and config.margin == 0.25


def test_config_for_main_turns_bad_input_into_usage_errors():
    from absl import app

    with flagsaver.flagsaver(epochs=3):
        assert train_flags.config_for_main(["train.py"]).epochs == 3
        with pytest.raises(app.UsageError, match=r"Unexpected arguments: \['cifar'\]"):
            train_flags.config_for_main(["train.py", "cifar"])
    with flagsaver.flagsaver(batch_size=0):
        with pytest.raises(app.UsageError, match=r"--batch_size must be >= 1"):
            train_flags.config_for_main(["train.py"])


@pytest.mark.parametrize("name", ["workdir", "export_dir", "data_dir", "phase0_from"])
def test_directory_flag_naming_a_file_is_refused_before_anything_runs(tmp_path, name):
    from absl import app

    path = tmp_path / "a_file"
    path.write_text("not a directory")
    with flagsaver.flagsaver(**{name: str(path)}):
        with pytest.raises(app.UsageError, match=f"--{name}=.*a_file is a file; it must "
                                                 "name a directory"):
            train_flags.config_for_main(["train.py"])


@pytest.mark.parametrize("arch, size, ok", [
    ("resnet32", 3, False), ("resnet32", 8, True), ("resnet18", 16, False),
    ("resnet18", 32, True), ("resnet32", 2048, False), ("resnet32", 0, True)])
def test_image_size_bounds_follow_the_architecture(arch, size, ok):
    if ok:
        assert TrainConfig(arch=arch, image_size=size).image_size == size
    else:
        with pytest.raises(ValueError, match=f"image_size={size}"):
            TrainConfig(arch=arch, image_size=size)


def test_invalid_values_raise_value_error_naming_the_flag():
    with pytest.raises(ValueError, match="--lr_decay_epochs must be numbers"):
        train_flags.config_from_flags(_parse(["--lr_decay_epochs=half,0.75"]))
    with pytest.raises(ValueError, match="--epochs"):
        train_flags.config_from_flags(_parse(["--epochs=0"]))


ROUND_TRIP_CONFIGS = [
    TrainConfig(),
    TrainConfig(dataset="cifar10", data_dir="../shared/tensorflow_datasets", num_base_classes=4,
                classes_per_phase=2, train_images_per_class=500, epochs=20),
    TrainConfig(download=True, deterministic=True, export=False, mixed_precision="mixed_bfloat16",
                strategy="mirrored",
                export_dir="/exports", model_name="m1", branch_mode="single",
                aggregation="fixed", initial_aggregation=0.3, aggregation_lr=1e-8,
                weight_decay=0.1 + 0.2, lr_decay_epochs=(1 / 3, 2 / 3), memory_budget=2000,
                validation_images_per_class=50, num_phases=3, seed=0, arch="resnet18"),
    TrainConfig(lr_decay_epochs=(), workdir="runs/with space", jit_compile=True),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS)
def test_config_to_flagfile_parses_back(config, tmp_path):
    text = train_flags.config_to_flagfile(config, header="Made for a test.\n\nSecond line.")
    lines = text.splitlines()
    assert lines[:3] == ["# Made for a test.", "#", "# Second line."]
    path = tmp_path / "run.flags"
    path.write_text(text)
    assert _config_from_file(path) == config


def test_flagfile_overrides_and_later_flags_win(tmp_path):
    path = tmp_path / "a.flags"
    path.write_text(train_flags.config_to_flagfile(TrainConfig(epochs=5)))
    config = train_flags.config_from_flags(_parse([f"--flagfile={path}", "--epochs=9"]))
    assert config.epochs == 9


def test_repository_has_the_expected_flagfiles():
    names = {os.path.relpath(p, REPO_ROOT) for p in FLAGFILES}
    assert {"cifar.flags", "flags/cifar10_cpu.flags", "flags/smoke.flags"} <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_repository_flagfiles_parse_into_valid_configs(path):
    config = _config_from_file(path)
    assert isinstance(config, TrainConfig)
    num_classes = config.num_classes or {"cifar10": 10, "cifar100": 100,
                                         "imagenet2012": 1000}[config.dataset]
    plan = PhasePlan(tuple(range(num_classes)), config.num_base_classes,
                     config.classes_per_phase)
    assert plan.num_phases >= (config.num_phases or 1)


def test_paper_flagfiles_match_the_paper_settings():
    by_name = {os.path.relpath(p, REPO_ROOT): _config_from_file(p) for p in FLAGFILES}
    for name, incremental_phases in (("cifar.flags", 5), ("flags/cifar100_n10.flags", 10),
                                     ("flags/cifar100_n25.flags", 25)):
        config = by_name[name]
        plan = PhasePlan(tuple(range(100)), config.num_base_classes, config.classes_per_phase)
        assert plan.num_phases == incremental_phases + 1
        assert config.lr_boundaries() == [80, 120]
        assert (config.lambda_base, config.margin, config.top_k) == (5.0, 0.5, 2)
        assert config.memory_budget == 2000  # the authors' released command


def test_imagenet_flagfiles_match_the_released_command():
    for name, classes, base, per_phase in (("imagenet_subset", 100, 50, 10),
                                           ("imagenet", 0, 500, 100)):
        config = _config_from_file(os.path.join(REPO_ROOT, "flags", f"{name}.flags"))
        assert (config.dataset, config.num_classes, config.arch) == (
            "imagenet2012", classes, "resnet18")
        assert (config.num_base_classes, config.classes_per_phase) == (base, per_phase)
        assert (config.epochs, config.learning_rate, config.lr_schedule) == (90, 0.05, "cosine")
        assert (config.lambda_base, config.exemplars_per_class, config.eval_batch_size) == (
            10.0, 20, 50)


def test_cpu_protocol_flagfile_matches_spec_section_7():
    config = _config_from_file(os.path.join(REPO_ROOT, "flags", "cifar10_cpu.flags"))
    assert config.dataset == "cifar10" and config.seed == 1993
    assert (config.num_base_classes, config.classes_per_phase) == (4, 2)
    assert PhasePlan(tuple(range(10)), 4, 2).num_phases == 4
    assert config.train_images_per_class == 500 and config.test_images_per_class == 0
    assert (config.epochs, config.batch_size) == (20, 128)
    assert config.lr_boundaries() == [10, 15]
    assert config.exemplars_per_class == 20


def test_library_messages_are_translated_to_flag_names():
    message = ("Invalid configuration:\n  `epochs` must be >= 1. Received: epochs=0\n"
               "  'margin=0.1:0.5': eval_split='validation' needs `validation_images_per_class`")
    translated = train_flags.as_flag_names(message, names={"epochs", "margin",
                                                           "validation_images_per_class"})
    assert translated == (
        "Invalid configuration:\n  --epochs must be >= 1. Received: --epochs=0\n"
        "  'margin=0.1:0.5': eval_split='validation' needs --validation_images_per_class")
