"""The batched trainer gives every candidate exactly what the serial loop gives it.

Equality is checked bit for bit (``torch.equal``, ``np.array_equal``) against
``train_classifier`` and the methods' own ``fit``, on generated data and on the Adult and
digits-bias features of a pre-trained model.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fairtune.batched import CandidateSet, predict_candidates, train_candidate_sets, train_candidates
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig
from fairtune.data import load_task
from fairtune.factorization import FactorizedLinear, find_linear
from fairtune.methods import build_method
from fairtune.metrics import evaluate
from fairtune.models import extract_features, pretrained_mlp, pretrained_vision
from fairtune.models.vision import default_arch
from fairtune.training import TrainingData, predict, train_classifier


def generated_data(n: int, d: int, seed: int) -> TrainingData:
    """A linearly separable-ish two-group problem with ``n`` rows."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=generator) > 0).long()
    return TrainingData(x, y, (x[:, 1] > 0).long())


def candidate_heads(d: int, seed: int) -> tuple[list[nn.Module], list[float]]:
    """A linear head, and factorized heads of rank 1 and 2 (plain and weighted SVD), each at two learning rates."""
    torch.manual_seed(seed)
    layer = nn.Linear(d, 2)
    heads = [copy.deepcopy(layer)]
    heads += [FactorizedLinear.from_linear(layer, rank, importance) for rank in (1, 2) for importance in (None, torch.rand(d) + 0.5)]
    return [copy.deepcopy(h) for h in heads for _ in (0, 1)], [lr for _ in heads for lr in (1e-3, 1e-2)]


def serial(heads: list[nn.Module], lrs: list[float], train: TrainingData, seed: int, epochs: int, checkpoints: set[int],
           batch_size: int = 16) -> tuple[list[nn.Module], dict]:
    """``train_classifier`` on a copy of each head, with the parameters seen at each checkpoint."""
    trained, seen = [], {}
    for i, (head, lr) in enumerate(zip(heads, lrs)):
        def record(epoch: int, module: nn.Module, i: int = i) -> None:
            if epoch in checkpoints:
                seen[i, epoch] = [p.detach().clone() for p in module.parameters()]
        trained.append(train_classifier(copy.deepcopy(head), train, epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, on_epoch=record))
    return trained, seen


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{name}: max |difference| {(p - q).abs().max().item():.3g}"


@pytest.mark.parametrize(("n", "d", "batch_size"), [
    (16 * 5 + 1, 6, 16),  # tiny products, per candidate; a last batch of one row (BLAS gemv)
    (16 * 4, 6, 16),
    (300, 32, 64),  # bmm for the d x 2 layers, per candidate for 2 x 2 and rank 1
    (300, 32, 128),  # bmm for 2 x 2 too, except on the last batch of 44 rows
])
def test_train_candidates_equals_train_classifier_bit_for_bit(n: int, d: int, batch_size: int) -> None:
    train = generated_data(n, d, seed=1)
    heads, lrs = candidate_heads(d, seed=1)
    expected, expected_seen = serial(heads, lrs, train, seed=3, epochs=4, checkpoints={2, 4}, batch_size=batch_size)
    seen = {}

    def record(epoch: int, modules: list[nn.Module]) -> None:
        for i, module in enumerate(modules):
            seen[i, epoch] = [p.detach().clone() for p in module.parameters()]

    batched = train_candidates([copy.deepcopy(h) for h in heads], lrs, train, epochs=4, batch_size=batch_size, seed=3,
                               checkpoints={2, 4}, on_checkpoint=record)
    for a, b in zip(expected, batched):
        assert_same_parameters(a, b)
    assert seen.keys() == expected_seen.keys()
    for key, params in expected_seen.items():
        assert all(torch.equal(p, q) for p, q in zip(params, seen[key])), key


def assert_sets_train_as_serial_loops(members: list[tuple[list[nn.Module], list[float], TrainingData, int]], epochs: int,
                                      batch_size: int) -> None:
    """Each ``(heads, lrs, train, seed)`` trained in one loop with the others ends as its own serial loop does."""
    sets, expected = [], []
    for heads, lrs, train, seed in members:
        expected.append(serial(heads, lrs, train, seed=seed, epochs=epochs, checkpoints=set(), batch_size=batch_size)[0])
        sets.append(CandidateSet([copy.deepcopy(h) for h in heads], lrs, train, seed))
    for want, got in zip(expected, train_candidate_sets(sets, epochs=epochs, batch_size=batch_size)):
        for a, b in zip(want, got):
            assert_same_parameters(a, b)


def test_seeds_stacked_equal_each_seed_alone() -> None:
    """Sets with their own features and batch order, trained in one loop, end as serial loops do."""
    members = [(*candidate_heads(32, seed=seed), generated_data(150, 32, seed=10 + seed), seed) for seed in (0, 1, 2)]
    assert_sets_train_as_serial_loops(members, epochs=3, batch_size=64)


def test_predict_candidates_equals_predict() -> None:
    train = generated_data(300, 6, seed=2)
    heads, lrs = candidate_heads(6, seed=2)
    train_candidates(heads, lrs, train, epochs=2, batch_size=32, seed=0)
    x = generated_data(101, 6, seed=5).x
    labels = predict_candidates(heads, x, batch_size=40)
    assert labels.shape == (len(heads), 101)
    assert np.array_equal(labels, np.stack([predict(head, x) for head in heads]))


def test_a_lone_rank_one_candidate_of_a_seed_equals_its_serial_loop() -> None:
    """Rank-1 layers run item by item inside ``bmm`` for a block of candidates, from Python for a seed's only one."""
    members = []
    for seed, count in ((0, 1), (1, 3)):
        train = generated_data(300, 32, seed=20 + seed)
        torch.manual_seed(seed)
        layer = nn.Linear(32, 2)
        heads = [FactorizedLinear.from_linear(layer, 1, torch.rand(32) + 0.5) for _ in range(count)]
        members.append((heads, [1e-2, 1e-3, 3e-3][:count], train, seed))
    assert_sets_train_as_serial_loops(members, epochs=2, batch_size=256)


def test_heads_of_many_classes_equal_train_classifier() -> None:
    """More classes than :data:`CLASS_MAJOR_CLASSES`: the cross-entropy runs on row-major logits."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(150, 12, generator=generator)
    train = TrainingData(x, torch.randint(0, 5, (150,), generator=generator), torch.zeros(150, dtype=torch.long))
    torch.manual_seed(6)
    layer = nn.Linear(12, 5)
    heads, lrs = [layer, FactorizedLinear.from_linear(layer, 2)], [1e-2, 1e-2]
    expected, _ = serial(heads, lrs, train, seed=2, epochs=2, checkpoints=set(), batch_size=32)
    for a, b in zip(expected, train_candidates([copy.deepcopy(h) for h in heads], lrs, train, epochs=2, batch_size=32, seed=2)):
        assert_same_parameters(a, b)


@pytest.mark.parametrize(("rows", "classes"), [(256, 2), (255, 2), (7, 2), (255, 3)])
def test_class_major_cross_entropy_gradient_equals_autograd(rows: int, classes: int) -> None:
    """The gradient of each candidate's mean cross-entropy, from class-major kernels, is autograd's bit for bit:
    logits of every scale, ties, and a column count that is no multiple of the SIMD width."""
    from fairtune.batched import _Group, _Workspace, group_candidates

    generator = torch.Generator().manual_seed(rows)
    heads = [nn.Linear(3, classes) for _ in range(40)]
    sets = [CandidateSet(heads, [0.1] * len(heads), generated_data(rows, 3, seed=0), 0)]
    groups = [_Group.of(sets, members) for members in group_candidates(sets)]
    workspace = _Workspace(groups, rows, classes)
    assert workspace.class_major
    (logits,) = workspace.logits
    for scale in (1e-3, 1.0, 8.0, 60.0):
        logits.copy_(torch.randn(logits.shape, generator=generator) * scale)
        logits[:, ::5, 1] = logits[:, ::5, 0]
        targets = torch.randint(0, classes, logits.shape[:2], generator=generator)
        workspace.cross_entropy_grad(targets)
        for k in range(len(heads)):
            one = logits[k].clone().requires_grad_(True)
            F.cross_entropy(one, targets[k]).backward()
            assert torch.equal(workspace.grads[0][k], one.grad), (scale, k)


def test_refuses_what_it_cannot_batch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        train_candidate_sets([CandidateSet([nn.Linear(3, 2)], [0.1], generated_data(n, 3, seed=0), 0) for n in (10, 11)], epochs=1)
    with pytest.raises(TypeError, match="nn.Linear or FactorizedLinear"):
        train_candidates([nn.Sequential(nn.Linear(3, 2))], [0.1], generated_data(10, 3, seed=0), epochs=1)
    with pytest.raises(ValueError, match="one learning rate per head"):
        CandidateSet([nn.Linear(3, 2)], [0.1, 0.2], generated_data(10, 3, seed=0), 0)


# ----------------------------------------------------------------------------------------------
# selection and test predictions on real features, per method and seed, as the methods' own fit


def features(dataset: str, seed: int, cache_dir: str) -> tuple[nn.Linear, dict[str, TrainingData]]:
    """The pre-trained model's target layer and its input features on the new task's splits."""
    task = load_task(DataConfig(dataset=dataset), seed=seed)
    if dataset == "adult":
        model = pretrained_mlp(task, PretrainConfig(), seed=seed, cache_dir=cache_dir)
    else:
        model = pretrained_vision(task, PretrainConfig(), arch=default_arch(dataset), seed=seed, cache_dir=cache_dir)
    _, layer = find_linear(model)
    splits = {name: split for name, split in task.splits().items() if name != "source"}
    return layer, {name: TrainingData.from_arrays(extract_features(model, layer, split.inputs), split.y, split.s) for name, split in splits.items()}


def serial_predictions(layer: nn.Linear, data: dict[str, TrainingData], grid: FinetuneGrid, methods: list[str], seed: int) -> dict:
    """(method, candidate, epoch) -> (params, validation labels, test labels), each candidate fitted by ``method.fit``."""
    out: dict[tuple[str, int, int], Any] = {}
    for name in methods:
        method = build_method(name, grid)
        context = method.prepare(layer, data["train"], grid)
        for i, params in enumerate(method.candidates(layer, grid)):
            def record(epoch: int, fitted: Any, name: str = name, i: int = i, params: Any = params) -> None:
                if epoch in grid.epochs:
                    out[name, i, epoch] = (params, fitted.predict(data["val"].x), fitted.predict(data["test"].x))
            method.fit(layer, data["train"], context, params, epochs=max(grid.epochs), batch_size=grid.batch_size, seed=seed, on_epoch=record)
    return out


def batched_predictions(layer: nn.Linear, data: dict[str, TrainingData], grid: FinetuneGrid, methods: list[str], seed: int) -> dict:
    """The same, every candidate of every method trained in one batched loop."""
    keys, heads, lrs, candidates = [], [], [], []
    for name in methods:
        method = build_method(name, grid)
        context = method.prepare(layer, data["train"], grid)
        for i, params in enumerate(method.candidates(layer, grid)):
            keys.append((name, i))
            candidates.append(params)
            heads.append(method.initial_head(layer, context, params))
            lrs.append(params.lr)
    out: dict[tuple[str, int, int], Any] = {}

    def record(epoch: int, modules: list[nn.Module]) -> None:
        val, test = predict_candidates(modules, data["val"].x), predict_candidates(modules, data["test"].x)
        for k, (key, params) in enumerate(zip(keys, candidates)):
            out[(*key, epoch)] = (params, val[k], test[k])

    train_candidates(heads, lrs, data["train"], epochs=max(grid.epochs), batch_size=grid.batch_size, seed=seed,
                     checkpoints=set(grid.epochs), on_checkpoint=record)
    return out


def selected(predictions: dict, val: TrainingData, method: str) -> tuple[dict, int, np.ndarray]:
    """The candidate and epoch with the lowest validation Err (the first one on ties), and its test labels."""
    best = None
    for (name, _, epoch), (params, val_labels, test_labels) in predictions.items():
        if name == method:
            err = evaluate(val.y.numpy(), val_labels, val.s.numpy())["err"]
            if best is None or err < best[0]:
                best = (err, params, epoch, test_labels)
    return best[1], best[2], best[3]


@pytest.mark.parametrize(("dataset", "seeds", "epochs"), [("adult", (0, 1), (1, 2)), ("digits-bias", (0,), (5, 20))])
def test_same_selection_and_test_predictions_as_serial(dataset: str, seeds: tuple[int, ...], epochs: tuple[int, ...], tmp_path) -> None:
    """Default grid (ranks 1, 2; lrs 1e-3, 1e-2; five operators); Adult's epochs shortened to keep the test quick."""
    grid, methods = FinetuneGrid(epochs=epochs), ["tl", "svd", "win"]
    for seed in seeds:
        layer, data = features(dataset, seed, str(tmp_path))
        want = serial_predictions(layer, data, grid, methods, seed)
        got = batched_predictions(layer, data, grid, methods, seed)
        assert want.keys() == got.keys() and len(want) == 2 * (2 + 4 + 20)
        for key, (params, val_labels, test_labels) in want.items():
            assert params == got[key][0]
            assert np.array_equal(val_labels, got[key][1]) and np.array_equal(test_labels, got[key][2]), key
        for method in methods:
            params, epoch, test_labels = selected(want, data["val"], method)
            params_b, epoch_b, test_labels_b = selected(got, data["val"], method)
            assert (params, epoch) == (params_b, epoch_b)
            assert np.array_equal(test_labels, test_labels_b)


def test_alignment_padding_stays_zero() -> None:
    """Each candidate's slice of the flat buffers starts on 64 bytes; the zeros between slices get zero gradients and stay zero."""
    from fairtune.batched import _aligned_views, _FlatAdam, _Group, _train_step, _Workspace, group_candidates

    train = generated_data(64, 6, seed=4)
    heads, lrs = candidate_heads(6, seed=4)  # 6 + 2, 1·6 + 2 + 2, ... floats per candidate: padded to 16
    sets = [CandidateSet(heads, lrs, train, 0)]
    groups = [_Group.of(sets, members) for members in group_candidates(sets)]
    optimizer = _FlatAdam(groups)
    params = [param for group in groups for param in group.params]
    assert all(q.data_ptr() % 64 == 0 for p, _ in params for q in p.unbind(0))
    marker = torch.zeros_like(optimizer.flat)
    for view in _aligned_views(marker, [(tuple(p.shape), apart) for p, apart in params]):
        view.fill_(1)
    used = marker.bool()
    assert not used.all()
    for _ in range(5):
        idx = torch.randperm(64)[:16]
        _train_step(groups, optimizer, _Workspace(groups, 16, 2), [train.x[idx]], train.y[idx][None])
    assert optimizer.grad[~used].eq(0).all() and optimizer.flat[~used].eq(0).all()
    assert optimizer.flat[used].ne(0).any()


def test_the_engine_selects_the_same_with_batched_and_serial_candidates(write_csv, tmp_path) -> None:
    """`fairtune run` end to end: TL, f+SVD and WIN candidates trained together or one loop each."""
    import pandas as pd

    from fairtune.experiments import RunConfig, run

    data = DataConfig(dataset="csv", csv=str(write_csv(n_rows=900)), target="label", sensitive="group", positive="yes")
    config = RunConfig(data=data, pretrain=PretrainConfig(hidden=(16, 8), epochs=3), methods=("tl", "svd", "win"),
                       seeds=(0, 1), finetune=FinetuneGrid(epochs=(2, 5)), cache_dir=str(tmp_path / "cache"))
    together = run(config, progress=False, keep_predictions=True)
    serial = run(config, progress=False, keep_predictions=True, batched=False)
    pd.testing.assert_frame_equal(together.results.drop(columns="fit_seconds"), serial.results.drop(columns="fit_seconds"))
    pd.testing.assert_frame_equal(together.predictions, serial.predictions)
    assert together.selections == serial.selections


def test_bundles_hold_the_plain_head_methods_of_several_seeds() -> None:
    """TL, f+SVD, WIN and `pretrained` of a grid share a bundle, split by seed; a peer and a target run alone."""
    from fairtune.experiments.engine import Environment, Unit, bundles_of

    units = [Unit(method=method, seed=seed) for seed in range(4) for method in ("pretrained", "tl", "win", "tl-eo:0.05", "logreg")]
    bundles = bundles_of(units, Environment(), workers=1)
    assert [[(u.method, u.seed) for u in bundle] for bundle in bundles[:3]] == [
        [(m, s) for s in range(4) for m in ("pretrained", "tl", "win")], [("tl-eo:0.05", 0)], [("logreg", 0)]]
    assert sorted(u.key for bundle in bundles for u in bundle) == sorted(u.key for u in units)
    two_workers = bundles_of(units, Environment(), workers=2)
    assert [sorted({u.seed for u in bundle}) for bundle in two_workers[:2]] == [[0, 2], [1, 3]]
    stored = bundles_of(units, Environment(), workers=1, max_seeds=3)
    assert [sorted({u.seed for u in bundle}) for bundle in stored[:2]] == [[0, 2], [1, 3]]
    assert all(len(bundle) == 1 for bundle in bundles_of(units, Environment(batched=False), workers=1))
    other_grid = Unit(method="tl", seed=0, finetune=FinetuneGrid(epochs=(3,)))
    assert len(bundles_of([*units[:3], other_grid], Environment(), workers=1)) == 2
