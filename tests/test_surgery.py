"""Layer surgery: replace an nn.Linear by l̂1 -> l̂2 in any model, freeze the rest, refuse bad targets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fairtune import errors
from fairtune.errors import ModelError
from fairtune.factorization import FactorizedLinear, count_parameters, factorize_linear_, find_linear
from fairtune.models import MLP


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Custom(nn.Module):
    """A nested model whose target layer is called ``head.fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _models() -> list[tuple[nn.Module, str, int, int]]:
    """(model, target layer name, d, k)."""
    torch.manual_seed(0)
    return [(MLP(4, hidden=(8, 6)), "output", 6, 2), (Custom(), "head.fc", 6, 3), (Custom(), "body.0", 4, 6)]


@pytest.mark.parametrize(("model", "name", "d", "k"), _models())
def test_full_rank_surgery_keeps_outputs_and_trains_only_the_factors(model, name, d, k) -> None:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    rank = min(d, k)
    importance = torch.rand(d, generator=torch.Generator().manual_seed(2)) + 0.05

    new = factorize_linear_(model, name, rank=rank, row_importance=importance)

    assert model.get_submodule(name) is new and isinstance(new, FactorizedLinear)
    assert new.rank == rank
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.first.weight", f"{name}.second.weight", f"{name}.second.bias"}
    assert count_parameters(model) == rank * (d + k) + k
    assert count_parameters(model, trainable_only=False) == count_parameters(original, trainable_only=False) - (d * k + k) + rank * (d + k) + k


def test_low_rank_surgery_counts_r_times_d_plus_k_plus_k() -> None:
    model = MLP(4, hidden=(8, 6))
    factorize_linear_(model, rank=1)  # default: the last linear layer, "output"
    assert isinstance(model.output, FactorizedLinear)
    assert count_parameters(model) == 1 * (6 + 2) + 2
    # l̂1 has no bias; l̂2 keeps the original bias
    assert model.output.first.bias is None and model.output.second.bias is not None


def test_surgery_keeps_the_original_bias() -> None:
    model = Custom()
    bias = model.head.fc.bias.detach().clone()
    factorize_linear_(model, "head.fc", rank=2)
    torch.testing.assert_close(model.head.fc.second.bias.detach(), bias)


def test_unknown_layer_name_names_the_available_layers() -> None:
    model = Custom()
    with pytest.raises(ModelError) as info:
        factorize_linear_(model, "head.nosuch", rank=1)
    assert str(info.value) == errors.NO_LINEAR_LAYER.format(name="head.nosuch", available="body.0, head.fc")
    assert isinstance(model.head.fc, nn.Linear)  # unchanged


def test_non_linear_target_is_refused() -> None:
    with pytest.raises(ModelError) as info:
        factorize_linear_(Custom(), "body.1", rank=1)
    assert str(info.value) == errors.NOT_LINEAR.format(name="body.1", kind="Tanh")
    with pytest.raises(ModelError, match="is a Head, not an nn.Linear"):
        find_linear(Custom(), "head")


def test_model_without_linear_layer_is_refused() -> None:
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU())
    with pytest.raises(ModelError) as info:
        factorize_linear_(model, rank=1)
    assert str(info.value) == errors.NO_LINEAR_LAYER.format(name="<last>", available="none")
    with pytest.raises(ModelError, match="linear layers: none"):
        find_linear(model, "nosuch")
    with pytest.raises(ModelError, match="is a Conv1d, not an nn.Linear"):
        find_linear(model, "0")


def test_find_linear_defaults_to_the_last_registered_linear() -> None:
    name, layer = find_linear(Custom())
    assert name == "head.fc" and layer.out_features == 3


def test_a_bare_linear_model_cannot_be_replaced_in_place() -> None:
    layer = nn.Linear(5, 2)
    assert find_linear(layer) == ("", layer)
    with pytest.raises(ModelError) as info:
        factorize_linear_(layer, rank=1)
    assert str(info.value) == errors.ROOT_NOT_REPLACEABLE
    wrapped = nn.Sequential(layer)
    factorize_linear_(wrapped, rank=2)
    assert isinstance(wrapped[0], FactorizedLinear)


def test_layer_without_bias_and_float64() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = model(x)
    new = factorize_linear_(model, "2", rank=3, row_importance=torch.linspace(0.1, 2.0, 6))
    assert new.second.bias is None and new.first.weight.dtype == torch.float64
    torch.testing.assert_close(model(x), expected)
    assert count_parameters(model) == 3 * (6 + 3)
