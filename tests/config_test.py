"""Tests for aanets_tf.config."""

import dataclasses
import json
import math

import pytest

from aanets_tf import config as config_lib
from aanets_tf.config import TrainConfig


def test_defaults_are_valid_and_the_paper_setting():
    c = TrainConfig()
    assert c.dataset == "cifar100"
    assert (c.num_base_classes, c.classes_per_phase) == (50, 10)
    assert (c.epochs, c.batch_size, c.learning_rate) == (160, 128, 0.1)
    assert (c.momentum, c.weight_decay) == (0.9, 5e-4)
    assert (c.lambda_base, c.margin, c.top_k) == (5.0, 0.5, 2)
    assert c.exemplars_per_class == 20 and c.memory_budget == 0
    assert c.branch_mode == "dual" and c.aggregation == "learned"
    assert c.aggregation_learnable


def test_aggregation_learnable_follows_mode():
    assert not TrainConfig(aggregation="fixed").aggregation_learnable


INVALID = [
    ("dataset", ""),
    ("num_base_classes", 0),
    ("classes_per_phase", 0),
    ("num_phases", -1),
    ("train_images_per_class", -1),
    ("validation_images_per_class", -5),
    ("test_images_per_class", -1),
    ("arch", "resnet50"),
    ("branch_mode", "triple"),
    ("aggregation", "adaptive"),
    ("initial_aggregation", 1.5),
    ("initial_aggregation", -0.1),
    ("initial_aggregation", 0.02),
    ("aggregation_bound", 0.5),
    ("aggregation_bound", -0.1),
    ("level2_images", "all"),
    ("epochs", 0),
    ("batch_size", 0),
    ("eval_batch_size", 0),
    ("learning_rate", 0.0),
    ("learning_rate", -0.1),
    ("learning_rate", math.inf),
    ("learning_rate", math.nan),
    ("aggregation_lr", 0.0),
    ("lr_decay_epochs", (0.75, 0.5)),
    ("lr_decay_epochs", (0.0, 0.5)),
    ("lr_decay_epochs", (0.5, 1.0)),
    ("lr_decay_factor", 0.0),
    ("lr_decay_factor", 1.5),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("aggregation_momentum", 1.0),
    ("weight_decay", -1e-4),
    ("lambda_base", -1.0),
    ("margin", -0.5),
    ("top_k", 0),
    ("exemplars_per_class", 0),
    ("memory_budget", -1),
    ("workdir", ""),
    ("model_name", ""),
    ("model_name", "a/b"),
    ("mixed_precision", "float16"),
    ("strategy", "horovod"),
    ("class_order_seed", -2),
]


@pytest.mark.parametrize("name, value", INVALID)
def test_invalid_value_names_flag_and_value(name, value):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{name: value})
    message = str(info.value)
    assert f"`{name}` " in message
    assert f"{name}={value!r}" in message
    # Only the offending flag is reported.
    assert message.count("Received:") == 1


@pytest.mark.parametrize("name, value", [
    ("initial_aggregation", 0.06), ("aggregation_bound", 0.0), ("momentum", 0.0),
    ("lr_decay_factor", 1.0), ("lr_decay_epochs", ()), ("lr_decay_epochs", (0.3,)),
    ("lambda_base", 0.0), ("margin", 0.0), ("weight_decay", 0.0), ("num_phases", 0),
    ("arch", "resnet8"), ("arch", "resnet18"), ("branch_mode", "single"),
    ("memory_budget", 2000), ("data_dir", "/some/dir"), ("class_order_seed", 0),
    ("class_order_seed", -1),
])
def test_boundary_values_are_valid(name, value):
    assert getattr(TrainConfig(**{name: value}), name) == value


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_aggregation_weight_may_start_at_an_end_when_not_a_bounded_logit(value):
    # A fixed weight, or a learned one clipped to [0, 1], may start at either end;
    # a learned logit cannot (its range is open).
    assert TrainConfig(initial_aggregation=value, aggregation="fixed").initial_aggregation == value
    assert TrainConfig(initial_aggregation=value, aggregation_bound=0.0).initial_aggregation == value
    with pytest.raises(ValueError, match=r"\(0.05, 0.95\)"):
        TrainConfig(initial_aggregation=value)


def test_several_problems_reported_together():
    with pytest.raises(ValueError) as info:
        TrainConfig(epochs=0, arch="vgg", momentum=2.0)
    message = str(info.value)
    for fragment in ("`epochs`", "epochs=0", "`arch`", "arch='vgg'", "`momentum`",
                     "momentum=2.0"):
        assert fragment in message
    assert message.count("Received:") == 3


def test_xla_with_op_determinism_is_refused():
    with pytest.raises(ValueError, match=r"`jit_compile` cannot be combined with `deterministic`"):
        TrainConfig(jit_compile=True, deterministic=True)
    assert TrainConfig(jit_compile=True).jit_compile


def test_to_dict_from_dict_round_trip():
    c = TrainConfig(dataset="cifar10", data_dir="/data", num_base_classes=4,
                    classes_per_phase=2, lr_decay_epochs=(0.25, 0.5, 0.75), jit_compile=True,
                    branch_mode="single", aggregation="fixed", export_dir="/exports")
    d = c.to_dict()
    assert d["lr_decay_epochs"] == [0.25, 0.5, 0.75]
    assert set(d) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert TrainConfig.from_dict(d) == c
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c
    assert TrainConfig.from_dict(json.loads(TrainConfig().to_json())) == TrainConfig()


def test_from_dict_partial_uses_defaults():
    c = TrainConfig.from_dict({"epochs": 3, "lr_decay_epochs": [0.5]})
    assert c == TrainConfig(epochs=3, lr_decay_epochs=(0.5,))
    assert isinstance(c.lr_decay_epochs, tuple)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"\['bogus', 'epoch'\]"):
        TrainConfig.from_dict({"epoch": 3, "bogus": 1, "seed": 1})


def test_from_dict_validates():
    with pytest.raises(ValueError, match="`top_k`"):
        TrainConfig.from_dict({"top_k": 0})


def test_replace_validates_and_is_frozen():
    c = TrainConfig()
    assert c.replace(epochs=20).epochs == 20
    assert c.epochs == 160
    with pytest.raises(ValueError, match="`epochs`"):
        c.replace(epochs=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3


@pytest.mark.parametrize("epochs, fractions, expected", [
    (160, (0.5, 0.75), [80, 120]),
    (20, (0.5, 0.75), [10, 15]),
    (30, (1 / 3, 2 / 3), [10, 20]),
    (10, (), []),
])
def test_lr_boundaries(epochs, fractions, expected):
    assert TrainConfig(epochs=epochs, lr_decay_epochs=fractions).lr_boundaries() == expected


def test_archs_match_backbones():
    from aanets_tf.models.backbones import ARCHITECTURES
    assert set(config_lib.ARCHS) == set(ARCHITECTURES)
    assert len(config_lib.ARCHS) == len(ARCHITECTURES)


def test_lr_boundaries_drop_epoch_zero():
    assert TrainConfig(epochs=1).lr_boundaries() == [1]
    assert TrainConfig(epochs=160).lr_boundaries() == [80, 120]
    assert TrainConfig(epochs=1, lr_decay_epochs=(0.1, 0.2)).lr_boundaries() == []


def test_repeated_decay_fraction_is_refused():
    with pytest.raises(ValueError, match="lr_decay_epochs"):
        TrainConfig(lr_decay_epochs=(0.5, 0.5))


def test_class_order_seed_decouples_the_order_from_the_draws():
    from aanets_tf.data.class_order import class_order
    from aanets_tf.protocol import incremental

    assert TrainConfig(seed=7).order_seed == 7  # -1: the order follows --seed
    config = TrainConfig(seed=1, class_order_seed=1993, num_base_classes=4,
                         classes_per_phase=2)
    assert config.order_seed == 1993
    plan = incremental.protocol_plan(config, 10)
    assert list(plan.class_order) == class_order(10, 1993) != class_order(10, 1)
