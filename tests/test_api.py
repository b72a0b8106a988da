"""The Python API: FairFineTuner on a user's nn.Module, from tensors or a DataLoader; compare()."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.model_selection import GridSearchCV
from torch.utils.data import DataLoader, TensorDataset

from fairtune import FairFineTuner, compare, errors
from fairtune.config import FinetuneGrid
from fairtune.errors import ConfigError, DataError, FairtuneError, ModelError
from fairtune.factorization import FactorizedLinear
from fairtune.finetune import MEANINGLESS_ARGUMENT

TINY = FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(2,), operators=("mean",))


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(300, 5, generator=generator)
    s = (X[:, 1] > 0).long()
    y = (X[:, 0] + 0.5 * s + 0.5 * torch.randn(300, generator=generator) > 0).long()
    return model, X, y, s


def test_fit_replaces_the_last_layer_and_trains_only_it(problem) -> None:
    model, X, y, s = problem

    tuner = FairFineTuner(model, method="win", rank=1, operator="mean", epochs=3).fit(X, y, sensitive_features=s)

    assert isinstance(tuner.model_[2], FactorizedLinear) and tuner.model_[2].rank == 1
    assert tuner.layer_name_ == "2"
    assert tuner.trainable_params_ == 16 * 1 + 1 * 2 + 2
    assert tuner.group_names_ == ("0", "1")
    # the backbone is the user's, unchanged; only the new head was fine-tuned
    torch.testing.assert_close(tuner.model_[0].weight, model[0].weight)
    assert not tuner.model_[0].weight.requires_grad
    y_hat = tuner.predict(X)
    assert y_hat.shape == (300,) and set(np.unique(y_hat)) <= {0, 1}
    np.testing.assert_array_equal(y_hat, (tuner.predict_proba(X)[:, 1] > 0.5).astype(np.int64))
    np.testing.assert_array_equal(y_hat, tuner.model_(X).argmax(dim=1).numpy())


def test_the_users_model_is_not_modified(problem) -> None:
    model, X, y, s = problem
    original = copy.deepcopy(model.state_dict())
    FairFineTuner(model, method="win", rank=2, epochs=2).fit(X, y, sensitive_features=s)
    assert isinstance(model[2], nn.Linear) and model.training
    assert all(p.requires_grad for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), name


@pytest.mark.parametrize(("method", "expected"), [("tl", 16 * 2 + 2), ("svd", 1 * (16 + 2) + 2), ("win", 1 * (16 + 2) + 2)])
def test_trainable_params_per_method(problem, method, expected) -> None:
    model, X, y, s = problem
    tuner = FairFineTuner(model, method=method, rank=None if method == "tl" else 1, epochs=1).fit(X, y, sensitive_features=s)
    assert tuner.trainable_params_ == expected


def test_dataloader_gives_the_same_result_as_tensors(problem) -> None:
    model, X, y, s = problem
    from_tensors = FairFineTuner(model, rank=1, epochs=2, seed=3).fit(X, y, sensitive_features=s)
    loader = DataLoader(TensorDataset(X, y, s), batch_size=64, shuffle=False)
    from_loader = FairFineTuner(model, rank=1, epochs=2, seed=3).fit(loader)

    for (name, a), (_, b) in zip(from_tensors.model_.named_parameters(), from_loader.model_.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    np.testing.assert_allclose(from_tensors.predict_proba(X), from_loader.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_numpy_inputs_and_string_groups(problem) -> None:
    model, X, y, s = problem
    groups = np.where(s.numpy() == 1, "women", "men")
    tuner = FairFineTuner(model, rank=1, epochs=1).fit(X.numpy(), y.numpy(), sensitive_features=groups)
    assert tuner.group_names_ == ("men", "women")
    assert tuner.predict(X.numpy()).shape == (300,)


def test_predict_before_fit_is_an_error(problem) -> None:
    model, X, _, _ = problem
    with pytest.raises(FairtuneError, match="not fitted yet"):
        FairFineTuner(model).predict(X)
    with pytest.raises(SklearnNotFittedError):
        FairFineTuner(model).predict_proba(X)


def test_user_errors(problem) -> None:
    model, X, y, s = problem
    with pytest.raises(ConfigError, match="rank 3 is larger than allowed for a 16x2 layer"):
        FairFineTuner(model, rank=3).fit(X, y, sensitive_features=s)
    with pytest.raises(ModelError, match="layer '0' has 16 outputs"):
        FairFineTuner(model, layer="0").fit(X, y, sensitive_features=s)
    narrow = nn.Sequential(nn.Linear(5, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(ModelError, match="not the model's output layer"):
        FairFineTuner(narrow, layer="0").fit(X, y, sensitive_features=s)
    with pytest.raises(ModelError, match="no nn.Linear layer named 'head'"):
        FairFineTuner(model, layer="head").fit(X, y, sensitive_features=s)
    with pytest.raises(DataError, match="single group"):
        FairFineTuner(model).fit(X, y, sensitive_features=torch.zeros(300, dtype=torch.long))
    X_nan = X.clone()
    X_nan[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        FairFineTuner(model).fit(X_nan, y, sensitive_features=s)
    with pytest.raises(ConfigError, match="unknown method"):
        FairFineTuner(model, method="nosuch").fit(X, y, sensitive_features=s)
    with pytest.raises(DataError) as info:
        FairFineTuner(model).fit(X, y)
    assert str(info.value) == errors.MISSING_LABELS_OR_GROUPS
    with pytest.raises(DataError) as info:
        FairFineTuner(model).fit(X, y[:200], sensitive_features=s)
    assert str(info.value) == errors.LENGTH_MISMATCH.format(x=300, y=200, s=300)
    three_classes = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ModelError) as info:
        FairFineTuner(three_classes).fit(X, y, sensitive_features=s)
    assert str(info.value) == errors.NOT_BINARY_HEAD.format(name="2", outputs=3)


def test_float_labels_are_binary(problem) -> None:
    model, X, y, s = problem
    as_int = FairFineTuner(model, rank=1, epochs=1).fit(X, y, sensitive_features=s)
    as_float = FairFineTuner(model, rank=1, epochs=1).fit(X, y.float(), sensitive_features=s.float())
    np.testing.assert_array_equal(as_int.predict_proba(X), as_float.predict_proba(X))


def test_compare_returns_one_row_per_method_and_seed(problem) -> None:
    model, X, y, s = problem
    original = copy.deepcopy(model.state_dict())
    assert model.training
    parts = [(X[a:b], y[a:b], s[a:b]) for a, b in ((0, 150), (150, 220), (220, 300))]

    results = compare(model, *parts, seeds=[0, 1], grid=TINY)

    assert sorted(zip(results["method"], results["seed"])) == sorted(
        (m, seed) for m in ("pretrained", "tl", "svd", "win") for seed in (0, 1)
    )
    assert {"err", "delta_dp", "delta_eo", "trainable_params"} <= set(results.columns)
    params = results.groupby("method")["trainable_params"].first()
    assert params.to_dict() == {"pretrained": 34, "tl": 34, "svd": 20, "win": 20}
    # the pre-trained row scores the model as given on the test part
    from conftest import reference_metrics

    X_test, y_test, s_test = parts[2]
    expected = reference_metrics(y_test.numpy(), model(X_test).argmax(dim=1).numpy(), s_test.numpy())
    pretrained = results[results["method"] == "pretrained"].iloc[0]
    for name, value in expected.items():
        assert pretrained[name] == pytest.approx(value)
    assert model.training  # not switched to eval mode behind the caller's back
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), name


def test_a_bare_linear_model_is_fine_tuned(problem) -> None:
    _, X, y, s = problem
    torch.manual_seed(0)
    logistic = nn.Linear(5, 2)
    tuner = FairFineTuner(logistic, rank=1, epochs=3).fit(X, y, sensitive_features=s)
    assert isinstance(tuner.model_, FactorizedLinear) and tuner.layer_name_ == ""
    assert tuner.trainable_params_ == 1 * (5 + 2) + 2
    assert isinstance(logistic, nn.Linear) and not hasattr(logistic, "first")
    np.testing.assert_array_equal(tuner.predict(X), tuner.model_(X).argmax(dim=1).numpy())


@pytest.mark.parametrize(("method", "message"), [
    ("retrain-eo", "trains more than the target layer"),
    ("win-hidden", "trains more than the target layer"),
    ("logreg", "is not a torch fine-tuning method"),
])
def test_fair_fine_tuner_refuses_methods_it_cannot_put_in_the_model(method, message):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(80, 4)
    y = (x[:, 0] > 0).long()
    s = (x[:, 1] > 0).long()
    with pytest.raises(ConfigError, match=message):
        FairFineTuner(model, method=method, epochs=1).fit(x, y, sensitive_features=s)


# --- the scikit-learn / fairlearn estimator protocol ------------------------------------------

def test_get_params_set_params_and_clone(problem) -> None:
    model, X, y, s = problem
    tuner = FairFineTuner(model, method="svd", rank=2, lr=0.05, epochs=2)
    params = tuner.get_params()
    assert params["method"] == "svd" and params["rank"] == 2 and params["model"] is model
    assert tuner.set_params(rank=1).rank == 1
    copied = clone(tuner.fit(X, y, sensitive_features=s))
    assert copied.get_params()["rank"] == 1 and not hasattr(copied, "model_")
    assert copied.model is not model  # clone deep-copies the model, like any non-estimator parameter
    np.testing.assert_array_equal(copied.fit(X, y, sensitive_features=s).predict(X), tuner.predict(X))


def test_predict_proba_has_one_column_per_class(problem) -> None:
    model, X, y, s = problem
    tuner = FairFineTuner(model, rank=1, epochs=1).fit(X, y, sensitive_features=s)
    proba = tuner.predict_proba(X)
    assert proba.shape == (300, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(tuner.classes_, [0, 1])


def test_grid_search_cv_over_rank_and_lr(problem) -> None:
    model, X, y, s = problem
    search = GridSearchCV(FairFineTuner(model, method="svd", epochs=2), {"rank": [1, 2], "lr": [0.01, 0.1]}, cv=2)
    search.fit(X.numpy(), y.numpy(), sensitive_features=s.numpy())
    assert set(search.best_params_) == {"rank", "lr"}
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.best_estimator_.predict(X.numpy()).shape == (300,)


def test_threshold_optimizer_post_processes_a_prefit_tuner(problem) -> None:
    model, X, y, s = problem
    tuner = FairFineTuner(model, rank=1, epochs=3).fit(X, y, sensitive_features=s)
    optimizer = ThresholdOptimizer(estimator=tuner, prefit=True, constraints="equalized_odds", predict_method="predict_proba")
    optimizer.fit(X.numpy(), y.numpy(), sensitive_features=s.numpy())
    y_fair = optimizer.predict(X.numpy(), sensitive_features=s.numpy(), random_state=0)
    assert y_fair.shape == (300,) and set(np.unique(y_fair)) <= {0, 1}
    from fairtune.metrics import delta_eo

    assert delta_eo(y.numpy(), y_fair, s.numpy()) <= delta_eo(y.numpy(), tuner.predict(X), s.numpy()) + 1e-9


def test_fit_leaves_torch_global_random_state_alone(problem) -> None:
    model, X, y, s = problem
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = FairFineTuner(model, rank=1, epochs=2, seed=5).fit(X, y, sensitive_features=s)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = FairFineTuner(model, rank=1, epochs=2, seed=5).fit(X, y, sensitive_features=s)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


def test_device_defaults_to_the_models_and_can_be_named(problem) -> None:
    model, X, y, s = problem
    tuner = FairFineTuner(model, rank=1, epochs=1).fit(X, y, sensitive_features=s)
    assert tuner.device_ == torch.device("cpu")
    assert all(p.device == torch.device("cpu") for p in tuner.model_.parameters())
    named = FairFineTuner(model, rank=1, epochs=1, device="cpu").fit(X, y, sensitive_features=s)
    np.testing.assert_array_equal(named.predict_proba(X), tuner.predict_proba(X))
    with pytest.raises(ConfigError, match="device 'nosuch' is not available"):
        FairFineTuner(model, device="nosuch").fit(X, y, sensitive_features=s)


def test_an_argument_the_method_does_not_use_is_an_error(problem) -> None:
    model, X, y, s = problem
    with pytest.raises(ConfigError) as info:
        FairFineTuner(model, method="tl", rank=2).fit(X, y, sensitive_features=s)
    assert str(info.value) == MEANINGLESS_ARGUMENT.format(argument="rank", value=2, method="tl", uses="lr")
    with pytest.raises(ConfigError, match="means nothing for method 'svd'"):
        FairFineTuner(model, method="svd", operator="min").fit(X, y, sensitive_features=s)
    with pytest.raises(ConfigError, match="invalid operator='median': it must be one of mean, geometric"):
        FairFineTuner(model, operator="median").fit(X, y, sensitive_features=s)
    for argument, value in (("lr", -1.0), ("lr", float("nan")), ("epochs", 0), ("rank", 1.5), ("batch_size", 0)):
        with pytest.raises(ConfigError, match=f"invalid {argument}="):
            FairFineTuner(model, **{argument: value}).fit(X, y, sensitive_features=s)


def test_win_anchor_uses_the_rank_it_is_given(problem) -> None:
    model, X, y, s = problem
    rank2 = FairFineTuner(model, method="win-anchor:2", rank=2, epochs=1).fit(X, y, sensitive_features=s)
    rank1 = FairFineTuner(model, method="win-anchor:2", rank=1, epochs=1).fit(X, y, sensitive_features=s)
    assert rank2.trainable_params_ == 2 * (16 + 2) + 2
    assert rank1.trainable_params_ == 1 * (16 + 2) + 2


def test_compare_needs_a_seed(problem) -> None:
    model, X, y, s = problem
    with pytest.raises(ConfigError, match="seeds is empty"):
        compare(model, (X, y, s), (X, y, s), (X, y, s), seeds=[])


# --- fairness targets -------------------------------------------------------------------------

@pytest.fixture
def biased():
    """A model and data where the label depends on the group, so plain fine-tuning has a large ΔEO."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    rng = np.random.default_rng(0)
    s = rng.integers(0, 2, 2000)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    X[:, 1] = s + 0.3 * rng.normal(size=2000)
    y = (X[:, 0] + s + 0.5 * rng.normal(size=2000) > 0.5).astype(np.int64)
    return model, X, y, s


def test_a_tolerance_lowers_the_gap_to_the_target(biased) -> None:
    from fairtune.metrics import delta_eo

    model, X, y, s = biased
    plain = FairFineTuner(model, method="tl", epochs=10, lr=0.05).fit(X, y, sensitive_features=s)
    fair = FairFineTuner(model, method="tl", epochs=10, lr=0.05, constraint="eo", tolerance=0.05).fit(X, y, sensitive_features=s)
    assert delta_eo(y, plain.predict(X), s) > 0.1
    assert delta_eo(y, fair.predict(X), s) <= 0.05  # on the data it was fitted on
    assert fair.thresholds_ is None


def test_thresholds_need_the_sensitive_attribute_to_predict(biased) -> None:
    model, X, y, s = biased
    tuner = FairFineTuner(model, method="tl", epochs=3, constraint="eo", tolerance=0.1, thresholds=True).fit(X, y, sensitive_features=s)
    assert tuner.thresholds_ is not None and len(tuner.thresholds_.thresholds) == 2
    assert tuner.predict(X, sensitive_features=s).shape == (2000,)
    with pytest.raises(DataError, match="pass sensitive_features to predict"):
        tuner.predict(X)


def test_randomized_thresholds_meet_the_target_in_expectation_and_predict_reproducibly(biased) -> None:
    from fairtune.constraints import RandomizedThresholds, fit_group_thresholds
    from fairtune.metrics import delta_eo

    model, X, y, s = biased
    tuner = FairFineTuner(model, method="tl", epochs=5, lr=0.05, constraint="eo", tolerance=0.05, thresholds="randomized",
                          seed=3).fit(X, y, sensitive_features=s)
    rule = tuner.thresholds_
    assert isinstance(rule, RandomizedThresholds) and rule.seed == 3 and rule.fit_bound <= 0.05
    assert rule.target.estimate == "upper"  # the -rthr form's aim (the catalogue's TARGET_FORMS)
    deterministic = fit_group_thresholds(tuner.predict_proba(X)[:, 1], y, s, rule.target)
    assert rule.fit_err <= deterministic.fit_err + 1e-9
    labels = tuner.predict(X, sensitive_features=s)
    np.testing.assert_array_equal(labels, tuner.predict(X, sensitive_features=s))
    assert delta_eo(y, labels, s) <= 0.05 + 0.06  # drawn labels: within the noise of 2000 samples of the expected gap


@pytest.mark.parametrize(("arguments", "message"), [
    ({"constraint": "eo", "thresholds": "yes"}, "thresholds must be 'deterministic', 'randomized' or 'proxy', got 'yes'"),
    ({"tolerance": 0.05}, "give constraint='eo' or constraint='dp' too"),
    ({"constraint": "eo", "tolerance": 0.0}, "must be a finite number > 0 and < 2"),
    ({"constraint": "equal"}, "unknown fairness constraint 'equal'"),
    ({"method": "win-anchor", "constraint": "eo"}, "cannot take a fairness target"),
])
def test_bad_fairness_targets_are_config_errors(biased, arguments, message) -> None:
    model, X, y, s = biased
    with pytest.raises(ConfigError, match=message):
        FairFineTuner(model, epochs=1, **arguments).fit(X, y, sensitive_features=s)
