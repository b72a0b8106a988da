"""inner_layer_fisher (Eq. 1 at any depth) against the per-sample autograd definition."""

import pytest
import torch
from torch import nn

from fairtune.importance import feature_batches, group_fisher, inner_layer_fisher


@pytest.fixture
def problem():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (40,))
    s = torch.arange(40) % 3
    return head, x, y, s


def per_sample_fisher(head, layer, x, y, s, n_groups, kind):
    """F_g = mean over group g of (∂ log p(y|x)/∂W)², y from data (empirical) or Σ_y p(y|x)·(...)² (true)."""
    total = torch.zeros(n_groups, *layer.weight.shape, dtype=torch.float64)
    counts = torch.zeros(n_groups, dtype=torch.float64)
    for i in range(len(x)):
        log_probs = head(x[i:i + 1]).log_softmax(dim=1)[0]
        labels = [int(y[i])] if kind == "empirical" else range(len(log_probs))
        for label in labels:
            (grad,) = torch.autograd.grad(log_probs[label], layer.weight, retain_graph=True)
            weight = 1.0 if kind == "empirical" else float(log_probs[label].detach().exp())
            total[s[i]] += weight * grad**2
        counts[s[i]] += 1
    return total / counts[:, None, None]


@pytest.mark.parametrize("kind", ["empirical", "true"])
@pytest.mark.parametrize("index", [0, 2, 4])
def test_inner_layer_fisher_equals_per_sample_definition(problem, kind, index):
    head, x, y, s = problem
    layer = head[index]
    expected = per_sample_fisher(head, layer, x, y, s, 3, kind)
    fisher = inner_layer_fisher(head, layer, feature_batches(x, y, s, batch_size=7), 3, kind=kind)
    torch.testing.assert_close(fisher.weight, expected, rtol=1e-9, atol=1e-12)
    assert fisher.counts.tolist() == [14.0, 13.0, 13.0]


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_inner_layer_fisher_of_output_layer_equals_closed_form(problem, kind):
    head, x, y, s = problem
    features = head[:4](x).detach()
    closed = group_fisher(head[4], feature_batches(features, y, s, batch_size=11), 3, kind=kind)
    inner = inner_layer_fisher(head, head[4], feature_batches(x, y, s, batch_size=5), 3, kind=kind)
    torch.testing.assert_close(inner.weight, closed.weight)
    torch.testing.assert_close(inner.bias, closed.bias)
