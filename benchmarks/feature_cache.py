"""Benchmark: fine-tuning on cached backbone features vs recomputing them every epoch (digits-bias).

Both modes fine-tune the same candidates (TL, f+SVD, WIN over the default grid of
``fairtune run``) for the same epochs on one seed of the digits-bias benchmark, from the same
pre-trained model, and score the validation split at the same epoch checkpoints:

* cached: backbone features of train / val / test are extracted once into a fresh on-disk
  cache (included in the time), then ``compare_on_features`` trains the heads on them;
* recompute: every epoch streams the training images through the frozen backbone again
  (and the validation images at each checkpoint), as fine-tuning without a cache would.

Each mode runs in its own process, so its peak resident memory is its own.

    python benchmarks/feature_cache.py [--seed 0] [--arch small_cnn] [--image-size 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fairtune.config import FinetuneGrid, PretrainConfig
from fairtune.data.digits import digits_task
from fairtune.experiments.run import compare_on_features
from fairtune.factorization import find_linear
from fairtune.methods import get_method
from fairtune.models import cached_split_features, extract_features, pretrained_vision
from fairtune.models.vision import LabelledSplit
from fairtune.training import TrainingData

METHODS = ("tl", "svd", "win")


def _setup(args: argparse.Namespace):
    task = digits_task(seed=args.seed, image_size=args.image_size)
    model = pretrained_vision(task, PretrainConfig(), arch=args.arch, seed=args.seed, cache_dir=args.model_cache)
    return task, model, find_linear(model)[1]


def run_cached(args: argparse.Namespace) -> None:
    task, model, layer = _setup(args)
    grid = FinetuneGrid()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as features_dir:
        splits = {k: v for k, v in task.splits().items() if k != "source"}
        features = cached_split_features(model, layer, splits, cache_dir=features_dir)
        compare_on_features(layer, features, METHODS, grid, seed=args.seed)
    _report("cached", time.perf_counter() - started)


def _features(model, layer, inputs) -> torch.Tensor:
    return extract_features(model, layer, inputs, batch_size=256)


def run_recompute(args: argparse.Namespace) -> None:
    task, model, layer = _setup(args)
    grid = FinetuneGrid()
    checkpoints = set(grid.epochs)
    started = time.perf_counter()
    for name in METHODS:
        method = get_method(name)
        train_features = TrainingData.from_arrays(_features(model, layer, task.train.inputs), task.train.y, task.train.s)
        context = method.prepare(layer, train_features, grid)  # WIN's Fisher needs one pass
        for params in method.candidates(layer, grid):
            head = method.initial_head(layer, context, params).requires_grad_(True)
            optimizer = torch.optim.Adam(head.parameters(), lr=params["lr"])
            loader = DataLoader(LabelledSplit(task.train), batch_size=grid.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(args.seed))
            for epoch in range(1, max(checkpoints) + 1):
                head.train()
                for images, y, _s in loader:
                    loss = F.cross_entropy(head(_features(model, layer, images)), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if epoch in checkpoints:
                    head.eval()
                    with torch.no_grad():
                        head(_features(model, layer, task.val.inputs)).argmax(dim=1)
    _report("recompute", time.perf_counter() - started)


def _report(mode: str, seconds: float) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--mode", choices=["cached", "recompute"], help=argparse.SUPPRESS)
    parser.add_argument("--model-cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        {"cached": run_cached, "recompute": run_recompute}[args.mode](args)
        return
    with tempfile.TemporaryDirectory() as model_cache:
        args.model_cache = model_cache
        _setup(args)  # pre-train once, outside the timed runs
        common = [sys.executable, str(Path(__file__).resolve()), "--seed", str(args.seed), "--arch", args.arch,
                  "--image-size", str(args.image_size), "--model-cache", model_cache]
        results = {}
        for mode in ("cached", "recompute"):
            output = subprocess.run([*common, "--mode", mode], check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
    print(f"digits-bias, seed {args.seed}, {args.arch} at {args.image_size}px, methods {','.join(METHODS)}, default grid; torch threads {torch.get_num_threads()}")
    for mode, result in results.items():
        print(f"{mode:>9}: {result['seconds']:8.2f} s   peak RSS {result['peak_rss_mb']:7.1f} MB")
    print(f"ratio recompute / cached: {results['recompute']['seconds'] / results['cached']['seconds']:.1f}x")


if __name__ == "__main__":
    main()
