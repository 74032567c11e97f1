"""The search-space text of `tools/tune.py --search`: parsing, errors, KerasTuner declarations."""

import keras_tuner
import pytest

from aanets_tf.config import TrainConfig
from aanets_tf.tuning import search_space


def test_default_search_parses_and_round_trips():
    config = TrainConfig()
    dims = search_space.parse_search(search_space.DEFAULT_SEARCH, config)
    assert [d.name for d in dims] == ["learning_rate", "aggregation_lr", "lambda_base", "margin",
                                      "top_k", "weight_decay", "initial_aggregation"]
    assert search_space.parse_search(",".join(d.spec() for d in dims), config) == dims


def test_parse_kinds():
    dims = search_space.parse_search(
        " learning_rate=log:0.01:0.5, lambda_base=1:10 ,top_k=int:1:3,margin=choice:0.3|0.5|0.7,"
        "initial_aggregation=0.3:0.7:0.1,", TrainConfig())
    lr, lam, k, margin, alpha = dims
    assert (lr.low, lr.high, lr.sampling, lr.integer) == (0.01, 0.5, "log", False)
    assert (lam.low, lam.high, lam.sampling) == (1.0, 10.0, "linear")
    assert (k.low, k.high, k.integer) == (1, 3, True) and isinstance(k.low, int)
    assert margin.choices == (0.3, 0.5, 0.7)
    assert alpha.step == pytest.approx(0.1)


@pytest.mark.parametrize("text, expected", [
    ("lamda_base=1:10", ["'lamda_base=1:10'", "unknown hyper-parameter 'lamda_base'",
                         "did you mean lambda_base?"]),
    ("lambda_base=10:1", ["'lambda_base=10:1'", "empty range"]),
    ("margin=0.5:0.5", ["'margin=0.5:0.5'", "empty range"]),
    ("top_k=int:3:1", ["'top_k=int:3:1'", "empty range"]),
    ("margin=choice:0.5|0.5", ["at least two different values"]),
    ("epochs=1:3", ["--epochs is a training flag but not a searchable"]),
    ("learning_rate=log:0:1", ["log sampling needs a positive low end"]),
    ("weight_decay=int:1:3", ["'int:' is for integer hyper-parameters"]),
    ("top_k=int:1.5:3", ["'1.5' is not an integer"]),
    ("margin=exp:1:2", ["unknown kind 'exp'"]),
    ("margin=a:b:c:d", ["unknown kind 'a'"]),
    ("margin=0.1", ["expected [log:|int:]LOW:HIGH[:STEP]"]),
    ("margin", ["expected NAME=SPEC"]),
    ("margin=0.1:0.5:0.6", ["the step must lie in (0, high - low]"]),
    ("initial_aggregation=0.3:1.5", ["`initial_aggregation` must lie in [0, 1]",
                                     "Received: initial_aggregation=1.5"]),
    ("margin=0.1:0.5,margin=0.2:0.3", ["margin is searched twice"]),
    ("", ["--search names no hyper-parameter"]),
    (" , ", ["--search names no hyper-parameter"]),
])
def test_bad_search_names_the_problem(text, expected):
    with pytest.raises(search_space.SearchSpaceError) as e:
        search_space.parse_search(text, TrainConfig())
    for part in expected:
        assert part in str(e.value)


def test_all_problems_are_reported_together():
    with pytest.raises(search_space.SearchSpaceError) as e:
        search_space.parse_search("foo=1:2,margin=0.1:0.5,lambda_base=3:2", TrainConfig())
    message = str(e.value)
    assert "'foo'" in message and "'lambda_base=3:2'" in message and "margin=0.1" not in message


def test_hyper_parameters_without_effect_are_refused():
    single = TrainConfig(branch_mode="single")
    with pytest.raises(search_space.SearchSpaceError, match="branch_mode=single"):
        search_space.parse_search("initial_aggregation=0.2:0.8", single)
    with pytest.raises(search_space.SearchSpaceError, match="aggregation=fixed"):
        search_space.parse_search("aggregation_lr=log:0.001:0.1", TrainConfig(aggregation="fixed"))
    with pytest.raises(search_space.SearchSpaceError, match="num_phases=1"):
        search_space.parse_search("margin=0.1:0.5", TrainConfig(num_phases=1))
    assert search_space.parse_search("initial_aggregation=0.2:0.8", TrainConfig(aggregation="fixed"))


def test_hyperparameters_types_and_defaults():
    config = TrainConfig(margin=0.9)
    dims = search_space.parse_search(
        "learning_rate=log:0.01:0.5,top_k=int:1:3,margin=0.1:0.7,lambda_base=choice:2|5|8",
        config)
    hp = search_space.build_hyperparameters(dims, config)
    by_name = {p.name: p for p in hp.space}
    types = keras_tuner.engine.hyperparameters
    assert isinstance(by_name["learning_rate"], types.Float)
    assert by_name["learning_rate"].sampling == "log"
    assert isinstance(by_name["top_k"], types.Int)
    assert isinstance(by_name["lambda_base"], types.Choice)
    assert by_name["lambda_base"].values == [2.0, 5.0, 8.0]
    # The config's value where it lies in the space, else the low end.
    assert hp.values == {"learning_rate": 0.1, "top_k": 2, "margin": 0.1, "lambda_base": 5.0}
