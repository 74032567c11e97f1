"""benchmarks.arithmetic: operations per image counted from a network's graph, and the
shares of a matrix product's rate."""

import pytest

from benchmarks import arithmetic


def test_forward_flops_count_two_per_multiply_add_of_convolutions_and_dense_layers():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)  # 8*8*3*3*3*4
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, use_bias=False)(x)  # 4*5
    model = keras.Model(inputs, outputs)
    flops = arithmetic.forward_flops(model, (8, 8, 3))
    multiply_adds = 8 * 8 * 3 * 3 * 3 * 4 + 4 * 5
    # The pooling's additions are counted too, a few dozen.
    assert 2 * multiply_adds <= flops <= 2 * multiply_adds + 8 * 8 * 4 + 8


def test_the_aanet_costs_about_two_resnets_and_resnet32_its_published_count():
    from aanets_tf.models.backbones import aanet_from_resnet, build_resnet

    resnet = build_resnet("resnet32", (32, 32, 3), name="resnet")
    aanet = aanet_from_resnet(resnet, learnable_aggregation=True, initial_aggregation=0.5,
                              aggregation_bound=0.05, stable_block="scaled", stem="shared",
                              name="aanet")
    plain = arithmetic.forward_flops(resnet, (32, 32, 3))
    both = arithmetic.forward_flops(aanet, (32, 32, 3))
    assert plain == pytest.approx(0.139e9, rel=0.02)  # ResNet-32: about 69M multiply-adds
    assert both == pytest.approx(2 * plain, rel=0.02)  # one stem shared, two of the rest


def test_steps_are_three_forward_passes_plus_the_teachers_and_shares_use_the_peak():
    flops = arithmetic.step_flops(plain=100, aanet=200)
    assert flops["phase0"] == 300 and flops["level1_aanet"] == 700
    assert flops["level1_aanet_teacher"] == 800 and flops["eval_aanet"] == 200
    rows = arithmetic.shares({"phase0": 1e7, "level2_aanet": 5.0}, flops, peak_gflops=6.0)
    assert list(rows) == ["phase0"]  # Level 2's arithmetic is not counted
    assert rows["phase0"]["gflops"] == pytest.approx(3.0)
    assert rows["phase0"]["share_of_matmul"] == pytest.approx(0.5)
    assert "| phase0 | 0.000 | 3.0 | 50% |" in arithmetic.table(rows, 6.0, "float32")


def test_a_matrix_product_reports_a_positive_rate():
    assert arithmetic.matmul_gflops(size=64, repeats=1, products=2) > 0
