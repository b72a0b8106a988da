"""Eq. (1): the closed-form per-group Fisher against its per-sample autograd definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fairtune.importance import feature_batches, group_fisher


def _problem(n: int, d: int, k: int, n_groups: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, k).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, d, generator=generator, dtype=torch.float64))
        layer.bias.copy_(torch.randn(k, generator=generator, dtype=torch.float64))
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=generator)
    groups = torch.arange(n) % n_groups  # every group present
    groups = groups[torch.randperm(n, generator=generator)]
    return layer, x, y, groups


def _squared_grads(layer: nn.Linear, x: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂ log p(label|x)/∂W)², (∂ log p(label|x)/∂b)² for one sample, by autograd."""
    log_probs = torch.log_softmax(layer(x[None]), dim=1)[0]
    grad_w, grad_b = torch.autograd.grad(log_probs[label], (layer.weight, layer.bias))
    return grad_w**2, grad_b**2


def autograd_fisher(layer: nn.Linear, x, y, groups, n_groups: int, kind: str = "empirical"):
    """F_g = mean over group g of squared per-sample gradients; "true": Σ_c p(c|x) grad_c²."""
    weight = torch.zeros(n_groups, *layer.weight.shape, dtype=torch.float64)
    bias = torch.zeros(n_groups, *layer.bias.shape, dtype=torch.float64)
    for xi, yi, gi in zip(x, y, groups):
        if kind == "empirical":
            gw, gb = _squared_grads(layer, xi, int(yi))
        else:
            probs = torch.softmax(layer(xi[None]), dim=1)[0].detach()
            pairs = [_squared_grads(layer, xi, c) for c in range(layer.out_features)]
            gw = sum(p * w for p, (w, _) in zip(probs, pairs))
            gb = sum(p * b for p, (_, b) in zip(probs, pairs))
        weight[gi] += gw
        bias[gi] += gb
    counts = torch.bincount(groups, minlength=n_groups).double()
    return weight / counts[:, None, None], bias / counts[:, None], counts


@pytest.mark.parametrize("n_groups", [2, 3])
@pytest.mark.parametrize("k", [2, 3])
def test_empirical_fisher_equals_autograd_definition(n_groups: int, k: int) -> None:
    layer, x, y, groups = _problem(n=60, d=5, k=k, n_groups=n_groups)
    expected_w, expected_b, counts = autograd_fisher(layer, x, y, groups, n_groups)

    fisher = group_fisher(layer, feature_batches(x, y, groups), n_groups)

    assert fisher.weight.shape == (n_groups, k, 5)
    torch.testing.assert_close(fisher.weight, expected_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fisher.bias, expected_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fisher.counts, counts)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_true_fisher_equals_expectation_over_model_labels(n_groups: int) -> None:
    layer, x, y, groups = _problem(n=40, d=4, k=3, n_groups=n_groups, seed=1)
    expected_w, expected_b, _ = autograd_fisher(layer, x, y, groups, n_groups, kind="true")

    fisher = group_fisher(layer, feature_batches(x, y, groups), n_groups, kind="true")

    torch.testing.assert_close(fisher.weight, expected_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fisher.bias, expected_b, rtol=1e-10, atol=1e-12)


def test_float32_layer_matches_float64_definition() -> None:
    layer64, x, y, groups = _problem(n=50, d=6, k=2, n_groups=2, seed=2)
    expected_w, _, _ = autograd_fisher(layer64, x, y, groups, 2)
    layer32 = nn.Linear(6, 2)
    layer32.load_state_dict({k: v.float() for k, v in layer64.state_dict().items()})

    fisher = group_fisher(layer32, feature_batches(x.float(), y, groups), 2)

    assert fisher.weight.dtype == torch.float64
    torch.testing.assert_close(fisher.weight, expected_w, rtol=1e-5, atol=1e-7)


def test_streaming_in_batches_of_any_size_gives_the_same_fisher() -> None:
    layer, x, y, groups = _problem(n=101, d=5, k=2, n_groups=3, seed=3)
    whole = group_fisher(layer, feature_batches(x, y, groups, batch_size=1000), 3)
    for batch_size in (1, 7, 32):
        streamed = group_fisher(layer, feature_batches(x, y, groups, batch_size=batch_size), 3)
        torch.testing.assert_close(streamed.weight, whole.weight, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(streamed.bias, whole.bias, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(streamed.counts, whole.counts)
    # irregular batch boundaries, from a plain list of batches
    cuts = [0, 3, 50, 51, 101]
    batches = [(x[a:b], y[a:b], groups[a:b]) for a, b in zip(cuts, cuts[1:])]
    torch.testing.assert_close(group_fisher(layer, batches, 3).weight, whole.weight, rtol=1e-12, atol=1e-14)


def test_pooled_equals_the_fisher_of_all_samples_as_one_group() -> None:
    layer, x, y, groups = _problem(n=45, d=4, k=2, n_groups=3, seed=4)
    per_group = group_fisher(layer, feature_batches(x, y, groups), 3)
    all_in_one = group_fisher(layer, feature_batches(x, y, torch.zeros_like(groups)), 1)
    torch.testing.assert_close(per_group.pooled(), all_in_one.weight[0], rtol=1e-12, atol=1e-14)


def test_a_group_without_samples_is_refused() -> None:
    layer, x, y, _ = _problem(n=20, d=3, k=2, n_groups=2)
    with pytest.raises(ValueError, match="have no samples"):
        group_fisher(layer, feature_batches(x, y, torch.zeros(20, dtype=torch.long)), 2)


def test_fisher_of_an_mlp_output_layer_from_its_features() -> None:
    """Through a whole model: autograd w.r.t. ``model.output`` equals the closed form on extracted features."""
    from fairtune.models import MLP, extract_features

    torch.manual_seed(0)
    model = MLP(3, hidden=(6, 4)).double()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=generator)
    groups = torch.arange(30) % 2
    expected = torch.zeros(2, 2, 4, dtype=torch.float64)
    for xi, yi, gi in zip(x, y, groups):
        log_probs = torch.log_softmax(model(xi[None]), dim=1)[0]
        (grad,) = torch.autograd.grad(log_probs[yi], model.output.weight)
        expected[gi] += grad**2 / 15

    features = extract_features(model, model.output, x)
    fisher = group_fisher(model.output, feature_batches(features, y, groups), 2)

    torch.testing.assert_close(fisher.weight, expected, rtol=1e-5, atol=1e-8)  # features are float32
