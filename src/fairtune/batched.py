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
* the loss is each candidate's own batch mean (the gradient 1/b of ``reduction="mean"``),
  summed over candidates, whose gradients are independent;
* Adam is ``torch.optim.Adam``'s single-tensor update written on the stacked tensors, with a
  per-candidate step size ``lr / (1 - β1^t)`` rounded to float32 as the scalar is there.

``tests/test_batched.py`` checks the equality with ``torch.equal``; ``benchmarks/batched.py``
measures it on the Adult grid and times both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

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


def _mm_weight_grad(grad: Tensor, h: Tensor, weight: Tensor) -> Tensor:
    """Gradient of ``weight`` in ``F.linear(h, weight)`` computed as autograd computes it (``mm_mat2_backward``).

    ``mat2 = weight.t()``; autograd picks the product's orientation from ``mat2``'s strides,
    and the orientation decides the BLAS call and so the rounding.
    """
    mat2 = weight.t()
    if mat2.stride(0) == 1 and mat2.stride(1) == mat2.size(0):
        return grad.t().mm(h)
    return h.t().mm(grad).t()


def _mm_input_grad(grad: Tensor, h: Tensor, weight: Tensor) -> Tensor:
    """Gradient of ``h`` in ``F.linear(h, weight)`` as autograd computes it (``mm_mat1_backward``)."""
    if h.stride(0) == 1 and h.stride(1) == h.size(0):
        return weight.t().mm(grad.t()).t()
    return grad.mm(weight)


def _forward(h: Tensor | list[Tensor], weight: Tensor, bias: Tensor | None, split: bool) -> Tensor | list[Tensor]:
    """``F.linear`` of every candidate: ``h`` ``(K, b, in)`` (or K tensors ``(b, in)``), ``weight`` ``(K, out, in)``.

    Batched: ``baddbmm`` / ``bmm``; ``split``: the ``addmm`` / ``mm`` that ``F.linear`` calls, per candidate.
    """
    if split:
        inputs = h if isinstance(h, list) else list(h.unbind(0))
        if bias is None:
            return [x.mm(w.t()) for x, w in zip(inputs, weight.unbind(0))]
        return [torch.addmm(b, x, w.t()) for x, w, b in zip(inputs, weight.unbind(0), bias.unbind(0))]
    h = _stacked(h)
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def _backward(
    grad: Tensor, h: Tensor | list[Tensor], weight: Tensor, split: bool, need_input: bool,
) -> tuple[Tensor, Tensor, Tensor | list[Tensor] | None]:
    """Gradients of one layer from the gradient of its output ``(K, b, out)``: (weight, bias, input or None).

    The same products autograd runs for ``baddbmm`` (batched) or ``addmm`` (per candidate).
    """
    bias_grad = grad.sum(1)
    if split:
        grads, inputs, weights = grad.unbind(0), (h if isinstance(h, list) else list(h.unbind(0))), weight.unbind(0)
        weight_grad = torch.stack([_mm_weight_grad(g, x, w) for g, x, w in zip(grads, inputs, weights)])
        input_grad = [_mm_input_grad(g, x, w) for g, x, w in zip(grads, inputs, weights)] if need_input else None
        return weight_grad, bias_grad, input_grad
    h = _stacked(h)
    weight_grad = h.transpose(1, 2).bmm(grad).transpose(1, 2)
    return weight_grad, bias_grad, grad.bmm(weight) if need_input else None


def _stacked(h: Tensor | list[Tensor]) -> Tensor:
    return torch.stack(h) if isinstance(h, list) else h


def _cross_entropy_grad(logits: Tensor, targets: Tensor) -> Tensor:
    """d/dlogits of each candidate's mean cross-entropy over its batch, ``(K, b, k)``, as ``F.cross_entropy`` gives it.

    The mean's gradient 1/b is that of ``reduction="mean"``; ``log_softmax`` runs over the last
    axis as there (over the first axis of the transposed logits is 4x faster for k = 2, but
    rounds differently in rare rows).
    """
    candidates, rows, classes = logits.shape
    flat = logits.reshape(-1, classes).requires_grad_()
    with torch.enable_grad():
        losses = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
        (grad,) = torch.autograd.grad(losses.view(candidates, rows).mean(1).sum(), flat)
    return grad.view(candidates, rows, classes)


@dataclass
class _Group:
    """Candidates of equal structure: per layer a weight ``(K, out, in)`` and bias ``(K, out)``, with Adam's moments."""

    members: list[tuple[int, int]]  # (set index, head index) of each candidate
    layers: list[tuple[Tensor, Tensor | None]]
    neg_lrs: Tensor  # (K,) float64: -lr
    sets: Tensor  # (K,) int64: the set (seed) each candidate trains on
    exp_avg: list[Tensor] = field(default_factory=list)
    exp_avg_sq: list[Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, sets: Sequence[CandidateSet], members: list[tuple[int, int]]) -> _Group:
        chains = [head_layers(sets[i].heads[j]) for i, j in members]
        layers = []
        for position, layer in enumerate(chains[0]):
            weight = torch.stack([chain[position].weight.detach() for chain in chains]).clone()
            bias = None if layer.bias is None else torch.stack([chain[position].bias.detach() for chain in chains]).clone()
            layers.append((weight, bias))
        group = cls(members=members, layers=layers,
                    neg_lrs=-torch.tensor([float(sets[i].lrs[j]) for i, j in members], dtype=torch.float64),
                    sets=torch.tensor([i for i, _ in members]))
        group.exp_avg = [torch.zeros_like(p) for p in group.params]
        group.exp_avg_sq = [torch.zeros_like(p) for p in group.params]
        return group

    @property
    def params(self) -> list[Tensor]:
        return [p for weight, bias in self.layers for p in (weight, bias) if p is not None]

    def inputs(self, xs: Tensor, split: bool) -> Tensor | list[Tensor]:
        """Each candidate's batch of its own set: K tensors ``(b, d)`` or ``(K, b, d)`` (a view if one set)."""
        if split:
            return [xs[i] for i in self.sets.tolist()]
        return xs.expand(len(self.members), *xs.shape[1:]) if len(xs) == 1 else xs.index_select(0, self.sets)

    def splits(self, rows: int) -> list[bool]:
        return [_per_candidate(rows, weight.shape[1:]) for weight, _ in self.layers]

    def forward(self, xs: Tensor) -> tuple[Tensor, list[Tensor | list[Tensor]]]:
        """Logits ``(K, b, k)`` on ``xs`` ``(S, b, d)``, and each layer's input (kept for the backward pass)."""
        splits = self.splits(xs.shape[1])
        h = self.inputs(xs, splits[0])
        kept = []
        for (weight, bias), split in zip(self.layers, splits):
            kept.append(h)
            h = _forward(h, weight, bias, split)
        return _stacked(h), kept

    def gradients(self, grad: Tensor, kept: list[Tensor | list[Tensor]]) -> list[Tensor]:
        """Gradients of ``self.params`` from the logits' gradient ``(K, b, k)``."""
        splits = self.splits(grad.shape[1])
        grads: list[Tensor] = []
        for position in reversed(range(len(self.layers))):
            weight, bias = self.layers[position]
            weight_grad, bias_grad, input_grad = _backward(grad, kept[position], weight, splits[position], position > 0)
            grads = [weight_grad] + ([bias_grad] if bias is not None else []) + grads
            if input_grad is not None:
                grad = _stacked(input_grad)
        return grads

    def adam_step(self, grads: list[Tensor], step: int) -> None:
        """``torch.optim.Adam``'s single-tensor update (amsgrad off, no weight decay) of every candidate at once."""
        bias_correction1 = 1 - BETA1**step
        bias_correction2_sqrt = (1 - BETA2**step) ** 0.5
        neg_step_size = (self.neg_lrs / bias_correction1).float()  # the scalar ``value=-step_size`` in float32
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            m.lerp_(g, 1 - BETA1)
            v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(EPS)
            p.add_(neg_step_size.view(-1, *[1] * (p.dim() - 1)) * m / denom)

    def write_back(self, sets: Sequence[CandidateSet]) -> None:
        """Copy each candidate's slice into its head's parameters."""
        for k, (i, j) in enumerate(self.members):
            targets = [t for layer in head_layers(sets[i].heads[j]) for t in (layer.weight, layer.bias) if t is not None]
            for target, p in zip(targets, self.params):
                target.copy_(p[k])


def group_candidates(sets: Sequence[CandidateSet]) -> list[list[tuple[int, int]]]:
    """(set, head) indices grouped by head structure, in order of first appearance."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, candidate_set in enumerate(sets):
        for j, head in enumerate(candidate_set.heads):
            groups.setdefault(_structure(head), []).append((i, j))
    return list(groups.values())


def _train_step(groups: list[_Group], xs: Tensor, ys: Tensor, step: int) -> None:
    """One Adam step of every candidate on its set's batch: ``xs`` ``(S, b, d)``, ``ys`` ``(S, b)``."""
    outputs = [group.forward(xs) for group in groups]
    logits = torch.cat([out for out, _ in outputs])
    sets = torch.cat([group.sets for group in groups])
    targets = ys.expand(len(sets), -1) if len(ys) == 1 else ys.index_select(0, sets)
    grad = _cross_entropy_grad(logits, targets)
    for group, (_, kept), group_grad in zip(groups, outputs, grad.split([len(g.members) for g in groups])):
        group.adam_step(group.gradients(group_grad, kept), step)


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
    The heads are updated in place. After each epoch in ``checkpoints`` (counting from 1)
    ``on_checkpoint(epoch, heads)`` sees them, ``heads[i][j]`` being head ``j`` of set ``i``
    (the same objects, updated again later, like ``train_classifier``'s ``on_epoch``).
    Returns the heads.
    """
    if len({len(s.train) for s in sets}) != 1:
        raise ValueError(f"the sets' training splits differ in length ({sorted({len(s.train) for s in sets})}); train them separately")
    groups = [_Group.of(sets, members) for members in group_candidates(sets)]
    generators = [torch.Generator().manual_seed(s.seed) for s in sets]
    heads = [list(s.heads) for s in sets]
    n, step = len(sets[0].train), 0
    with intra_op_threads(1):
        for epoch in range(1, epochs + 1):
            orders = [torch.randperm(n, generator=g) for g in generators]
            for start in range(0, n, batch_size):
                indices = [order[start:start + batch_size] for order in orders]
                xs = torch.stack([s.train.x[idx] for s, idx in zip(sets, indices)])
                ys = torch.stack([s.train.y[idx] for s, idx in zip(sets, indices)])
                step += 1
                _train_step(groups, xs, ys, step)
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
    empty = TrainingData(x[:0], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    candidate_set = [CandidateSet(heads, [0.0] * len(heads), empty, 0)]
    out = np.empty((len(heads), len(x)), dtype=np.int64)
    with intra_op_threads(1):
        for members in group_candidates(candidate_set):
            group = _Group.of(candidate_set, members)
            rows = [j for _, j in members]
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size].float()
                logits, _ = group.forward(chunk[None])
                out[rows, start:start + len(chunk)] = (logits.softmax(dim=-1)[..., 1] > 0.5).numpy()
    return out
