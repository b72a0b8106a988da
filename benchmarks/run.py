"""fairtune benchmarks: every comparison is measured side by side in one run, so ratios hold on a noisy machine.

    .venv/bin/python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json] [--only fisher,wsvd,e2e,fairlearn]

Sections
--------
fisher     Eq. (1) closed form streamed (``importance.group_fisher``) vs a per-sample autograd loop
           vs ``torch.func`` (vmap of grad) vs one forward pass of the head; max |difference|.
wsvd       weighted SVD + layer surgery (``factorize_linear_``) for heads 64x2 .. 4096x1000.
e2e        ``experiments.run.run`` on Adult (TL / f+SVD / WIN): wall time and peak RSS, with the
           training split resampled to 1x, 2x, 4x its rows (each size in a fresh process).
fairlearn  WIN vs fairlearn's ExponentiatedGradient(LogisticRegression, EqualizedOdds) on the same
           Adult features (the pre-trained MLP's last hidden layer): wall time, Err, ΔEO.

Timings are the minimum over interleaved repetitions (each repetition times every contender once).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fairtune import __version__
from fairtune._io import write_json
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig
from fairtune.data import LOADERS, adult_task
from fairtune.data._types import Split, Task
from fairtune.experiments import RunConfig, compare_on_features, run, split_features
from fairtune.factorization import factorize_linear_, find_linear
from fairtune.importance import feature_batches, group_fisher
from fairtune.importance.fisher import squared_residuals
from fairtune.metrics import evaluate
from fairtune.models import pretrained_mlp

# ----------------------------------------------------------------------------------------------
# timing helpers


def time_side_by_side(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Seconds per contender: the minimum over ``repeats`` rounds, each round running every contender once."""
    best = {name: float("inf") for name in contenders}
    for _ in range(repeats):
        for name, function in contenders.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------------------------
# Fisher: three ways to the same per-group diagonal Fisher of a linear head


def closed_form_fisher(layer: nn.Linear, x: Tensor, y: Tensor, s: Tensor, n_groups: int) -> Tensor:
    """``importance.group_fisher`` streamed over batches of 4096; returns ``(G, k, d)``."""
    return group_fisher(layer, feature_batches(x, y, s, 4096), n_groups).weight


def one_shot_fisher_fp32(layer: nn.Linear, x: Tensor, y: Tensor, s: Tensor, n_groups: int) -> Tensor:
    """The same closed form in float32 and one matmul over all samples (no streaming): what the formula itself costs."""
    with torch.no_grad():
        residual2 = squared_residuals(layer(x), y)  # (n, k)
        per_group = (F.one_hot(s, n_groups).to(x.dtype)[:, :, None] * residual2[:, None, :]).reshape(len(x), -1)
        counts = torch.bincount(s, minlength=n_groups).to(x.dtype)
        return (per_group.T @ (x * x)).reshape(n_groups, *layer.weight.shape) / counts[:, None, None]


def _per_sample_loss(params: dict[str, Tensor], layer: nn.Linear, x: Tensor, y: Tensor) -> Tensor:
    """-log p(y|x) of one sample."""
    logits = functional_call(layer, params, (x[None],))
    return F.cross_entropy(logits, y[None])


def loop_fisher(layer: nn.Linear, x: Tensor, y: Tensor, s: Tensor, n_groups: int) -> Tensor:
    """The definition: one autograd backward per sample, squared gradients averaged per group."""
    total = torch.zeros(n_groups, *layer.weight.shape, dtype=torch.float64)
    for i in range(len(x)):
        layer.zero_grad(set_to_none=True)
        F.cross_entropy(layer(x[i : i + 1]), y[i : i + 1]).backward()
        total[s[i]] += layer.weight.grad.double() ** 2
    return total / torch.bincount(s, minlength=n_groups).double()[:, None, None]


def vmap_fisher(layer: nn.Linear, x: Tensor, y: Tensor, s: Tensor, n_groups: int, chunk: int = 8192) -> Tensor:
    """``torch.func``: vmap of grad gives per-sample gradients in chunks; squared and averaged per group."""
    params = {name: p.detach() for name, p in layer.named_parameters()}
    per_sample_grad = vmap(grad(_per_sample_loss), in_dims=(None, None, 0, 0))
    total = torch.zeros(n_groups, *layer.weight.shape, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        grads = per_sample_grad(params, layer, x[start : start + chunk], y[start : start + chunk])["weight"]
        total.index_add_(0, s[start : start + chunk], grads.double() ** 2)
    return total / torch.bincount(s, minlength=n_groups).double()[:, None, None]


def forward_pass(layer: nn.Linear, x: Tensor) -> Tensor:
    with torch.no_grad():
        return layer(x)


def fisher_case(name: str, n: int, d: int, k: int, *, loop_samples: int, repeats: int, loop_repeats: int) -> dict[str, Any]:
    """Time the three Fisher computations and a forward pass on the same random data (2 groups)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    y = torch.randint(0, k, (n,), generator=generator)
    s = torch.randint(0, 2, (n,), generator=generator)
    layer = nn.Linear(d, k)
    subset = slice(0, min(loop_samples, n))
    times = time_side_by_side({
        "forward": lambda: forward_pass(layer, x),
        "closed_form": lambda: closed_form_fisher(layer, x, y, s, 2),
        "closed_form_fp32_one_shot": lambda: one_shot_fisher_fp32(layer, x, y, s, 2),
        "vmap": lambda: vmap_fisher(layer, x, y, s, 2),
    }, repeats)
    loop_time = time_side_by_side({"loop": lambda: loop_fisher(layer, x[subset], y[subset], s[subset], 2)}, loop_repeats)["loop"]
    loop_per_sample = loop_time / len(x[subset])
    closed = closed_form_fisher(layer, x, y, s, 2)
    closed_subset = closed_form_fisher(layer, x[subset], y[subset], s[subset], 2)
    result = {
        "case": name, "n": n, "d": d, "k": k, "groups": 2,
        "seconds": {**times, "loop_measured": loop_time, "loop_extrapolated": loop_per_sample * n},
        "loop_samples_timed": len(x[subset]), "loop_extrapolated": len(x[subset]) < n,
        "max_abs_diff": {
            "closed_vs_vmap": float((closed - vmap_fisher(layer, x, y, s, 2)).abs().max()),
            "closed_vs_fp32_one_shot": float((closed - one_shot_fisher_fp32(layer, x, y, s, 2).double()).abs().max()),
            "closed_vs_loop": float((closed_subset - loop_fisher(layer, x[subset], y[subset], s[subset], 2)).abs().max()),
        },
        "max_abs_value": float(closed.abs().max()),
    }
    result["ratios"] = {
        "closed_form_over_forward": times["closed_form"] / times["forward"],
        "fp32_one_shot_over_forward": times["closed_form_fp32_one_shot"] / times["forward"],
        "loop_over_closed_form": loop_per_sample * n / times["closed_form"],
        "vmap_over_closed_form": times["vmap"] / times["closed_form"],
    }
    return result


def bench_fisher(quick: bool) -> list[dict[str, Any]]:
    # (name, n, d, k, repeats): many rounds for the millisecond case, so that the minimum escapes a busy machine
    cases = [("adult", 12287, 32, 2, 20 if quick else 50), ("512x2, 100k samples", 100_000, 512, 2, 5 if quick else 10)]
    out = []
    for name, n, d, k, repeats in cases:
        r = fisher_case(name, n, d, k, loop_samples=1000 if quick else 5000, repeats=repeats, loop_repeats=2 if quick else 3)
        t, ratio = r["seconds"], r["ratios"]
        loop_note = f"loop timed on {r['loop_samples_timed']} samples, extrapolated per sample to {n}" if r["loop_extrapolated"] else "loop timed on all samples"
        say(f"fisher [{name}: n={n}, head {d}x{k}] forward {t['forward'] * 1e3:.2f} ms | closed form {t['closed_form'] * 1e3:.2f} ms"
            f" | vmap {t['vmap'] * 1e3:.1f} ms | loop {t['loop_extrapolated']:.2f} s ({loop_note})")
        say(f"  ratios: closed/forward = {ratio['closed_form_over_forward']:.2f}x (goal <= 2x) | loop/closed = "
            f"{ratio['loop_over_closed_form']:.0f}x (goal >= 100x) | vmap/closed = {ratio['vmap_over_closed_form']:.1f}x"
            f" | same formula fp32 one-shot ({t['closed_form_fp32_one_shot'] * 1e3:.2f} ms)/forward = {ratio['fp32_one_shot_over_forward']:.2f}x")
        say(f"  max |diff|: closed vs vmap {r['max_abs_diff']['closed_vs_vmap']:.2e}, closed vs loop "
            f"{r['max_abs_diff']['closed_vs_loop']:.2e}, closed vs fp32 one-shot {r['max_abs_diff']['closed_vs_fp32_one_shot']:.2e}"
            f" (largest entry {r['max_abs_value']:.2e})")
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# weighted SVD + surgery


def bench_wsvd(quick: bool) -> list[dict[str, Any]]:
    shapes = [(64, 2), (512, 2), (1024, 10), (2048, 100), (4096, 1000)]
    out = []
    for d, k in shapes:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, d), nn.ReLU(), nn.Linear(d, k))
        importance = torch.rand(d) + 0.1
        rank = max(1, min(d, k) // 2)

        def surgery() -> None:
            factorize_linear_(copy.deepcopy(model), "2", rank=rank, row_importance=importance)

        seconds = time_side_by_side({"wsvd_surgery": surgery}, 2 if quick else 5)["wsvd_surgery"]
        say(f"wsvd+surgery [head {d}x{k}, r={rank}] {seconds * 1e3:.1f} ms")
        out.append({"d": d, "k": k, "rank": rank, "seconds": seconds})
    return out


# ----------------------------------------------------------------------------------------------
# end to end on Adult, train split resampled


def resample_train(task: Task, factor: int, seed: int) -> Task:
    """``task`` with its train split replaced by ``factor`` x as many rows drawn (with replacement) from it."""
    if factor == 1:
        return task
    rows = np.random.default_rng(seed).integers(0, len(task.train), size=factor * len(task.train))
    train = Split(task.train.inputs[torch.from_numpy(rows)], task.train.y[rows], task.train.s[rows])
    return dataclasses.replace(task, train=train)


def _e2e_child(factor: int, config_json: str, batched: bool = True) -> dict[str, Any]:
    """In a fresh process: register the resampled Adult loader, run (writing a run folder), return wall time,
    peak RSS and seconds per stage."""
    LOADERS[f"adult_x{factor}"] = lambda config, seed: resample_train(
        adult_task(seed=seed, split=config.split, keep_sensitive=config.keep_sensitive), factor, seed)
    config = RunConfig.model_validate_json(config_json)
    config = config.model_copy(update={"data": DataConfig(dataset=f"adult_x{factor}")})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run(config, out=Path(out) / "run", progress=False, batched=batched)
        wall = time.perf_counter() - start
    summary = result.results.groupby("method", sort=False)[["err", "delta_eo"]].mean().round(4).to_dict(orient="index")
    return {"wall_seconds": wall, "peak_rss_mb": peak_rss_mb(), "stage_seconds": result.stage_seconds, "metrics": summary,
            "results": result.results.drop(columns="fit_seconds").to_json()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``getrusage``: Linux carries ru_maxrss over fork+exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_e2e(quick: bool, cache_dir: str) -> list[dict[str, Any]]:
    """Each size batched (the default), and the 1x size also with one loop per candidate (``batched=False``),
    each in a fresh process: wall time, peak RSS, seconds per stage, and the serial/batched ratios."""
    grid = FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(5,), operators=("mean",)) if quick else FinetuneGrid()
    seeds = tuple(range(2 if quick else 10))
    config = RunConfig(finetune=grid, seeds=seeds, methods=("tl", "svd", "win"), cache_dir=cache_dir)
    context = multiprocessing.get_context("spawn")
    # warm the pre-training cache so that every size times the same work (fine-tuning grows with the data)
    with context.Pool(1) as pool:
        pool.apply(_warm_cache, (config.model_dump_json(),))
    out = []
    for factor, batched in ((1, False), (1, True), (2, True), (4, True)):
        with context.Pool(1, maxtasksperchild=1) as pool:
            r = pool.apply(_e2e_child, (factor, config.model_dump_json(), batched))
        out.append({"train_multiplier": factor, "train_rows": 12287 * factor, "seeds": len(seeds), "batched": batched, **r})
        stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in r["stage_seconds"].items())
        say(f"e2e adult [train x{factor} = {12287 * factor} rows, {len(seeds)} seeds, tl/svd/win, "
            f"{'quick grid' if quick else 'full grid'}, {'batched' if batched else 'one loop per candidate'}] "
            f"wall {r['wall_seconds']:.1f} s | peak RSS {r['peak_rss_mb']:.0f} MB | seconds per stage: {stages}")
    serial, base = out[0], out[1]
    say(f"e2e serial / batched, same run: wall {serial['wall_seconds'] / base['wall_seconds']:.2f}x, fine-tune stage "
        f"{serial['stage_seconds']['fine-tune'] / base['stage_seconds']['fine-tune']:.2f}x; "
        f"results equal: {serial['results'] == base['results']}")
    for r in out[2:]:
        say(f"e2e train x{r['train_multiplier']}: wall {r['wall_seconds'] / base['wall_seconds']:.2f}x of x1, "
            f"peak RSS {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x of x1")
    for r in out:
        del r["results"]
    return out


def _warm_cache(config_json: str) -> None:
    config = RunConfig.model_validate_json(config_json)
    for seed in config.seeds:
        pretrained_mlp(adult_task(seed=seed), config.pretrain, seed=seed, cache_dir=config.cache_dir)


# ----------------------------------------------------------------------------------------------
# WIN vs fairlearn's ExponentiatedGradient


def bench_fairlearn(quick: bool, cache_dir: str) -> dict[str, Any]:
    from fairlearn.reductions import EqualizedOdds, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    task = adult_task(seed=0)
    model = pretrained_mlp(task, PretrainConfig(), seed=0, cache_dir=cache_dir)
    _, layer = find_linear(model)
    features = split_features(model, layer, {k: v for k, v in task.splits().items() if k != "source"})
    train, test = features["train"], features["test"]
    grid = FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(5,), operators=("mean",)) if quick else FinetuneGrid()

    def fit_win() -> dict[str, float]:
        torch.manual_seed(0)
        row = compare_on_features(layer, features, ["win"], grid, seed=0)[-1].row
        return {k: row[k] for k in ("err", "delta_eo", "delta_dp")}

    def fit_eg() -> dict[str, float]:
        eg = ExponentiatedGradient(LogisticRegression(max_iter=1000), EqualizedOdds(), max_iter=20 if quick else 50)
        eg.fit(train.x.numpy(), train.y.numpy(), sensitive_features=train.s.numpy())
        y_pred = eg.predict(test.x.numpy(), random_state=0)
        return evaluate(test.y.numpy(), np.asarray(y_pred), test.s.numpy())

    outcome: dict[str, dict[str, float]] = {}
    times = time_side_by_side({"win": lambda: outcome.update(win=fit_win()), "exponentiated_gradient": lambda: outcome.update(eg=fit_eg())}, 1 if quick else 2)
    result = {"seconds": times, "ratio_eg_over_win": times["exponentiated_gradient"] / times["win"],
              "win": outcome["win"], "exponentiated_gradient": outcome["eg"],
              "win_grid": grid.model_dump(mode="json")}
    say(f"fairlearn [adult features, train {len(train.y)} rows] WIN {times['win']:.2f} s (grid of "
        f"{'1 setting' if quick else 'the default settings'}, selected on val) Err {outcome['win']['err']:.2f} ΔEO {outcome['win']['delta_eo']:.3f}"
        f" | ExponentiatedGradient(LR, EqualizedOdds) {times['exponentiated_gradient']:.2f} s Err {outcome['eg']['err']:.2f}"
        f" ΔEO {outcome['eg']['delta_eo']:.3f} | time EG/WIN = {result['ratio_eg_over_win']:.2f}x")
    return result


# ----------------------------------------------------------------------------------------------


SECTIONS = ("fisher", "wsvd", "e2e", "fairlearn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, seeds and settings (minutes, not an hour)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latest.json", help="JSON results file")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--cache-dir", default=None, help="pre-trained model cache (default: $FAIRTUNE_CACHE or ~/.cache/fairtune)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    from fairtune.models import default_cache_dir

    cache_dir = str(args.cache_dir or default_cache_dir())
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": multiprocessing.cpu_count(),
               "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "python": sys.version.split()[0],
               "torch": torch.__version__, "fairtune": __version__}
    say(f"fairtune {__version__} benchmarks ({'quick' if args.quick else 'full'}) on {machine['platform']}, "
        f"{machine['cpus']} CPUs, torch {machine['torch']} ({machine['torch_threads']} threads), CUDA {machine['cuda']}")
    report: dict[str, Any] = {"machine": machine, "quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    runners = {"fisher": lambda: bench_fisher(args.quick), "wsvd": lambda: bench_wsvd(args.quick),
               "e2e": lambda: bench_e2e(args.quick, cache_dir), "fairlearn": lambda: bench_fairlearn(args.quick, cache_dir)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for section in sections:
        report[section] = runners[section]()
        write_json(report, args.out)  # after each section, atomically: a long run keeps what it measured
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
