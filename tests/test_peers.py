"""scikit-learn / fairlearn peers on frozen features: run through compare_on_features, equal to the libraries' own output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.postprocessing import ThresholdOptimizer
from fairlearn.reductions import EqualizedOdds, ExponentiatedGradient
from sklearn.linear_model import LogisticRegression
from torch import nn

from fairtune.config import FinetuneGrid
from fairtune.experiments import compare_on_features
from fairtune.methods import build_method
from fairtune.methods.peers import PeerParams, SENSITIVE_NEEDED
from fairtune.training import TrainingData


def _split(rng: np.random.Generator, n: int) -> TrainingData:
    """Features of a frozen backbone (non-negative, like ReLU outputs) where the group shifts the label."""
    s = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 4)) + 0.8 * s[:, None] * np.array([1.0, 0.0, 0.5, 0.0])
    y = (z[:, 0] - 0.5 * z[:, 1] + 0.5 * rng.normal(size=n) > 0.4).astype(np.int64)
    return TrainingData.from_arrays(torch.from_numpy(np.maximum(z, 0).astype(np.float32)), y, s)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    return {"train": _split(rng, 500), "val": _split(rng, 250), "test": _split(rng, 300)}


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    return nn.Linear(4, 2)


@pytest.fixture(scope="module")
def compared(layer, features):
    methods = ["logreg", "fairlearn-eg-eo", "fairlearn-to-eo", "fairlearn-to-dp"]
    results = compare_on_features(layer, features, methods, FinetuneGrid(), seed=7, keep_predictions=True)
    return ({r.row["method"]: r.row for r in results}, {r.selection["method"]: r.selection for r in results if r.selection},
            {r.predictions["method"].iloc[0]: r.predictions["y_pred"].to_numpy() for r in results})


def _numpy(data: TrainingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return data.x.double().numpy(), data.y.numpy(), data.s.numpy()


def test_logreg_equals_scikit_learn(compared, features):
    rows, selections, predictions = compared
    x, y, _ = _numpy(features["train"])
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    np.testing.assert_array_equal(predictions["logreg"], reference.predict(_numpy(features["test"])[0]))
    assert rows["logreg"]["trainable_params"] == 4 + 1
    assert selections["logreg"]["params"] == {"C": 1.0}


def test_exponentiated_gradient_equals_fairlearn(compared, features):
    rows, selections, predictions = compared
    eps = selections["fairlearn-eg-eo"]["params"]["eps"]
    assert eps in (0.01, 0.05)
    x, y, s = _numpy(features["train"])
    reference = ExponentiatedGradient(LogisticRegression(C=1.0, max_iter=1000), EqualizedOdds(), eps=eps).fit(x, y, sensitive_features=s)
    np.testing.assert_array_equal(predictions["fairlearn-eg-eo"], reference.predict(_numpy(features["test"])[0], random_state=7))
    assert rows["fairlearn-eg-eo"]["trainable_params"] == 5 * int((reference.weights_ > 0).sum())


@pytest.mark.parametrize("constraint", ["equalized_odds", "demographic_parity"])
def test_threshold_optimizer_equals_fairlearn(compared, features, constraint):
    rows, _, predictions = compared
    method = {"equalized_odds": "fairlearn-to-eo", "demographic_parity": "fairlearn-to-dp"}[constraint]
    x, y, s = _numpy(features["train"])
    reference = ThresholdOptimizer(estimator=LogisticRegression(C=1.0, max_iter=1000), constraints=constraint,
                                   prefit=False, predict_method="predict_proba").fit(x, y, sensitive_features=s)
    x_test, _, s_test = _numpy(features["test"])
    np.testing.assert_array_equal(predictions[method], reference.predict(x_test, sensitive_features=s_test, random_state=7))
    assert rows[method]["trainable_params"] > 5  # the logistic regression plus the per-group threshold rule


def test_threshold_optimizer_needs_the_sensitive_attribute(layer, features):
    fitted = build_method("fairlearn-to-dp").fit(layer, features["train"], None, PeerParams(1.0), epochs=1, batch_size=1, seed=0)
    with pytest.raises(ValueError) as error:
        fitted.predict(features["test"].x)
    assert str(error.value) == SENSITIVE_NEEDED.format(kind="ThresholdOptimizer")


def test_post_processing_for_equalized_odds_lowers_the_gap_against_logreg(compared):
    rows, _, _ = compared
    assert rows["fairlearn-to-eo"]["delta_eo"] < rows["logreg"]["delta_eo"]
