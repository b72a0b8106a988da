"""Backbone features: the inputs of the target linear layer, computed once per split.

Everything before the target layer is frozen, so fine-tuning can train the head on these
features instead of running the backbone every epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import ModelError


def _batches(inputs: Tensor | Dataset, batch_size: int, num_workers: int = 0):
    if isinstance(inputs, Tensor):
        for start in range(0, len(inputs), batch_size):
            yield inputs[start:start + batch_size]
    else:
        for batch in DataLoader(inputs, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            yield batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def extract_features(
    model: nn.Module,
    layer: nn.Linear,
    inputs: Tensor | Dataset,
    *,
    batch_size: int = 1024,
    progress: bool = False,
    description: str = "features",
) -> Tensor:
    """Run ``model`` over ``inputs`` and return what ``layer`` receives, ``(n, layer.in_features)`` float32 on the CPU.

    The inputs are streamed in batches, and each batch's features are written into the result
    as it is computed, so that neither the activations of all rows nor a second copy of the
    features (a list of batches, then their concatenation) is ever held. Checks on the first
    batch that ``layer`` produces the model's output, since the cached features then determine
    the model's prediction entirely.
    """
    out = torch.empty(len(inputs), layer.in_features)
    filled = [0]

    def write(_module: nn.Module, args: tuple[Tensor, ...], _output: Tensor) -> None:
        rows = args[0].detach()
        out[filled[0]:filled[0] + len(rows)] = rows
        filled[0] += len(rows)

    handle = layer.register_forward_hook(write)
    model.eval()
    outputs_checked = False
    try:
        with tqdm(total=len(inputs), desc=description, disable=not progress, leave=False, unit="sample") as bar:
            for batch in _batches(inputs, batch_size):
                start = filled[0]
                output = model(batch.to(layer.weight.device))
                if not outputs_checked:
                    _check_output_layer(output, out[start:filled[0]], layer)
                    outputs_checked = True
                bar.update(len(batch))
    finally:
        handle.remove()
    return out


def _check_output_layer(output: Tensor, features: Tensor, layer: nn.Linear) -> None:
    """Refuse a ``layer`` that is not the model's output layer: its features would not determine the prediction."""
    expected = F.linear(features.to(layer.weight), layer.weight, layer.bias).float().cpu()
    if output.shape != expected.shape or not torch.allclose(output.float().cpu(), expected, atol=1e-5):
        raise ModelError("the target layer is not the model's output layer; fine-tune the last linear layer or pass a model that ends in it")
