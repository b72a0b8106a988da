"""The one training loop: mini-batch Adam on cross-entropy, optionally plus a penalty.

Used for pre-training (whole model on inputs) and for fine-tuning (a head on cached
backbone features). Seeded: the same seed gives the same batches and the same result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import ConfigError

#: ``penalty(logits, y, s, module) -> scalar`` is added to the cross-entropy of each batch.
Penalty = Callable[[Tensor, Tensor, Tensor, nn.Module], Tensor]


@dataclass(frozen=True)
class TrainingData:
    """In-memory tensors for training: inputs ``(n, d)``, labels and groups ``(n,)`` int64."""

    x: Tensor
    y: Tensor
    s: Tensor

    @classmethod
    def from_arrays(cls, x: Tensor, y: np.ndarray, s: np.ndarray) -> TrainingData:
        return cls(x.float(), torch.tensor(np.asarray(y), dtype=torch.long), torch.tensor(np.asarray(s), dtype=torch.long))

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> TrainingData:
        """The same data on ``device``."""
        return TrainingData(self.x.to(device), self.y.to(device), self.s.to(device))


BAD_DEVICE = "device {device!r} is not available: {reason}"


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """``device`` checked to be usable here, or (None) the device of ``model``'s first parameter, else cpu."""
    if device is None:
        return next((p.device for p in model.parameters()), torch.device("cpu")) if model is not None else torch.device("cpu")
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(BAD_DEVICE.format(device=str(device), reason=str(exc).splitlines()[0])) from None
    return resolved


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it as it is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One thread in the block for torch and for the BLAS and OpenMP pools of NumPy, SciPy and scikit-learn.

    Why: a result then does not depend on where it ran, and work in several processes does not
    oversubscribe the cores. OpenBLAS's threads wait for each other by spinning: on a 2-core machine
    with another process busy, fairlearn's ExponentiatedGradient (hundreds of small matrix-vector
    products) ran 5-8x slower with two BLAS threads than with one, with the same results.
    """
    with intra_op_threads(1), threadpool_limits(1):
        yield


def train_classifier(
    module: nn.Module,
    data: TrainingData | DataLoader,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    seed: int = 0,
    weight_decay: float = 0.0,
    penalty: Penalty | None = None,
    progress: bool = False,
    description: str = "training",
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    threads: int | None = 1,
) -> nn.Module:
    """Train the parameters of ``module`` that require grad, in place; return ``module``.

    ``data`` is in memory (:class:`TrainingData`: each epoch visits it once in a random order
    seeded by ``seed``, in batches of ``batch_size``) or a ``DataLoader`` of ``(x, y, s)``
    batches that streams it (e.g. images; its own generator seeds the order). The loss of a batch is
    cross-entropy(module(x), y) + penalty(logits, y, s, module). ``on_epoch(epoch, module)``
    is called (in eval mode) after each epoch, counting from 1.

    ``threads`` is torch's intra-op thread count while training. The default, 1, suits the
    small heads and MLPs fairtune trains: their matmuls are too small to gain from threads,
    and thread synchronisation made a 32x2 head train 13x slower on a loaded 2-core machine
    (8 s vs 105 s for 960 Adam steps). ``None`` leaves torch's setting (e.g. for a CNN).
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the module has no trainable parameter")
    optimizer = optimizer_for(parameters, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    with intra_op_threads(threads):
        _train_epochs(module, data, optimizer, generator, epochs, batch_size, penalty, progress, description, on_epoch)
    return module


#: Floats per 64 bytes: each parameter's slice of :class:`Adam`'s flat buffers starts where a fresh tensor would.
ALIGN = 16


class Adam:
    """``torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)`` (amsgrad, maximize, foreach and fused
    off, as on the CPU) for CPU parameters of one dtype: the same arithmetic, element by element, so the same numbers.

    Why: for the small models fairtune trains, ``torch.optim.Adam.step``'s bookkeeping (its hooks, grad-mode and
    profiler wrappers, state look-ups, the step count as a tensor read back with ``.item()``) and its seven calls
    per parameter cost more than the arithmetic, and its first use in a process imports ``torch._dynamo`` (1-3 s).
    Here the moments of every parameter are slices of flat buffers, each starting on 64 bytes like a tensor of
    its own, and the moment updates run once over them (elementwise operations give an element the same bits
    wherever it lies: ``tests/test_training.py`` compares with ``torch.optim.Adam`` using ``torch.equal``); a
    step where some parameter has no gradient (torch skips it and its step count) runs parameter by parameter.
    """

    def __init__(self, parameters: list[Tensor], *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        self.parameters, self.lr, self.weight_decay, self.betas, self.eps = parameters, lr, weight_decay, betas, eps
        self.steps = [0] * len(parameters)  # per parameter, as torch counts them
        sizes = [-(-p.numel() // ALIGN) * ALIGN for p in parameters]
        self.grad, self.exp_avg, self.exp_avg_sq, self.denom = (
            torch.zeros(sum(sizes), dtype=parameters[0].dtype) for _ in range(4))
        starts = np.cumsum([0, *sizes[:-1]]).tolist()

        def views(flat: Tensor) -> list[Tensor]:
            return [flat[start:start + p.numel()].view(p.shape) for start, p in zip(starts, parameters)]

        self.grads, self.exp_avgs = views(self.grad), views(self.exp_avg)
        self.exp_avg_sqs, self.denoms = views(self.exp_avg_sq), views(self.denom)

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """torch's ``_single_tensor_adam`` for each parameter with a gradient."""
        grads = [param.grad for param in self.parameters]
        if any(grad is None for grad in grads) or len(set(self.steps)) > 1:
            for i, grad in enumerate(grads):
                if grad is not None:
                    self._step_one(i, grad)
            return
        beta1, beta2 = self.betas
        for param, grad, flat in zip(self.parameters, grads, self.grads):
            if self.weight_decay != 0:
                torch.add(grad, param, alpha=self.weight_decay, out=flat)
            else:
                flat.copy_(grad)
        self.steps = [count + 1 for count in self.steps]
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        step_size, bias_correction2_sqrt = self._scalars(self.steps[0])
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bias_correction2_sqrt).add_(self.eps)
        for param, exp_avg, denom in zip(self.parameters, self.exp_avgs, self.denoms):
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def _step_one(self, i: int, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        param, exp_avg, exp_avg_sq = self.parameters[i], self.exp_avgs[i], self.exp_avg_sqs[i]
        self.steps[i] += 1
        if self.weight_decay != 0:
            grad = grad.add(param, alpha=self.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size, bias_correction2_sqrt = self._scalars(self.steps[i])
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)

    def _scalars(self, count: int) -> tuple[float, float]:
        """Step size and ``sqrt(1 - β2^t)``, computed in Python floats as torch computes them."""
        beta1, beta2 = self.betas
        step = float(count)  # torch reads its float32 step tensor back as a Python float
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        return self.lr / bias_correction1, bias_correction2**0.5


def optimizer_for(parameters: list[Tensor], *, lr: float, weight_decay: float) -> Adam | torch.optim.Adam:
    """:class:`Adam` for CPU parameters of one dtype (its flat buffers); ``torch.optim.Adam`` elsewhere, where torch
    picks another update (multi-tensor on a GPU)."""
    if all(p.device.type == "cpu" for p in parameters) and len({p.dtype for p in parameters}) == 1:
        return Adam(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def _batches(data: TrainingData, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch of ``data`` in a seeded random order (``index_select``: the rows of ``x[idx]``, 3x faster)."""
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        yield data.x.index_select(0, idx), data.y.index_select(0, idx), data.s.index_select(0, idx)


class AutogradOnly(Exception):
    """A batch whose penalty gradient only autograd forms (tied or NaN group means): its step runs through autograd."""


@dataclass
class ExplicitStep:
    """The gradients of a ReLU MLP's cross-entropy, plus a penalty that gives its own (``penalty.logits_grad``), without
    autograd: the very operations autograd runs for that graph, one after the other, so the same numbers.

    Why: for the small MLPs fairtune trains, autograd's recording and replaying of some thirty nodes per step (a
    fairness penalty alone adds about twenty) costs more than the arithmetic; computed directly, a step of
    Retrain+EO or of fair pre-training costs 20-30% less on Adult. The operations, for ``F.linear`` (``addmm``),
    ReLU and ``F.cross_entropy``: ``nll_loss_backward`` and ``_log_softmax_backward_data``; per layer
    ``grad.t().mm(input)`` (the weight is used transposed, column-major), ``grad.sum(0)``, ``grad.mm(weight)`` and
    ``threshold_backward``; the logits' two gradients added. ``tests/test_training.py`` compares the weights with
    autograd's with ``torch.equal``.
    """

    layers: list[nn.Linear]
    penalty: Any = None

    @classmethod
    def of(cls, module: nn.Module, penalty: Penalty | None) -> ExplicitStep | None:
        """The step for ``module`` if it is a ``Sequential`` of ``Linear`` (with bias) and ``ReLU`` ending in a ``Linear``,
        without hooks (the step calls no module), every parameter trained, float32 on the CPU, and ``penalty`` is None
        or gives its gradient; else None."""
        children = list(module.children()) if isinstance(module, nn.Sequential) else []
        layers = children[::2]
        linears = all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in layers)
        relus = all(type(relu) is nn.ReLU and not relu.inplace for relu in children[1::2])
        if not children or len(children) % 2 == 0 or not linears or not relus:
            return None
        if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in module.modules()):
            return None
        parameters = list(module.parameters())
        if not all(p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu" for p in parameters):
            return None
        if penalty is not None and not hasattr(penalty, "logits_grad"):
            return None
        return cls(layers, penalty)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, s: Tensor) -> bool:
        """Set every parameter's ``.grad`` for the batch; False (nothing set) where the penalty needs autograd."""
        inputs, h = [], x
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            h = torch.addmm(layer.bias, h, layer.weight.t())
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        try:
            penalty_grad = None if self.penalty is None else self.penalty.logits_grad(h, y, s)
        except AutogradOnly:
            return False
        log_probs = torch._log_softmax(h, 1, False)
        nll_grad = torch.ops.aten.nll_loss_backward(h.new_ones(()), log_probs, y, None, 1, -100, h.new_tensor(float(len(y))))
        grad = torch._log_softmax_backward_data(nll_grad, log_probs, 1, h.dtype)
        if penalty_grad is not None:
            grad = grad + penalty_grad
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            layer.weight.grad, layer.bias.grad = grad.t().mm(inputs[i]), grad.sum(0)
            if i > 0:
                grad = torch.ops.aten.threshold_backward(grad.mm(layer.weight), inputs[i], 0)
        return True


def _train_epochs(
    module: nn.Module,
    data: TrainingData | DataLoader,
    optimizer: Adam | torch.optim.Adam,
    generator: torch.Generator,
    epochs: int,
    batch_size: int,
    penalty: Penalty | None,
    progress: bool,
    description: str,
    on_epoch: Callable[[int, nn.Module], None] | None,
) -> None:
    explicit = None if isinstance(data, DataLoader) else ExplicitStep.of(module, penalty)
    for epoch in tqdm(range(1, epochs + 1), desc=description, disable=not progress, leave=False):
        module.train()
        for x, y, s in data if isinstance(data, DataLoader) else _batches(data, batch_size, generator):
            optimizer.zero_grad()
            if explicit is None or not explicit(x, y, s):
                logits = module(x)
                loss = F.cross_entropy(logits, y)
                if penalty is not None:
                    loss = loss + penalty(logits, y, s, module)
                loss.backward()
            optimizer.step()
        module.eval()
        if on_epoch is not None:
            on_epoch(epoch, module)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 for a model without any)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@torch.no_grad()
def predict_proba(module: nn.Module, x: Tensor, batch_size: int = 8192) -> np.ndarray:
    """P(Y=1 | x) from a two-class head, ``(n,)``."""
    module.eval()
    dtype = model_dtype(module)
    chunks = [module(x[i:i + batch_size].to(dtype)).softmax(dim=1)[:, 1] for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).cpu().numpy()


def predict(module: nn.Module, x: Tensor) -> np.ndarray:
    """Predicted labels Ŷ = argmax of the two logits, int64 ``(n,)``."""
    return (predict_proba(module, x) > 0.5).astype(np.int64)
