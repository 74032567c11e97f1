"""Tests for aanets_tf.protocol.herding."""

import json

import numpy as np
import pytest

from aanets_tf.protocol.herding import ExemplarMemory, herding_ranking


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_herding_toy_known_by_hand():
    # In 1-D the unit features are +1 (indices 0, 2, 3, 4) and -1 (index 1); the mean is 0.6.
    # Step 1: +1 (distance 0.4) beats -1 (1.6). Step 2: running mean 1 (0.4) beats 0 (0.6).
    # Step 3: the running mean after -1 is 1/3 (distance 0.27) against 1 (0.4): pick -1.
    features = np.array([[2.0], [-1.0], [7.0], [0.5], [3.0]])
    ranking = herding_ranking(features)
    assert set(ranking[:2]) <= {0, 2, 3, 4}
    assert ranking[2] == 1
    assert set(ranking[3:]) <= {0, 2, 3, 4}


def test_herding_2d_toy_known_by_hand():
    # Unit features (1,0), (0,1) and the diagonal: the mean lies on the diagonal, so the
    # diagonal point comes first; then the others (symmetric) in any order.
    features = np.array([[4.0, 0.0], [0.0, 0.5], [3.0, 3.0]])
    ranking = herding_ranking(features)
    assert ranking[0] == 2
    assert sorted(ranking[1:]) == [0, 1]
    # Three nearby directions and one opposite outlier: the mean is about (0.498, 0.012).
    # (1, 0) is closest to it; after it, the running mean overshoots towards +x, and only
    # the outlier pulls it back (distance 0.497 against 0.501 and 0.504 for the others).
    features = np.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [-1.0, 0.05]])
    np.testing.assert_array_equal(herding_ranking(features)[:2], [2, 3])


def _greedy_reference(features, n):
    unit = _unit(np.asarray(features, np.float64))
    mean = unit.mean(0)
    chosen = []
    for k in range(1, n + 1):
        best, best_d = None, np.inf
        for i in range(len(unit)):
            if i in chosen:
                continue
            d = np.linalg.norm((unit[chosen].sum(0) + unit[i]) / k - mean)
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_greedy_reference():
    rng = np.random.RandomState(3)
    features = rng.normal(size=(25, 6)) + 1.0
    np.testing.assert_array_equal(herding_ranking(features), _greedy_reference(features, 25))


def test_first_pick_is_closest_to_normalised_mean():
    rng = np.random.RandomState(0)
    features = rng.normal(size=(40, 8)) * rng.uniform(0.1, 10, size=(40, 1))
    unit = _unit(features)
    mean = unit.mean(0)
    ranking = herding_ranking(features)
    assert ranking[0] == np.argmin(np.linalg.norm(unit - mean, axis=1))


def test_ranking_ignores_feature_scale():
    rng = np.random.RandomState(1)
    features = rng.normal(size=(20, 5))
    scaled = features * rng.uniform(0.01, 100, size=(20, 1))
    np.testing.assert_array_equal(herding_ranking(features), herding_ranking(scaled))


def test_ranking_is_a_permutation():
    rng = np.random.RandomState(2)
    ranking = herding_ranking(rng.normal(size=(33, 4)))
    assert ranking.dtype == np.int64
    assert sorted(ranking.tolist()) == list(range(33))


def test_prefix_means_track_class_mean():
    rng = np.random.RandomState(4)
    features = rng.normal(size=(200, 16)) + 0.5
    unit = _unit(features)
    mean = unit.mean(0)
    ranking = herding_ranking(features, max_rank=10)
    herd_error = np.linalg.norm(unit[ranking].mean(0) - mean)
    random_errors = [np.linalg.norm(unit[rng.choice(200, 10, replace=False)].mean(0) - mean)
                     for _ in range(20)]
    assert herd_error < min(random_errors)


def test_max_rank_is_a_prefix_of_the_full_ranking():
    rng = np.random.RandomState(5)
    features = rng.normal(size=(15, 3))
    full = herding_ranking(features)
    for m in (1, 4, 15):
        np.testing.assert_array_equal(herding_ranking(features, max_rank=m), full[:m])
    np.testing.assert_array_equal(herding_ranking(features, max_rank=100), full)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(5), np.zeros((2, 2, 2))])
def test_herding_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="non-empty"):
        herding_ranking(bad)


def _memory(rng, classes=(0, 1, 2), per_class=12, offset=1000, max_rank=None):
    memory = ExemplarMemory()
    for c in classes:
        indices = offset + 100 * c + np.arange(per_class)
        memory.add_class(c, indices, rng.normal(size=(per_class, 4)), max_rank=max_rank)
    return memory


def test_memory_maps_ranking_to_sample_indices():
    rng = np.random.RandomState(6)
    features = rng.normal(size=(10, 4))
    indices = np.arange(500, 510)[::-1]
    memory = ExemplarMemory()
    memory.add_class(7, indices, features)
    np.testing.assert_array_equal(memory.exemplar_indices(7, 10),
                                  indices[herding_ranking(features)])
    assert memory.classes == [7]


def test_memory_prefixes_shrink_consistently():
    memory = _memory(np.random.RandomState(7))
    assert memory.classes == [0, 1, 2]
    for c in memory.classes:
        big = memory.exemplar_indices(c, 10)
        for small in (1, 5, 9):
            np.testing.assert_array_equal(memory.exemplar_indices(c, small), big[:small])
        assert len(set(big.tolist())) == 10
        assert all(1000 + 100 * c <= i < 1000 + 100 * c + 12 for i in big)
    all5 = memory.all_indices(5)
    assert len(all5) == 15 == memory.num_exemplars(5)
    np.testing.assert_array_equal(all5[5:10], memory.exemplar_indices(1, 5))
    # A budget above the class size keeps everything there is.
    assert memory.num_exemplars(50) == 36
    assert len(memory.all_indices(50)) == 36


def test_memory_max_rank_bounds_storage():
    memory = _memory(np.random.RandomState(8), max_rank=4)
    assert memory.num_exemplars(20) == 12
    assert len(memory.exemplar_indices(1, 20)) == 4


def test_empty_memory():
    memory = ExemplarMemory()
    assert memory.classes == []
    assert memory.all_indices(5).shape == (0,)
    assert memory.num_exemplars(5) == 0


def test_per_class_budget_growing_and_fixed():
    # Growing memory: a fixed number per class, whatever the class count.
    for n in (10, 50, 100):
        assert ExemplarMemory.per_class_budget(n, 20) == 20
    # Fixed total: shared among the classes seen, shrinking as classes arrive.
    assert ExemplarMemory.per_class_budget(50, 20, total_budget=2000) == 40
    assert ExemplarMemory.per_class_budget(100, 20, total_budget=2000) == 20
    assert ExemplarMemory.per_class_budget(60, 20, total_budget=2000) == 34  # ceil
    assert ExemplarMemory.per_class_budget(3000, 20, total_budget=2000) == 1


def test_to_dict_from_dict_round_trip_through_json():
    memory = _memory(np.random.RandomState(9))
    d = json.loads(json.dumps(memory.to_dict()))
    restored = ExemplarMemory.from_dict(d)
    assert restored.classes == memory.classes
    for c in memory.classes:
        np.testing.assert_array_equal(restored.exemplar_indices(c, 12),
                                      memory.exemplar_indices(c, 12))
        assert restored.exemplar_indices(c, 12).dtype == np.int64
    np.testing.assert_array_equal(restored.all_indices(3), memory.all_indices(3))


def test_mismatched_lengths_raise():
    memory = ExemplarMemory()
    with pytest.raises(ValueError, match="5 sample indices but 4 feature rows"):
        memory.add_class(3, np.arange(5), np.ones((4, 2)))
    assert memory.classes == []
