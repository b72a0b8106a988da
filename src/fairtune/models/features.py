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
    """Run ``model`` over ``inputs`` and return what ``layer`` receives, ``(n, layer.in_features)``.

    Checks on the first batch that ``layer`` produces the model's output, since the cached
    features then determine the model's prediction entirely.
    """
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().float().cpu()))
    model.eval()
    outputs_checked = False
    total = len(inputs)
    try:
        with tqdm(total=total, desc=description, disable=not progress, leave=False, unit="sample") as bar:
            for batch in _batches(inputs, batch_size):
                output = model(batch.to(layer.weight.device))
                if not outputs_checked:
                    expected = F.linear(captured[-1].to(layer.weight), layer.weight, layer.bias).float().cpu()
                    if output.shape != expected.shape or not torch.allclose(output.float().cpu(), expected, atol=1e-5):
                        raise ModelError("the target layer is not the model's output layer; fine-tune the last linear layer or pass a model that ends in it")
                    outputs_checked = True
                bar.update(len(batch))
    finally:
        handle.remove()
    return torch.cat(captured)
