"""Tests for aanets_tf.data.class_order."""

import numpy as np
import pytest

from aanets_tf.data.class_order import PhasePlan, class_order


def test_cifar10_order_seed_1993():
    assert class_order(10, 1993) == [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]


def test_cifar100_order_seed_1993():
    order = class_order(100, 1993)
    assert order[:5] == [68, 56, 78, 8, 23]
    assert sorted(order) == list(range(100))
    assert all(type(c) is int for c in order)


def test_order_depends_on_seed_only():
    assert class_order(100, 7) == class_order(100, 7)
    assert class_order(100, 7) != class_order(100, 8)


def test_class_order_rejects_no_classes():
    with pytest.raises(ValueError, match="num_classes"):
        class_order(0, 1993)


@pytest.fixture
def plan100():
    return PhasePlan(tuple(class_order(100, 1993)), num_base_classes=50, classes_per_phase=10)


def test_phase_counts_100_classes(plan100):
    assert plan100.num_classes == 100
    assert plan100.num_phases == 6
    assert [plan100.num_seen_classes(p) for p in range(6)] == [50, 60, 70, 80, 90, 100]
    assert [plan100.num_old_classes(p) for p in range(6)] == [0, 50, 60, 70, 80, 90]


def test_new_seen_old_classes(plan100):
    order = list(plan100.class_order)
    assert plan100.new_classes(0) == order[:50]
    assert plan100.new_classes(1) == order[50:60]
    assert plan100.new_classes(5) == order[90:]
    assert plan100.seen_classes(2) == order[:70]
    assert plan100.seen_classes(0) == plan100.new_classes(0)
    learned = [c for p in range(6) for c in plan100.new_classes(p)]
    assert learned == order
    for p in range(1, 6):
        assert plan100.seen_classes(p) == plan100.seen_classes(p - 1) + plan100.new_classes(p)


def test_position_of_inverts_the_order(plan100):
    position = plan100.position_of
    order = np.asarray(plan100.class_order)
    np.testing.assert_array_equal(position[order], np.arange(100))
    np.testing.assert_array_equal(order[position], np.arange(100))
    assert position[68] == 0 and position[56] == 1 and position[23] == 4


def test_cifar10_cpu_protocol_plan():
    plan = PhasePlan(tuple(class_order(10, 1993)), 4, 2)
    assert plan.num_phases == 4
    assert plan.new_classes(0) == [4, 2, 7, 6]
    assert plan.new_classes(1) == [0, 3]
    assert plan.new_classes(3) == [9, 1]
    assert plan.num_old_classes(3) == 8


def test_base_phase_only():
    plan = PhasePlan(tuple(range(10)), 10, 3)
    assert plan.num_phases == 1
    assert plan.new_classes(0) == list(range(10))


@pytest.mark.parametrize("phase", [-1, 6, 100])
def test_phase_out_of_range_raises(plan100, phase):
    with pytest.raises(ValueError, match=f"phase={phase}"):
        plan100.num_seen_classes(phase)
    with pytest.raises(ValueError):
        plan100.new_classes(phase)


@pytest.mark.parametrize("base, per_phase, flag", [
    (0, 10, "num_base_classes"),
    (101, 10, "num_base_classes"),
    (50, 0, "classes_per_phase"),
    (50, 7, "classes_per_phase=7"),
    (50, 30, "classes_per_phase=30"),
])
def test_invalid_split_names_the_flag(base, per_phase, flag):
    with pytest.raises(ValueError, match=flag):
        PhasePlan(tuple(range(100)), base, per_phase)


@pytest.mark.parametrize("order", [(0, 1, 1, 3), (1, 2, 3, 4), (0, 2)])
def test_order_must_be_a_permutation(order):
    with pytest.raises(ValueError, match="permutation"):
        PhasePlan(order, 1, 1)
