"""Benchmark: fine-tuning on cached backbone features vs recomputing them every epoch (digits-bias).

Both modes fine-tune the same candidates (TL, f+SVD, WIN over the default grid of
``fairtune run``) for the same epochs on one seed of the digits-bias benchmark, from the same
pre-trained model, and score the validation split at the same epoch checkpoints:

* cached: backbone features of train / val / test are extracted once into a fresh on-disk
  cache (included in the time), then ``compare_on_features`` trains the heads on them;
* recompute: every epoch streams the training images through the frozen backbone again
  (and the validation images at each checkpoint), as fine-tuning without a cache would.

Each mode runs in its own process, so its peak resident memory is its own. A third
measurement extracts features of the digits tiled ``--repeat`` times (at ``--memory-size``
pixels) into the cache, once with 1 copy and once with ``--repeat`` copies, to show that peak
memory does not grow with the number of images (they are streamed; the features go straight
into a memory-mapped file).

    python benchmarks/feature_cache.py [--seed 0] [--arch small_cnn] [--image-size 8] [--repeat 20]
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
from fairtune.data.digits import PixelImages, digits_task
from fairtune.experiments import compare_on_features
from fairtune.factorization import find_linear
from fairtune.methods import build_method
from fairtune.models import (
    cached_features,
    cached_split_features,
    extract_features,
    pretrained_vision,
    vision_model,
)
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
        method = build_method(name, grid)
        train_features = TrainingData.from_arrays(_features(model, layer, task.train.inputs), task.train.y, task.train.s)
        context = method.prepare(layer, train_features, grid)  # WIN's Fisher needs one pass
        for params in method.candidates(layer, grid):
            head = method.initial_head(layer, context, params).requires_grad_(True)
            optimizer = torch.optim.Adam(head.parameters(), lr=params.lr)
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


def run_extract(args: argparse.Namespace) -> None:
    """Features of all digits tiled ``args.copies`` times, at ``args.memory_size`` pixels."""
    torch.manual_seed(args.seed)
    model = vision_model(args.arch).eval()
    layer = find_linear(model)[1]
    digits = digits_task(seed=args.seed, image_size=args.memory_size)
    images = torch.cat([split.inputs.images for split in digits.splits().values()]).repeat(args.copies, 1, 1, 1)
    dataset = PixelImages(images, digits.test.inputs.transform)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as features_dir:
        features = cached_features(model, layer, dataset, cache_dir=features_dir)
        features.sum()  # touch every cached value
    as_tensor_mb = len(dataset) * dataset[0].numel() * 4 / 2**20
    _report(f"extract x{args.copies}", time.perf_counter() - started,
            images=len(dataset), all_images_in_memory_mb=round(as_tensor_mb, 1))


def _report(mode: str, seconds: float, **extra: object) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1), **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20, help="copies of the digits for the memory check")
    parser.add_argument("--memory-size", type=int, default=32, help="image side for the memory check")
    parser.add_argument("--mode", choices=["cached", "recompute", "extract"], help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--model-cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        {"cached": run_cached, "recompute": run_recompute, "extract": run_extract}[args.mode](args)
        return
    with tempfile.TemporaryDirectory() as model_cache:
        args.model_cache = model_cache
        _setup(args)  # pre-train once, outside the timed runs
        common = [sys.executable, str(Path(__file__).resolve()), "--seed", str(args.seed), "--arch", args.arch,
                  "--image-size", str(args.image_size), "--model-cache", model_cache, "--memory-size", str(args.memory_size)]
        results = {}
        for mode, copies in (("cached", 1), ("recompute", 1), ("extract", 1), ("extract", args.repeat)):
            output = subprocess.run([*common, "--mode", mode, "--copies", str(copies)], check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results[result["mode"]] = result
    print(f"digits-bias, seed {args.seed}, {args.arch} at {args.image_size}px, methods {','.join(METHODS)}, default grid; torch threads {torch.get_num_threads()}")
    for mode in ("cached", "recompute"):
        print(f"{mode:>9}: {results[mode]['seconds']:8.2f} s   peak RSS {results[mode]['peak_rss_mb']:7.1f} MB")
    print(f"ratio recompute / cached: {results['recompute']['seconds'] / results['cached']['seconds']:.1f}x")
    print(f"memory check ({args.arch}, {args.memory_size}px, features written to a memory-mapped .npy):")
    for mode, result in results.items():
        if mode.startswith("extract"):
            print(f"  {result['images']:6d} images: {result['seconds']:7.2f} s   peak RSS {result['peak_rss_mb']:7.1f} MB"
                  f"   (all transformed images as one tensor: {result['all_images_in_memory_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
