"""Peers at a fairness tolerance (issue 12): error-parity's RelaxedThresholdOptimizer and fairret's NormLoss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fairtune.constraints import FairnessTarget
from fairtune.errors import ConfigError
from fairtune.metrics import evaluate
from fairtune.methods.tolerance_peers import FairretNormLossPeer, RelaxedThresholdPeer
from fairtune.training import TrainingData, predict, train_classifier

from test_constraints import biased_task


def gap(labels: np.ndarray, data: TrainingData, metric: str = "delta_eo") -> float:
    return evaluate(data.y.numpy(), labels, data.s.numpy())[metric]


def test_relaxed_threshold_optimizer_meets_its_tolerance_where_logistic_regression_does_not():
    pytest.importorskip("error_parity")
    data = biased_task(n=2000, seed=5)
    target = FairnessTarget("eo", 0.05)
    peer = RelaxedThresholdPeer(target, seed=0).fit(data)
    unconstrained = peer.logreg_.predict(data.x.double().numpy())
    assert gap(unconstrained, data) > 0.2
    assert gap(peer.predict(data.x, data.s), data) <= 0.05 + 0.03  # randomized: within sampling noise of ε
    assert peer.trainable_params_ == data.x.shape[1] + 1 + 2


def test_relaxed_threshold_predictions_are_repeatable_and_leave_the_global_generator_alone():
    pytest.importorskip("error_parity")
    data = biased_task(n=1000, seed=6)
    peer = RelaxedThresholdPeer(FairnessTarget("eo", 0.02), seed=3).fit(data)
    np.random.seed(123)
    expected_draw = np.random.random()
    np.random.seed(123)
    first = peer.predict(data.x, data.s)
    assert np.random.random() == expected_draw
    assert np.array_equal(first, peer.predict(data.x, data.s))
    with pytest.raises(ConfigError):
        peer.predict(data.x)
    with pytest.raises(ConfigError):
        RelaxedThresholdPeer(FairnessTarget()).predict(data.x, data.s)


def test_fairret_norm_loss_lowers_the_gap_of_the_same_training_without_it():
    pytest.importorskip("fairret")
    data = biased_task(n=1500, seed=7)
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    free = train_classifier(_copy(layer), data, epochs=20, lr=0.05, batch_size=128, seed=0)
    peer = FairretNormLossPeer(FairnessTarget("dp", 0.05), strength=1.0, lr=0.05, epochs=20, batch_size=128, seed=0).fit(layer, data)
    assert gap(peer.predict(data.x), data, "delta_dp") < gap(predict(free, data.x), data, "delta_dp") - 0.1
    assert peer.trainable_params_ == 3 * 2 + 2
    with pytest.raises(ConfigError):
        FairretNormLossPeer(FairnessTarget()).predict(data.x)


def _copy(layer: nn.Linear) -> nn.Linear:
    clone = nn.Linear(layer.in_features, layer.out_features)
    clone.load_state_dict(layer.state_dict())
    return clone
