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
  dimension is 1 (rank 1): there, ``bmm`` into an output whose items are not contiguous makes
  torch call, item by item, the very ``addmm`` that ``F.linear`` calls; tiny products and
  batches of one row run candidate by candidate from Python (:func:`_mode`). A seed's batch
  enters the first layer as a view expanded over its candidates, not as copies;
* the gradients are computed without autograd, by the very kernels autograd runs for one head
  (cross-entropy with ``reduction="mean"`` per candidate, then the products of ``F.linear``);
  the cross-entropy's ``log_softmax`` kernels run over class-major logits, whose kernel does
  the same arithmetic for few classes (:data:`CLASS_MAJOR_CLASSES`), ten times faster;
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

import enum
import functools
import math
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


#: Below this many multiply-adds per matrix, torch's ``bmm`` runs its own loop instead of the BLAS gemm.
TINY_PRODUCT = 400


class _Mode(enum.Enum):
    """How one layer's product runs for a block of candidates (:func:`_mode`)."""

    LOOP = "loop"  # candidate by candidate from Python: the very ``addmm`` / ``mm`` calls of ``F.linear`` and autograd
    ITEMS = "items"  # one ``bmm`` into an output that is not contiguous: torch calls that ``addmm`` item by item
    BATCH = "batch"  # one ``bmm`` into a contiguous output: BLAS's batched gemm


def _mode(rows: int, weight_shape: tuple[int, ...] | torch.Size, count: int) -> _Mode:
    """How ``F.linear`` on ``rows`` rows with this ``(out, in)`` weight runs for a block of ``count`` candidates.

    BATCH: ``bmm`` runs, per candidate, the BLAS gemm that ``F.linear`` runs on one head, except
    (a) below :data:`TINY_PRODUCT` multiply-adds per matrix (its own loop) and (b) where a
    dimension is 1 (``F.linear``'s gemm then runs a matrix-vector kernel). ITEMS, for (b):
    ``bmm`` into an output that is not contiguous calls ``F.linear``'s ``addmm`` item by item.
    LOOP, from Python: (a); a batch of one row (whose gradient autograd lays out column-major);
    (b) for a lone candidate (its output is contiguous, however laid out). The forward product
    and both backward products have the same ``rows · out · in``.
    """
    out_features, in_features = weight_shape
    if rows == 1 or rows * out_features * in_features < TINY_PRODUCT:
        return _Mode.LOOP
    if 1 in (out_features, in_features):
        return _Mode.ITEMS if count > 1 else _Mode.LOOP
    return _Mode.BATCH


#: Floats per 64 bytes: torch's CPU allocator aligns to 64 bytes, and so must every candidate's slice.
ALIGN = 16

#: ``(K, *item)`` and whether the K items lie apart (a gap between any two, so that the view is never contiguous).
Layout = tuple[tuple[int, ...], bool]


def _item_floats(numel: int, apart: bool) -> int:
    """Floats from one item to the next: ``numel`` rounded up to 64 bytes, and 64 more if the items must lie apart but would touch."""
    padded = -(-numel // ALIGN) * ALIGN
    return padded + ALIGN if apart and padded == numel else padded


def _layout_floats(layout: Layout) -> int:
    (count, *item), apart = layout
    return count * _item_floats(math.prod(item), apart)


def _aligned_views(buffer: Tensor, layouts: Sequence[Layout]) -> list[Tensor]:
    """Views of a 64-byte aligned ``buffer``, one per layout, each of its K items starting on 64 bytes.

    BLAS's matrix-vector kernels (the ITEMS and LOOP products) sum in an order that depends on the
    addresses' alignment; the serial loop hands them freshly allocated, aligned tensors.
    """
    views, offset = [], 0
    for (count, *item), apart in layouts:
        numel = math.prod(item)
        step = _item_floats(numel, apart)
        views.append(buffer[offset:offset + count * step].view(count, step)[:, :numel].view(count, *item))
        offset += count * step
    return views


def _aligned_buffer(layouts: Sequence[Layout]) -> Tensor:
    return torch.zeros(sum(_layout_floats(layout) for layout in layouts))


def _aligned(shape: tuple[int, ...], apart: bool = False) -> Tensor:
    """A new ``(K, *item)`` tensor laid out as :func:`_aligned_views` lays it out (contents undefined)."""
    layout = (shape, apart)
    (out,) = _aligned_views(torch.empty(_layout_floats(layout)), [layout])
    return out


def _aligned_stack(tensors: Sequence[Tensor]) -> Tensor:
    """``torch.stack(tensors)`` with every item 64-byte aligned."""
    return _aligned((len(tensors), *tensors[0].shape)).copy_(torch.stack(list(tensors)))


#: Inputs of a layer's candidates: one tensor ``(K, b, d)``, or blocks ``(candidates, (n, b, d))`` (the first
#: layer's: each set's batch, expanded over its candidates).
Inputs = Tensor | list[tuple[slice, Tensor]]


def _blocks(h: Inputs) -> list[tuple[slice, Tensor]]:
    return [(slice(None), h)] if isinstance(h, Tensor) else h


def _column_major(x: Tensor) -> bool:
    return x.stride(0) == 1 and x.stride(1) == x.size(0)


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

    @property
    def apart(self) -> bool:
        """Whether its products can run ITEMS (a dimension of 1): its weights, gradients and outputs then lie apart."""
        return 1 in self.weight.shape[1:]

    def mode(self, rows: int, count: int | None = None) -> _Mode:
        return _mode(rows, self.weight.shape[1:], len(self.weights) if count is None else count)

    def bind(self, weight: Tensor, bias: Tensor | None, weight_grad: Tensor, bias_grad: Tensor | None) -> None:
        """Use these tensors (views of the optimizer's buffers) from now on."""
        self.weight, self.bias, self.weight_grad, self.bias_grad = weight, bias, weight_grad, bias_grad
        self.__post_init__()

    def output(self, rows: int) -> Tensor:
        """A new output ``(K, rows, out)``: contiguous for BATCH (bmm's batched gemm), else aligned items (apart for ITEMS)."""
        shape = (len(self.weights), rows, self.weight.shape[1])
        return torch.empty(shape) if self.mode(rows) is _Mode.BATCH else _aligned(shape, self.apart)

    def forward(self, h: Inputs, rows: int, out: Tensor | None = None) -> Tensor:
        """``F.linear`` of every candidate, into ``out`` (default: :meth:`output`).

        BATCH / ITEMS: ``baddbmm`` / ``bmm`` per block of inputs. LOOP: per candidate the
        ``addmm(bias, x, weight.t())`` or ``mm(x, weight.t())`` that ``F.linear`` calls.
        """
        out = self.output(rows) if out is None else out
        for candidates, x in _blocks(h):
            if self.mode(rows, x.shape[0]) is _Mode.LOOP:
                for k, item in zip(range(len(self.weights))[candidates], x.unbind(0)):
                    if self.biases is None:
                        torch.mm(item, self.transposed[k], out=out[k])
                    else:
                        torch.addmm(self.biases[k], item, self.transposed[k], out=out[k])
            elif self.bias is None:
                torch.bmm(x, self.weight[candidates].transpose(1, 2), out=out[candidates])
            else:
                torch.baddbmm(self.bias[candidates].unsqueeze(1), x, self.weight[candidates].transpose(1, 2), out=out[candidates])
        return out

    def backward(self, grad: Tensor | list[Tensor], h: Inputs, rows: int, need_input: bool) -> Tensor | list[Tensor] | None:
        """Write this layer's gradients from its output's gradient ``(K, b, out)`` (or one per candidate); return its input's
        gradient if needed (one per candidate where the layer runs LOOP).

        The products are those autograd runs for ``F.linear`` on one head (``mm_mat2_backward`` /
        ``mm_mat1_backward``): ``grad.t().mm(x)`` (``weight.t()`` is column-major) and
        ``grad.mm(weight)``, or ``weight.t().mm(grad.t()).t()`` where ``x`` is column-major (one
        row of one feature). The orientation picks the BLAS call, and so the rounding.
        """
        if not isinstance(grad, Tensor) and self.mode(rows) is not _Mode.LOOP:
            grad = _aligned_stack(grad)  # a LOOP layer's input gradients, into this layer's bmm
        if self.bias is not None:
            torch.sum(grad if isinstance(grad, Tensor) else torch.stack(grad), 1, out=self.bias_grad)
        for candidates, x in _blocks(h):
            if self.mode(rows, x.shape[0]) is _Mode.LOOP:
                for k, item in zip(range(len(self.weights))[candidates], x.unbind(0)):
                    torch.mm(grad[k].t(), item, out=self.weight_grads[k])
            else:
                torch.bmm(grad[candidates].transpose(1, 2), x, out=self.weight_grad[candidates])
        if not need_input:
            return None
        if self.mode(rows) is _Mode.LOOP:
            return [w.t().mm(g.t()).t() if _column_major(x) else g.mm(w) for g, x, w in zip(grad, h.unbind(0), self.weights)]
        if self.apart:
            return torch.bmm(grad, self.weight, out=_aligned((len(self.weights), rows, self.weight.shape[2]), apart=True))
        return grad.bmm(self.weight)


@dataclass
class _Group:
    """Candidates of equal structure, one :class:`_Layer` per linear map of the head."""

    members: list[tuple[int, int]]  # (set index, head index) of each candidate, in order of sets
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
    def params(self) -> list[tuple[Tensor, bool]]:
        """Every stacked parameter, and whether its items lie apart."""
        return [(p, layer.apart) for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]

    @functools.cached_property
    def set_blocks(self) -> list[tuple[slice, int]]:
        """The candidates of each set: consecutive, as ``members`` lists them."""
        sets, blocks, start = self.sets.tolist(), [], 0
        for end in range(1, len(sets) + 1):
            if end == len(sets) or sets[end] != sets[start]:
                blocks.append((slice(start, end), sets[start]))
                start = end
        return blocks

    def inputs(self, per_set: Sequence[Tensor]) -> list[tuple[slice, Tensor]]:
        """Blocks of candidates and their sets' batches ``per_set[i]`` ``(b, d)``, expanded over them (views, not copies)."""
        return [(candidates, per_set[i].expand(candidates.stop - candidates.start, -1, -1)) for candidates, i in self.set_blocks]

    def forward(self, per_set: Sequence[Tensor], out: Tensor) -> list[Inputs]:
        """Logits on the sets' batches ``per_set[i]`` ``(b, d)`` into ``out`` ``(K, b, k)``; returns each layer's input."""
        rows = per_set[0].shape[0]
        h: Inputs = self.inputs(per_set)
        kept = []
        for position, layer in enumerate(self.layers):
            kept.append(h)
            h = layer.forward(h, rows, out=out if position == len(self.layers) - 1 else None)
        return kept

    def backward(self, grad: Tensor, kept: list[Inputs]) -> None:
        """Every layer's gradients from the logits' gradient ``grad`` ``(K, b, k)``."""
        rows = grad.shape[1]
        current: Tensor | list[Tensor] | None = grad
        for position in reversed(range(len(self.layers))):
            current = self.layers[position].backward(current, kept[position], rows, position > 0)

    def write_back(self, sets: Sequence[CandidateSet]) -> None:
        """Copy each candidate's slice into its head's parameters; the head in eval mode, as ``train_classifier`` leaves it."""
        for k, (i, j) in enumerate(self.members):
            sets[i].heads[j].eval()
            targets = [t for layer in head_layers(sets[i].heads[j]) for t in (layer.weight, layer.bias) if t is not None]
            for target, (p, _) in zip(targets, self.params):
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
        params = [param for group in groups for param in group.params]
        layouts = [(tuple(p.shape), apart) for p, apart in params]
        self.flat, self.grad = _aligned_buffer(layouts), _aligned_buffer(layouts)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.neg_lrs = -torch.cat([group.lrs.repeat_interleave(_item_floats(p[0].numel(), apart)) for group in groups
                                   for p, apart in group.params])
        param_views, grad_views = _aligned_views(self.flat, layouts), _aligned_views(self.grad, layouts)
        for view, (p, _) in zip(param_views, params):
            view.copy_(p)
        param_views, grad_views = iter(param_views), iter(grad_views)
        for group in groups:
            for layer in group.layers:
                has_bias = layer.bias is not None
                layer.bind(next(param_views), next(param_views) if has_bias else None, next(grad_views), next(grad_views) if has_bias else None)
        self.steps = 0
        # the step's temporaries, allocated once
        self.step_size64, self.step_size = torch.empty_like(self.neg_lrs), torch.empty_like(self.flat)
        self.denom, self.update = torch.empty_like(self.flat), torch.empty_like(self.flat)

    def step(self) -> None:
        """One step with the gradients the layers wrote into ``self.grad``."""
        self.steps += 1
        bias_correction1 = 1 - BETA1**self.steps
        bias_correction2_sqrt = (1 - BETA2**self.steps) ** 0.5
        self.step_size.copy_(torch.div(self.neg_lrs, bias_correction1, out=self.step_size64))  # -lr / (1 - β1^t), then float32
        self.exp_avg.lerp_(self.grad, 1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(self.grad, self.grad, value=1 - BETA2)
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bias_correction2_sqrt).add_(EPS)
        self.flat.add_(torch.mul(self.step_size, self.exp_avg, out=self.update).div_(self.denom))


#: Up to this many classes, ``log_softmax`` over the classes of class-major logits gives what it gives over the
#: last axis of row-major ones: both sum the exponentials one class after the other while the classes are fewer
#: than a SIMD vector's floats (4 on ARM's NEON, 8 or 16 on x86); the class-major kernel is 10x faster for 2.
CLASS_MAJOR_CLASSES = 3
#: Class-major columns come in multiples of this: the kernel takes the last ``columns % vector width`` columns
#: with the C library's ``exp`` instead of the vectorized one (whose rounding the row-major kernel has).
COLUMN_MULTIPLE = 64


class _Workspace:
    """Buffers for batches of ``rows`` rows: every group's logits and their gradient (laid out as its last layer needs),
    and, for the cross-entropy, the logits class-major."""

    def __init__(self, groups: list[_Group], rows: int, classes: int) -> None:
        self.logits = [group.layers[-1].output(rows) for group in groups]
        self.grads = [group.layers[-1].output(rows) for group in groups]
        self.sets = torch.cat([group.sets for group in groups])
        self.class_major = classes <= CLASS_MAJOR_CLASSES
        columns = len(self.sets) * rows
        if self.class_major:
            padded = -(-columns // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
            self.columns = torch.zeros(classes, padded)  # the padding stays 0: finite logits, gradients not used
            self.blocks = [block.view(classes, *logits.shape[:2]) for block, logits in
                           zip(self.columns[:, :columns].split([len(g.members) * rows for g in groups], 1), self.logits)]
            self.targets = torch.zeros(padded, dtype=torch.long)
            # nll_loss_backward's gradient (-1/b at the target, 1/b divided in float32) of each target: a column of this
            self.nll_table = torch.zeros(classes, classes).fill_diagonal_(-(torch.ones(()) / rows).item())
        else:
            self.nll_grad_output = torch.ones(columns) / rows  # the mean's backward: 1/b, divided in float32

    def cross_entropy_grad(self, targets: Tensor) -> None:
        """d/dlogits of each candidate's mean cross-entropy over its batch (``targets`` ``(K, b)``), into ``self.grads``.

        The kernels autograd runs for ``F.cross_entropy(logits_k, y_k)``: ``log_softmax``, then
        ``nll_loss_backward`` (``-1/b`` at each target) and ``_log_softmax_backward_data``, on class-major
        logits (over their first axis: see :data:`CLASS_MAJOR_CLASSES`) where the classes are few.
        """
        if not self.class_major:
            self._row_major_grad(targets)
            return
        for block, logits in zip(self.blocks, self.logits):
            block.copy_(logits.permute(2, 0, 1))
        log_probs = torch._log_softmax(self.columns, 0, False)
        self.targets[:targets.numel()].copy_(targets.reshape(-1))
        nll_grad = self.nll_table.index_select(1, self.targets)
        grad = torch._log_softmax_backward_data(nll_grad, log_probs, 0, log_probs.dtype)
        columns = grad[:, :targets.numel()]
        for out, block in zip(self.grads, columns.split([len(g) * g.shape[1] for g in self.grads], 1)):
            out.copy_(block.view(-1, *out.shape[:2]).permute(1, 2, 0))

    def _row_major_grad(self, targets: Tensor) -> None:
        """:meth:`cross_entropy_grad` over the last axis of row-major logits, for many classes."""
        flat = torch.cat([logits.reshape(-1, logits.shape[-1]) for logits in self.logits])
        log_probs = torch._log_softmax(flat, 1, False)
        nll_grad = torch.ops.aten.nll_loss_backward(self.nll_grad_output, log_probs, targets.reshape(-1), None, 0, -100, torch.ones(()))
        grad = torch._log_softmax_backward_data(nll_grad, log_probs, 1, flat.dtype)
        for out, block in zip(self.grads, grad.split([g.shape[0] * g.shape[1] for g in self.grads])):
            out.copy_(block.view(out.shape))


def group_candidates(sets: Sequence[CandidateSet]) -> list[list[tuple[int, int]]]:
    """(set, head) indices grouped by head structure, in order of first appearance."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, candidate_set in enumerate(sets):
        for j, head in enumerate(candidate_set.heads):
            groups.setdefault(_structure(head), []).append((i, j))
    return list(groups.values())


def _train_step(groups: list[_Group], optimizer: _FlatAdam, workspace: _Workspace, per_set: list[Tensor], ys: Tensor) -> None:
    """One Adam step of every candidate on its set's batch: ``per_set[i]`` ``(b, d)``, ``ys`` ``(S, b)``."""
    kept = [group.forward(per_set, logits) for group, logits in zip(groups, workspace.logits)]
    workspace.cross_entropy_grad(ys.expand(len(workspace.sets), -1) if len(ys) == 1 else ys.index_select(0, workspace.sets))
    for group, grad, group_kept in zip(groups, workspace.grads, kept):
        group.backward(grad, group_kept)
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
                logits = group.layers[-1].output(len(chunk))
                group.forward([chunk], logits)
                out[rows, start:start + len(chunk)] = (logits.softmax(dim=-1)[..., 1] > 0.5).numpy()
    return out
