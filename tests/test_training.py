"""The training loop: seeded, trains only what requires grad, adds the penalty, calls on_epoch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fairtune.training import TrainingData, predict, predict_proba, train_classifier


def _data(n: int = 200, seed: int = 0) -> TrainingData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] - x[:, 1] > 0).long()
    s = (x[:, 2] > 0).long()
    return TrainingData.from_arrays(x, y.numpy(), s.numpy())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_same_seed_same_weights_different_seed_different() -> None:
    data = _data()
    first, second, third = _model(), _model(), _model()
    train_classifier(first, data, epochs=3, lr=0.01, batch_size=32, seed=1)
    train_classifier(second, data, epochs=3, lr=0.01, batch_size=32, seed=1)
    train_classifier(third, data, epochs=3, lr=0.01, batch_size=32, seed=2)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(first.parameters(), third.parameters()))


def test_training_lowers_the_loss_and_learns_the_rule() -> None:
    data, model = _data(), _model()
    with torch.no_grad():
        before = F.cross_entropy(model(data.x), data.y).item()
    train_classifier(model, data, epochs=30, lr=0.01, batch_size=32)
    with torch.no_grad():
        after = F.cross_entropy(model(data.x), data.y).item()
    assert after < before / 2
    assert (predict(model, data.x) == data.y.numpy()).mean() > 0.9


def test_frozen_parameters_do_not_move() -> None:
    data, model = _data(), _model()
    model[0].requires_grad_(False)
    frozen = copy.deepcopy(model[0].state_dict())
    head = copy.deepcopy(model[2].state_dict())
    train_classifier(model, data, epochs=2, lr=0.01)
    for name, value in model[0].state_dict().items():
        assert torch.equal(value, frozen[name])
    assert not torch.equal(model[2].weight, head["weight"])


def test_no_trainable_parameter_is_refused() -> None:
    model = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_classifier(model, _data(), epochs=1, lr=0.01)


def test_penalty_is_added_to_the_loss() -> None:
    """A penalty c·Σw with huge c dominates: Adam then moves every weight down by about lr per step."""
    data = _data(64)
    plain, penalized = nn.Linear(4, 2), nn.Linear(4, 2)
    penalized.load_state_dict(plain.state_dict())
    start = plain.weight.detach().clone()

    def penalty(logits, y, s, module):
        assert logits.shape == (len(y), 2) and s.shape == y.shape
        return 1e6 * module.weight.sum()

    train_classifier(plain, data, epochs=1, lr=0.01, batch_size=64)
    train_classifier(penalized, data, epochs=1, lr=0.01, batch_size=64, penalty=penalty)

    torch.testing.assert_close(penalized.weight.detach(), start - 0.01, rtol=0, atol=1e-4)
    assert not torch.allclose(plain.weight, penalized.weight)


def test_on_epoch_sees_every_epoch_in_eval_mode() -> None:
    seen: list[tuple[int, bool]] = []
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    train_classifier(model, _data(), epochs=4, lr=0.01, on_epoch=lambda epoch, module: seen.append((epoch, module.training)))
    assert seen == [(1, False), (2, False), (3, False), (4, False)]


def test_predict_is_the_argmax_of_two_logits() -> None:
    model = _model()
    x = _data().x
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(predict_proba(model, x), logits.softmax(dim=1)[:, 1].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(predict(model, x), logits.argmax(dim=1).numpy())
    # batched prediction equals one pass
    np.testing.assert_allclose(predict_proba(model, x, batch_size=7), predict_proba(model, x), rtol=1e-6)


def _torch_adam_reference(module: nn.Module, data: TrainingData, *, epochs: int, lr: float, batch_size: int, seed: int,
                          weight_decay: float, penalty) -> None:
    """The loop as it was written with ``torch.optim.Adam`` and ``x[idx]`` batches."""
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    torch.set_num_threads(1)
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            x, y, s = data.x[idx], data.y[idx], data.s[idx]
            logits = module(x)
            loss = F.cross_entropy(logits, y) + penalty(logits, y, s, module)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        module.eval()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("unused", [False, True])
def test_the_loop_gives_torch_adams_numbers_bit_for_bit(weight_decay: float, unused: bool) -> None:
    """fairtune's Adam is torch.optim.Adam's arithmetic without its bookkeeping: the same weights, not close ones,
    with a penalty and a frozen layer, and (``unused``) a parameter that never gets a gradient (skipped, as torch
    skips it)."""
    from fairtune.methods.fairness import fairness_penalty

    data = _data(300)
    threads = torch.get_num_threads()
    ours, reference = (nn.Sequential(_model(), nn.Linear(2, 2)) for _ in range(2))
    for model in (ours, reference):
        model[0][0].requires_grad_(False)
        model[1].requires_grad_(unused)
        model.forward = model[0].forward  # the last layer is never called
    train_classifier(ours, data, epochs=3, lr=0.01, batch_size=64, seed=3, weight_decay=weight_decay,
                     penalty=fairness_penalty("eo", 0.5, temperature=0.3, momentum=0.9))
    try:
        _torch_adam_reference(reference, data, epochs=3, lr=0.01, batch_size=64, seed=3, weight_decay=weight_decay,
                              penalty=fairness_penalty("eo", 0.5, temperature=0.3, momentum=0.9))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0][2].weight, _model()[2].weight)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("penalty", [None, ("eo", {}), ("dp", {}), ("eo", {"temperature": 0.3, "momentum": 0.95}),
                                     ("dp", {"temperature": 0.3, "momentum": 0.9}), ("eo", {"temperature": 0.5})])
def test_the_explicit_mlp_step_gives_autograds_numbers_bit_for_bit(penalty) -> None:
    """A ReLU MLP trains without autograd (ExplicitStep), with a fairness penalty giving its own gradient: the weights
    autograd and torch.optim.Adam give, over three groups and a last batch of one row (201 rows, batches of 40)."""
    from fairtune.methods.fairness import fairness_penalty
    from fairtune.training import ExplicitStep

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(201, 4, generator=generator)
    data = TrainingData.from_arrays(x, (x[:, 0] + x[:, 1] > 0).long().numpy(), torch.randint(0, 3, (201,), generator=generator).numpy())

    def make():
        return None if penalty is None else fairness_penalty(penalty[0], 0.7, **penalty[1])

    ours, reference = _mlp(), _mlp()
    assert ExplicitStep.of(ours, make()) is not None
    threads = torch.get_num_threads()
    train_classifier(ours, data, epochs=4, lr=0.01, batch_size=40, seed=2, weight_decay=1e-3, penalty=make())
    try:
        _torch_adam_reference(reference, data, epochs=4, lr=0.01, batch_size=40, seed=2, weight_decay=1e-3,
                              penalty=make() or (lambda logits, y, s, module: logits.new_zeros(())))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_explicit_step_is_for_trainable_relu_mlps_only() -> None:
    from fairtune.training import ExplicitStep

    assert ExplicitStep.of(_mlp(), None) is not None
    assert ExplicitStep.of(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), None) is None
    frozen = _mlp()
    frozen[0].requires_grad_(False)
    assert ExplicitStep.of(frozen, None) is None
    assert ExplicitStep.of(_mlp(), lambda logits, y, s, module: logits.sum()) is None  # a penalty without its own gradient
    hooked = _mlp()
    hooked[2].register_forward_hook(lambda module, args, output: None)
    assert ExplicitStep.of(hooked, None) is None
