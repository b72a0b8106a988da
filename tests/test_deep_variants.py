"""WIN beyond the last layer (methods.deep) and the Fisher anchor (methods.anchor)."""

import pytest
import torch
from torch import nn

from fairtune.config import FinetuneGrid
from fairtune.errors import ConfigError
from fairtune.factorization import FactorizedLinear
from fairtune.methods import get_method
from fairtune.methods.anchor import anchor_penalty, effective_weight
from fairtune.methods.deep import fraction_rank, scope_layers
from fairtune.models import MLP
from fairtune.training import TrainingData, predict_proba

torch.set_num_threads(1)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = MLP(6, hidden=(8, 4)).eval()
    x = torch.randn(300, 6)
    y = (x[:, 0] + 0.3 * torch.randn(300) > 0).long()
    s = (x[:, 1] > 0).long()
    return model, TrainingData(x, y, s)


def test_scope_layers_of_an_mlp(problem):
    model, _ = problem
    assert scope_layers(model, "last") == ["output"]
    assert scope_layers(model, "hidden") == ["hidden2"]
    assert scope_layers(model, "all") == ["hidden1", "hidden2", "output"]
    assert fraction_rank(model.hidden1, 0.25) == 2 and fraction_rank(model.output, 0.1) == 1


@pytest.mark.parametrize("spec", ["win-hidden", "svd-hidden", "win-all", "svd-all", "win-anchor", "win-hidden-anchor"])
def test_full_rank_variant_starts_from_the_pretrained_function(problem, spec):
    """At rank fraction 1 the factorization is exact: before any step the model predicts as before."""
    model, train = problem
    method = get_method(spec)
    grid = FinetuneGrid(rank_fractions=(1.0,), operators=("mean",), lrs=(0.01,))
    params = method.candidates(model.output, grid)[0]
    fitted = method.fit_model(model, train, params, epochs=0, batch_size=64, seed=0, grid=grid)
    torch.testing.assert_close(torch.from_numpy(predict_proba(fitted.module, train.x)), torch.from_numpy(predict_proba(model, train.x)), atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, FactorizedLinear) for m in fitted.module.modules())


def test_only_the_adapted_layers_train(problem):
    model, train = problem
    grid = FinetuneGrid(rank_fractions=(0.5,), operators=("min",), lrs=(0.01,))
    method = get_method("win-hidden")
    fitted = method.fit_model(model, train, method.candidates(model.output, grid)[0], epochs=2, batch_size=64, seed=0, grid=grid)
    # hidden2 is 4x8: rank ceil(0.5*4) = 2 -> 2*8 + 4*2 + 4 (bias) trainable parameters
    assert fitted.trainable_params == 2 * 8 + 4 * 2 + 4
    tuned = fitted.module
    torch.testing.assert_close(tuned.hidden1.weight, model.hidden1.weight)
    torch.testing.assert_close(tuned.output.weight, model.output.weight)
    assert model.hidden2.weight.requires_grad and isinstance(model.hidden2, nn.Linear)  # the caller's model is untouched


def test_anchor_penalty_definition():
    w0 = torch.randn(2, 5)
    importance = torch.rand(2, 5)
    assert anchor_penalty(w0.clone(), w0, importance, 3.0) == 0
    w = w0 + 0.1
    expected = 3.0 * ((importance / importance.mean()) * 0.01).sum()
    torch.testing.assert_close(anchor_penalty(w, w0, importance, 3.0), expected)
    layer = FactorizedLinear.from_linear(nn.Linear(5, 2), rank=2)
    torch.testing.assert_close(effective_weight(layer), layer.second.weight @ layer.first.weight)


def test_a_stronger_anchor_keeps_the_important_weights_closer(problem):
    model, train = problem
    grid = FinetuneGrid(operators=("mean",), lrs=(0.05,))
    moved = {}
    for mu in (0.0, 100.0):
        method = get_method(f"tl-anchor:{mu}")
        fitted = method.fit_model(model, train, method.candidates(model.output, grid)[0], epochs=5, batch_size=32, seed=0, grid=grid)
        moved[mu] = float((fitted.module.output.weight - model.output.weight).detach().norm())
    assert moved[100.0] < 0.5 * moved[0.0]


def test_value_suffix_only_where_taken():
    assert get_method("win-anchor:2.5").anchor == 2.5
    with pytest.raises(ConfigError, match="takes no ':value'"):
        get_method("win-hidden:3")
    with pytest.raises(ConfigError, match="anchor strength μ must be a finite number >= 0"):
        get_method("tl-anchor:-1")
