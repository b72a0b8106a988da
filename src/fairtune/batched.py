"""Batched fine-tuning: many candidate heads trained in one loop, with the results of serial loops.

:func:`fairtune.training.train_classifier` trains one head per loop, one Python-level Adam
step at a time; for the small heads fairtune fine-tunes (``nn.Linear(d, 2)``, or l̂1 → l̂2 of
:class:`~fairtune.factorization.FactorizedLinear`) the per-step overhead is the whole cost.
Here every candidate that trains on the same batches (the learning rates, ranks and operators
of every last-layer method of a seed; the seeds too, with their own features and batch order)
is one slice of a stacked parameter tensor ``(K, ...)`` and all take their steps together.

Same numbers, not just close ones. Each candidate gets, bit for bit, the parameters that
``train_classifier`` gives it (``torch.Generator().manual_seed(seed)``, ``randperm`` per epoch,
Adam with the candidate's own lr):

* the matrix products are ``bmm`` / ``baddbmm`` over the candidates, which run the same BLAS
  gemm per candidate as ``F.linear`` does on one head, *except* for tiny products and where a
  dimension is 1 (rank 1, a batch of one row): those layers run candidate by candidate, with
  the very ``addmm`` / ``mm`` calls autograd makes for ``F.linear`` (:func:`_per_candidate`);
* the gradients are computed without autograd, by the very kernels autograd runs for one head
  (cross-entropy with ``reduction="mean"`` per candidate, then the products of ``F.linear``);
* Adam is ``torch.optim.Adam``'s single-tensor update written on one flat buffer of every
  parameter, with a per-candidate step size ``lr / (1 - β1^t)`` rounded to float32 as the
  scalar is there.

``tests/test_batched.py`` checks the equality with ``torch.equal``; ``benchmarks/batched.py``
measures it on the Adult grid and times both paths. The equality rests on which BLAS kernels
torch picks for which shapes; a torch or BLAS that picks differently shows up in those tests.

Use: build each candidate's head as the method does (``method.initial_head``), then

    train_candidates(heads, lrs, features["train"], epochs=max(grid.epochs), seed=seed,
                     checkpoints=set(grid.epochs), on_checkpoint=score)

where ``score(epoch, heads)`` can label the validation split with
``predict_candidates(heads, features["val"].x)`` (row i = ``training.predict(heads[i], x)``).
``train_candidate_sets`` takes several seeds at once (:class:`CandidateSet` per seed, training
splits of equal length). Float32 CPU features; heads ``nn.Linear`` or ``FactorizedLinear``;
methods with a penalty (Retrain) or weight decay stay on ``train_classifier``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .factorization import FactorizedLinear
from .training import TrainingData, intra_op_threads

#: torch.optim.Adam's defaults, which ``train_classifier`` uses.
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class CandidateSet:
    """Heads that share one training split and one batch order: one seed's candidates.

    ``heads[i]`` is trained with learning rate ``lrs[i]``, batches drawn as
    ``train_classifier(..., seed=seed)`` draws them.
    """

    heads: Sequence[nn.Module]
    lrs: Sequence[float]
    train: TrainingData
    seed: int

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.lrs) or not self.heads:
            raise ValueError(f"need one learning rate per head and at least one head, got {len(self.heads)} heads and {len(self.lrs)} lrs")
        if self.train.x.dtype != torch.float32 or self.train.x.device.type != "cpu":
            raise TypeError(f"batched training runs on float32 CPU features, got {self.train.x.dtype} on {self.train.x.device}")


def head_layers(head: nn.Module) -> list[nn.Linear]:
    """The head as a chain of linear maps: ``nn.Linear`` -> itself; ``FactorizedLinear`` -> l̂1, l̂2."""
    if isinstance(head, FactorizedLinear):
        return [head.first, head.second]
    if isinstance(head, nn.Linear):
        return [head]
    raise TypeError(f"batched training takes nn.Linear or FactorizedLinear heads, got {type(head).__name__}")


def _structure(head: nn.Module) -> tuple:
    """Heads with equal structure stack: the same layer shapes and biases."""
    return tuple((tuple(layer.weight.shape), layer.bias is not None) for layer in head_layers(head))


def _per_candidate(rows: int, weight_shape: torch.Size) -> bool:
    """Whether ``F.linear`` on ``rows`` rows with this ``(out, in)`` weight must run candidate by candidate.

    ``bmm`` runs the BLAS gemm that ``F.linear`` runs on one head, except (a) below 400
    multiply-adds per matrix, where torch's ``bmm`` uses its own loop, and (b) where a dimension
    is 1 (rank 1, a last batch of one row), where ``F.linear`` runs a matrix-vector kernel.
    The forward product and both backward products have the same ``rows · out · in``.
    """
    out_features, in_features = weight_shape
    return 1 in (rows, out_features, in_features) or rows * out_features * in_features < 400


#: Floats per 64 bytes: torch's CPU allocator aligns to 64 bytes, and so must every candidate's slice.
ALIGN = 16


def _padded(numel: int) -> int:
    return -(-numel // ALIGN) * ALIGN


def _aligned_views(buffer: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """Views of a 64-byte aligned ``buffer``: per shape ``(K, *item)``, each of the K items starting on 64 bytes.

    BLAS's matrix-vector kernels (the per-candidate path) sum in an order that depends on the
    addresses' alignment; the serial loop hands them freshly allocated, aligned tensors.
    """
    views, offset = [], 0
    for shape in shapes:
        count, item = shape[0], int(np.prod(shape[1:]))
        block = buffer[offset:offset + count * _padded(item)].view(count, _padded(item))
        views.append(block[:, :item].view(shape))
        offset += count * _padded(item)
    return views


def _aligned_buffer(shapes: list[tuple[int, ...]]) -> Tensor:
    return torch.zeros(sum(shape[0] * _padded(int(np.prod(shape[1:]))) for shape in shapes))


def _aligned_stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack(tensors)`` with every item 64-byte aligned."""
    shape = (len(tensors), *tensors[0].shape)
    (out,) = _aligned_views(_aligned_buffer([shape]), [shape])
    return out.copy_(torch.stack(tensors))


def _as_list(h: Tensor | list[Tensor]) -> list[Tensor]:
    return h if isinstance(h, list) else list(h.unbind(0))


def _stacked(h: Tensor | list[Tensor]) -> Tensor:
    return torch.stack(h) if isinstance(h, list) else h


@dataclass
class _Layer:
    """One linear layer of K candidates: weight ``(K, out, in)``, bias ``(K, out)`` or None, and where their gradients go.

    ``weight``, ``bias`` and the gradients are views of the optimizer's flat buffers once
    :class:`_FlatAdam` has bound them; the per-candidate views are made once, not per step.
    """

    weight: Tensor
    bias: Tensor | None
    weight_grad: Tensor | None = None
    bias_grad: Tensor | None = None

    def __post_init__(self) -> None:
        self.weights = list(self.weight.unbind(0))
        self.transposed = list(self.weight.transpose(1, 2).unbind(0))  # each equals weights[k].t()
        self.biases = None if self.bias is None else list(self.bias.unbind(0))
        self.weight_grads = [] if self.weight_grad is None else list(self.weight_grad.unbind(0))

    def bind(self, weight: Tensor, bias: Tensor | None, weight_grad: Tensor, bias_grad: Tensor | None) -> None:
        """Use these tensors (views of the optimizer's buffers) from now on."""
        self.weight, self.bias, self.weight_grad, self.bias_grad = weight, bias, weight_grad, bias_grad
        self.__post_init__()

    def forward(self, h: Tensor | list[Tensor], split: bool, out: Tensor | None = None, outs: list[Tensor] | None = None) -> Tensor | list[Tensor]:
        """``F.linear`` of every candidate (into ``out`` / ``outs`` if given).

        Batched: ``baddbmm`` / ``bmm``. ``split``: per candidate the ``addmm(bias, x, weight.t())``
        or ``mm(x, weight.t())`` that ``F.linear`` calls.
        """
        if not split:
            h = _stacked(h)
            if self.bias is None:
                return torch.bmm(h, self.weight.transpose(1, 2), out=out)
            return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2), out=out)
        h = _as_list(h)
        outs = outs or [None] * len(h)
        if self.biases is None:
            return [torch.mm(x, w, out=o) for x, w, o in zip(h, self.transposed, outs)]
        return [torch.addmm(b, x, w, out=o) for x, w, b, o in zip(h, self.transposed, self.biases, outs)]

    def backward(self, grad: Tensor | list[Tensor], grads_t: list[Tensor] | None, h: Tensor | list[Tensor], need_input: bool) -> Tensor | list[Tensor] | None:
        """Write this layer's gradients from its output's gradient; return its input's gradient if needed.

        The products are those autograd runs: for ``baddbmm``, ``h.transpose(1, 2).bmm(grad)`` and
        ``grad.bmm(weight)``; for ``F.linear`` on one head (``mm_mat2_backward`` /
        ``mm_mat1_backward``), ``grad.t().mm(x)`` (``weight.t()`` is column-major) and
        ``grad.mm(weight)``, or ``weight.t().mm(grad.t()).t()`` where ``x`` is column-major (one
        row of one feature). The orientation picks the BLAS call, and so the rounding.
        """
        if self.bias is not None:
            torch.sum(_stacked(grad), 1, out=self.bias_grad)
        if not isinstance(h, list):
            grad = _stacked(grad)
            self.weight_grad.copy_(h.transpose(1, 2).bmm(grad).transpose(1, 2))
            return grad.bmm(self.weight) if need_input else None
        grads = _as_list(grad)
        grads_t = grads_t or [g.t() for g in grads]
        for g_t, x, out in zip(grads_t, h, self.weight_grads):
            torch.mm(g_t, x, out=out)
        if not need_input:
            return None
        return [w.t().mm(g_t).t() if x.stride(0) == 1 and x.stride(1) == x.size(0) else g.mm(w)
                for g, g_t, x, w in zip(grads, grads_t, h, self.weights)]


@dataclass
class _Group:
    """Candidates of equal structure, one :class:`_Layer` per linear map of the head."""

    members: list[tuple[int, int]]  # (set index, head index) of each candidate
    layers: list[_Layer]
    lrs: Tensor  # (K,) float64
    sets: Tensor  # (K,) int64: the set (seed) each candidate trains on

    @classmethod
    def of(cls, sets: Sequence[CandidateSet], members: list[tuple[int, int]]) -> _Group:
        chains = [head_layers(sets[i].heads[j]) for i, j in members]
        layers = [
            _Layer(_aligned_stack([chain[p].weight.detach() for chain in chains]),
                   None if layer.bias is None else _aligned_stack([chain[p].bias.detach() for chain in chains]))
            for p, layer in enumerate(chains[0])
        ]
        return cls(members=members, layers=layers, lrs=torch.tensor([float(sets[i].lrs[j]) for i, j in members], dtype=torch.float64),
                   sets=torch.tensor([i for i, _ in members]))

    @property
    def params(self) -> list[Tensor]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]

    def inputs(self, per_set: list[Tensor], split: bool) -> Tensor | list[Tensor]:
        """Each candidate's batch of its own set: K tensors ``(b, d)``, or ``(K, b, d)`` (a view if all share one set)."""
        if split:
            return [per_set[i] for i in self.sets.tolist()]
        if len(set(self.sets.tolist())) == 1:
            return per_set[int(self.sets[0])].expand(len(self.members), -1, -1)
        return torch.stack([per_set[i] for i in self.sets.tolist()])

    def splits(self, rows: int) -> list[bool]:
        return [_per_candidate(rows, layer.weight.shape[1:]) for layer in self.layers]

    def forward(self, per_set: list[Tensor], out: Tensor, outs: list[Tensor] | None = None) -> list[Tensor | list[Tensor]]:
        """Logits on the sets' batches ``per_set[i]`` ``(b, d)`` into ``out`` ``(K, b, k)`` (per candidate ``outs``).

        Returns each layer's input, kept for the backward pass.
        """
        splits = self.splits(len(per_set[0]))
        h = self.inputs(per_set, splits[0])
        kept = []
        for position, (layer, split) in enumerate(zip(self.layers, splits)):
            h = _as_list(h) if split else _stacked(h)
            kept.append(h)
            last = position == len(self.layers) - 1
            h = layer.forward(h, split, out=out if last else None, outs=outs if last else None)
        if isinstance(h, list) and outs is None:
            torch.stack(h, out=out)
        return kept

    def backward(self, grad: Tensor, grads: list[Tensor], grads_t: list[Tensor], kept: list[Tensor | list[Tensor]]) -> None:
        """Every layer's gradients from the logits' gradient ``grad`` ``(K, b, k)`` (and its per-candidate views)."""
        current: Tensor | list[Tensor] = grads if isinstance(kept[-1], list) else grad
        current_t: list[Tensor] | None = grads_t
        for position in reversed(range(len(self.layers))):
            current = self.layers[position].backward(current, current_t, kept[position], position > 0)
            current_t = None

    def write_back(self, sets: Sequence[CandidateSet]) -> None:
        """Copy each candidate's slice into its head's parameters; the head in eval mode, as ``train_classifier`` leaves it."""
        for k, (i, j) in enumerate(self.members):
            sets[i].heads[j].eval()
            targets = [t for layer in head_layers(sets[i].heads[j]) for t in (layer.weight, layer.bias) if t is not None]
            for target, p in zip(targets, self.params):
                target.copy_(p[k])


class _FlatAdam:
    """``torch.optim.Adam``'s single-tensor update (amsgrad off, no weight decay) on one flat buffer of every parameter.

    Elementwise, so one buffer gives each element the arithmetic it gets in its own tensor;
    the step size ``lr / (1 - β1^t)`` is per element (per candidate), rounded to float32 as
    the scalar ``value=-step_size`` of ``addcdiv_`` is. The groups' layers are bound to
    aligned views of the parameter and gradient buffers; the padding between them has zero
    gradients and stays zero.
    """

    def __init__(self, groups: list[_Group]) -> None:
        params = [p for group in groups for p in group.params]
        shapes = [tuple(p.shape) for p in params]
        self.flat, self.grad = _aligned_buffer(shapes), _aligned_buffer(shapes)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.neg_lrs = -torch.cat([group.lrs.repeat_interleave(_padded(p[0].numel())) for group in groups for p in group.params])
        param_views, grad_views = _aligned_views(self.flat, shapes), _aligned_views(self.grad, shapes)
        for view, p in zip(param_views, params):
            view.copy_(p)
        param_views, grad_views = iter(param_views), iter(grad_views)
        for group in groups:
            for layer in group.layers:
                has_bias = layer.bias is not None
                layer.bind(next(param_views), next(param_views) if has_bias else None, next(grad_views), next(grad_views) if has_bias else None)
        self.steps = 0

    def step(self) -> None:
        """One step with the gradients the layers wrote into ``self.grad``."""
        self.steps += 1
        bias_correction1 = 1 - BETA1**self.steps
        bias_correction2_sqrt = (1 - BETA2**self.steps) ** 0.5
        neg_step_size = (self.neg_lrs / bias_correction1).float()
        self.exp_avg.lerp_(self.grad, 1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(self.grad, self.grad, value=1 - BETA2)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
        self.flat.add_(neg_step_size * self.exp_avg / denom)


class _Workspace:
    """Buffers for batches of ``rows`` rows: every candidate's logits and their gradient, with aligned per-candidate views."""

    def __init__(self, groups: list[_Group], rows: int, classes: int) -> None:
        sizes = [len(group.members) for group in groups]
        shape = (sum(sizes), rows, classes)
        self.logits, self.grad = (_aligned_views(_aligned_buffer([shape]), [shape])[0] for _ in range(2))
        self.nll_grad_output = torch.ones(shape[0] * rows) / rows  # the mean's backward: 1/b, divided in float32
        self.sets = torch.cat([group.sets for group in groups])
        bounds = np.cumsum([0, *sizes])
        self.slices = [(self.logits[a:b], self.grad[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        self.views = [(list(logits.unbind(0)), list(grad.unbind(0)), list(grad.transpose(1, 2).unbind(0))) for logits, grad in self.slices]

    def cross_entropy_grad(self, targets: Tensor) -> None:
        """d/dlogits of each candidate's mean cross-entropy over its batch, into ``self.grad``.

        The kernels autograd runs for ``F.cross_entropy(logits_k, y_k)``: ``nll_loss_backward``
        (``-1/b`` at each target) and ``_log_softmax_backward_data``. (``log_softmax`` over the
        first axis of the transposed logits would be 4x faster for k = 2, but rounds
        differently in rare rows.)
        """
        classes = self.logits.shape[-1]
        flat = self.logits.reshape(-1, classes)
        log_probs = torch._log_softmax(flat, 1, False)
        nll_grad = torch.ops.aten.nll_loss_backward(self.nll_grad_output, log_probs, targets.reshape(-1), None, 0, -100, torch.ones(()))
        self.grad.copy_(torch._log_softmax_backward_data(nll_grad, log_probs, 1, flat.dtype).view(self.grad.shape))


def group_candidates(sets: Sequence[CandidateSet]) -> list[list[tuple[int, int]]]:
    """(set, head) indices grouped by head structure, in order of first appearance."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, candidate_set in enumerate(sets):
        for j, head in enumerate(candidate_set.heads):
            groups.setdefault(_structure(head), []).append((i, j))
    return list(groups.values())


def _train_step(groups: list[_Group], optimizer: _FlatAdam, workspace: _Workspace, per_set: list[Tensor], ys: Tensor) -> None:
    """One Adam step of every candidate on its set's batch: ``per_set[i]`` ``(b, d)``, ``ys`` ``(S, b)``."""
    rows = len(ys[0])
    kept = [group.forward(per_set, logits, outs=views[0] if group.splits(rows)[-1] else None)
            for group, (logits, _), views in zip(groups, workspace.slices, workspace.views)]
    workspace.cross_entropy_grad(ys.expand(len(workspace.sets), -1) if len(ys) == 1 else ys.index_select(0, workspace.sets))
    for group, (_, grad), (_, grads, grads_t), group_kept in zip(groups, workspace.slices, workspace.views, kept):
        group.backward(grad, grads, grads_t, group_kept)
    optimizer.step()


@torch.no_grad()
def train_candidate_sets(
    sets: Sequence[CandidateSet],
    *,
    epochs: int,
    batch_size: int = 256,
    checkpoints: set[int] | frozenset[int] = frozenset(),
    on_checkpoint: Callable[[int, list[list[nn.Module]]], None] | None = None,
) -> list[list[nn.Module]]:
    """Train every head of every set in one loop; each ends as ``train_classifier`` would leave it.

    All sets need training splits of the same length (their batches then line up); set ``i``
    draws its batches from ``torch.Generator().manual_seed(sets[i].seed)``. Every parameter of
    every head is trained (as ``FineTuningMethod.fit`` does); no weight decay, no penalty.
    The heads are updated in place and left in eval mode. After each epoch in ``checkpoints``
    (counting from 1) ``on_checkpoint(epoch, heads)`` sees them, ``heads[i][j]`` being head
    ``j`` of set ``i`` (the same objects, updated again later, like ``train_classifier``'s
    ``on_epoch``). Returns the heads.
    """
    if len({len(s.train) for s in sets}) != 1:
        raise ValueError(f"the sets' training splits differ in length ({sorted({len(s.train) for s in sets})}); train them separately")
    groups = [_Group.of(sets, members) for members in group_candidates(sets)]
    optimizer = _FlatAdam(groups)
    workspaces: dict[int, _Workspace] = {}
    generators = [torch.Generator().manual_seed(s.seed) for s in sets]
    heads = [list(s.heads) for s in sets]
    n = len(sets[0].train)
    with intra_op_threads(1):
        for epoch in range(1, epochs + 1):
            orders = [torch.randperm(n, generator=g) for g in generators]
            for start in range(0, n, batch_size):
                indices = [order[start:start + batch_size] for order in orders]
                per_set = [s.train.x.index_select(0, idx) for s, idx in zip(sets, indices)]  # fresh, aligned
                ys = torch.stack([s.train.y.index_select(0, idx) for s, idx in zip(sets, indices)])
                rows = len(indices[0])
                if rows not in workspaces:
                    workspaces[rows] = _Workspace(groups, rows, groups[0].layers[-1].weight.shape[1])
                _train_step(groups, optimizer, workspaces[rows], per_set, ys)
            if epoch in checkpoints or epoch == epochs:
                for group in groups:
                    group.write_back(sets)
                if epoch in checkpoints and on_checkpoint is not None:
                    with torch.enable_grad():
                        on_checkpoint(epoch, heads)
    return heads


def train_candidates(
    heads: Sequence[nn.Module],
    lrs: Sequence[float],
    train: TrainingData,
    *,
    epochs: int,
    batch_size: int = 256,
    seed: int = 0,
    checkpoints: set[int] | frozenset[int] = frozenset(),
    on_checkpoint: Callable[[int, list[nn.Module]], None] | None = None,
) -> list[nn.Module]:
    """One seed's candidates: ``heads[i]`` as ``train_classifier(heads[i], train, lr=lrs[i], seed=seed, ...)`` leaves it.

    ``on_checkpoint(epoch, heads)`` is called after each epoch in ``checkpoints``.
    See :func:`train_candidate_sets` (several seeds in one loop).
    """
    callback = None if on_checkpoint is None else (lambda epoch, per_set: on_checkpoint(epoch, per_set[0]))
    return train_candidate_sets([CandidateSet(heads, lrs, train, seed)], epochs=epochs, batch_size=batch_size,
                                checkpoints=checkpoints, on_checkpoint=callback)[0]


@torch.no_grad()
def predict_candidates(heads: Sequence[nn.Module], x: Tensor, batch_size: int = 8192) -> np.ndarray:
    """Labels of every head on ``x``, ``(K, n)`` int64; row i equals ``training.predict(heads[i], x)``.

    Rows are taken in chunks of ``batch_size`` as ``training.predict_proba`` takes them; Ŷ = 1
    where the softmax's P(Y=1|x) > 0.5.
    """
    empty = TrainingData(x[:0].float(), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    candidate_set = [CandidateSet(heads, [0.0] * len(heads), empty, 0)]
    out = np.empty((len(heads), len(x)), dtype=np.int64)
    with intra_op_threads(1):
        for members in group_candidates(candidate_set):
            group = _Group.of(candidate_set, members)
            rows = [j for _, j in members]
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size].float()
                logits = torch.empty(len(members), len(chunk), group.layers[-1].weight.shape[1])
                group.forward([chunk], logits)
                out[rows, start:start + len(chunk)] = (logits.softmax(dim=-1)[..., 1] > 0.5).numpy()
    return out
