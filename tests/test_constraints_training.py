"""Constrained fine-tuning (issue 12): cross-entropy subject to a fairness target, by Lagrange multipliers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fairtune.constraints import FairnessTarget, train_constrained
from fairtune.errors import ConfigError
from fairtune.methods.fairness import BAD_TEMPERATURE, fairness_penalty, relaxed_dp_gap, relaxed_eo_gap, relaxed_labels
from fairtune.metrics import evaluate
from fairtune.training import TrainingData, predict, train_classifier

from test_constraints import biased_task



def measured(module: nn.Module, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.numpy(), predict(module, data.x), data.s.numpy())


def head(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


@pytest.mark.parametrize("constraint, n_groups", [("eo", 2), ("dp", 2), ("eo", 3)])
def test_the_constrained_fit_meets_the_target_where_the_unconstrained_one_does_not(constraint, n_groups):
    data = biased_task(n_groups=n_groups)
    target = FairnessTarget(constraint, 0.1, estimate="sample")
    free = train_classifier(head(), data, epochs=30, lr=0.05, batch_size=128, seed=0)
    fair = train_constrained(head(), data, target=target, epochs=30, lr=0.05, batch_size=128, seed=0)
    assert measured(free, data)[target.metric] > 0.2
    assert measured(fair, data)[target.metric] <= 0.1
    assert measured(fair, data)["err"] < 40  # still a classifier, not a constant
    assert fair.fairness_multipliers_.shape == ((4 if constraint == "eo" else 2) * n_groups * (n_groups - 1) // 2,)


def test_the_expected_estimate_fits_a_smaller_gap_than_the_sample_one():
    data = biased_task(n=800, seed=1)
    gaps = {}
    for estimate in ("sample", "expected"):
        fitted = train_constrained(head(), data, target=FairnessTarget("eo", 0.15, estimate=estimate), epochs=30, lr=0.05, batch_size=128, seed=0)
        gaps[estimate] = measured(fitted, data)["delta_eo"]
    assert gaps["expected"] < gaps["sample"] <= 0.15


def test_constraint_data_is_where_the_multipliers_measure_the_gap():
    train, other = biased_task(seed=2), biased_task(seed=3)
    target = FairnessTarget("eo", 0.1, estimate="sample")
    fitted = train_constrained(head(), train, target=target, epochs=30, lr=0.05, batch_size=128, seed=0, constraint_data=other)
    assert measured(fitted, other)["delta_eo"] <= 0.1


def test_no_target_is_todays_training_exactly():
    data = biased_task(n=600)
    seen = []
    ours = train_constrained(head(), data, target=None, epochs=3, lr=0.01, seed=4, on_epoch=lambda epoch, m: seen.append(epoch))
    today = train_classifier(head(), data, epochs=3, lr=0.01, seed=4)
    assert seen == [1, 2, 3]
    for a, b in zip(ours.parameters(), today.parameters()):
        assert torch.equal(a, b)


def test_only_parameters_that_require_grad_are_trained_and_on_epoch_sees_each_epoch():
    data = biased_task(n=600)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    frozen = copy.deepcopy(model[0].state_dict())
    before = model[2].weight.detach().clone()
    seen = []
    train_constrained(model, data, target=FairnessTarget("eo", 0.1), epochs=2, lr=0.01, seed=0, on_epoch=lambda epoch, m: seen.append((epoch, m.training)))
    assert seen == [(1, False), (2, False)]
    assert all(torch.equal(frozen[k], v) for k, v in model[0].state_dict().items())
    assert not torch.equal(before, model[2].weight)


def test_a_bad_temperature_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        train_constrained(head(), biased_task(n=100), target=FairnessTarget(), epochs=1, lr=0.01, temperature=0)
    assert str(error.value) == BAD_TEMPERATURE.format(value=0)


# --- the sharper surrogate of the Retrain regularizer ------------------------------------------

def test_temperature_one_is_the_softmax_probability_and_the_old_penalty():
    logits = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    y, s = torch.arange(40) % 2, (torch.arange(40) // 2) % 2
    assert torch.allclose(relaxed_labels(logits, 1.0), logits.softmax(dim=1)[:, 1], atol=1e-6)
    old = 0.5 * relaxed_eo_gap(logits.softmax(dim=1)[:, 1], y, s)
    assert torch.equal(fairness_penalty("eo", 0.5)(logits, y, s, nn.Identity()), old)


def test_a_low_temperature_approaches_the_measured_gap():
    logits = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    s = torch.arange(200) % 2
    labels = (logits[:, 1] > logits[:, 0]).float()
    hard = relaxed_dp_gap(labels, s).item()
    soft = [abs(fairness_penalty("dp", 1.0, temperature=tau)(logits, s, s, nn.Identity()).item() - hard) for tau in (1.0, 0.1, 0.001)]
    assert soft[0] > soft[1] > soft[2]
    assert soft[2] < 1e-2
    with pytest.raises(ConfigError):
        fairness_penalty("eo", 0.5, temperature=-1.0)


def test_momentum_signs_the_batch_gap_by_the_averaged_one():
    penalty = fairness_penalty("dp", 2.0, momentum=0.9)
    s = torch.tensor([0, 0, 1, 1])
    logit = lambda p: torch.stack([torch.zeros(4), torch.logit(torch.tensor(p))], dim=1)  # noqa: E731
    # first batch: the average is the batch itself, group 1 above group 0: the penalty is λ·|gap|
    first = penalty(logit([0.2, 0.4, 0.6, 0.8]), s, s, nn.Identity())
    assert first.item() == pytest.approx(2.0 * (0.7 - 0.3))
    # second batch reverses the groups; the average still ranks group 1 first: the signed batch gap is negative
    second = penalty(logit([0.7, 0.9, 0.1, 0.3]), s, s, nn.Identity())
    assert second.item() == pytest.approx(2.0 * (0.2 - 0.8))
    eo = fairness_penalty("eo", 1.0, momentum=0.5)(logit([0.2, 0.4, 0.6, 0.8]), torch.tensor([1, 0, 1, 0]), s, nn.Identity())
    assert eo.item() == pytest.approx((0.6 - 0.2) + (0.8 - 0.4))
    with pytest.raises(ConfigError):
        fairness_penalty("eo", 0.5, momentum=1.0)
