"""The ``fairtune`` command line. Thin: parse flags into settings, call experiments, write files.

Errors a user can fix (:class:`~fairtune.errors.FairtuneError`, invalid settings) are printed
as one line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import __version__
from ._io import configure_logging, release_notices
from .errors import ConfigError, FairtuneError

app = typer.Typer(
    name="fairtune",
    help="Fair and efficient fine-tuning of pre-trained models: weight importance neutralization (WIN, "
    "Zhang & Zhou 2024) against TL and f+SVD, with fairness metrics (ΔDP, ΔEO, Err) over seeds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn FairtuneError and invalid settings into ``fairtune: error: ...`` and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            outcome = command(*args, **kwargs)
        except FairtuneError as exc:
            release_notices(show=False)
            typer.echo(f"fairtune: error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            release_notices(show=False)
            typer.echo("fairtune: interrupted", err=True)
            raise typer.Exit(130) from None
        release_notices(show=True)
        return outcome

    return wrapper  # type: ignore[return-value]


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of numbers, got {text!r}") from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of integers, got {text!r}") from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _path(path: Path | None) -> str | None:
    return str(path) if path else None


def _split(text: str | None) -> dict[str, float | int] | None:
    if text is None:
        return None
    try:
        values = [float(v) if "." in v else int(v) for v in text.split(",")] if text else []
    except ValueError:
        values = []
    if len(values) != 3:
        raise ConfigError(f"--split needs three sizes TRAIN,VAL,TEST (counts or fractions), got {text!r}")
    return dict(zip(("train", "val", "test"), values))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fairtune {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what is being done (to stderr).")] = False,
) -> None:
    configure_logging(verbose)  # warnings are held until the command ends: a failure prints one line


def _methods_help() -> str:
    from .catalogue import help_text

    return "Comma-separated method specs NAME[:VALUE]: " + help_text() + "."


@app.command()
@user_errors
def run(
    dataset: Annotated[str, typer.Option(help="Data set: 'adult' (bundled, the default), 'csv' (your file, see --csv), or an image data set (digits-bias, celeba, lfw, image-folder).")] = "adult",
    methods: Annotated[str, typer.Option(help=_methods_help())] = "tl,svd,win",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1); each seed re-splits the data, pre-trains (cached) and fine-tunes.")] = 10,
    out: Annotated[Path, typer.Option(help="Output folder for results.csv, summary.csv, summary.md, selections.json, config.json.")] = Path("runs/latest"),
    save_predictions: Annotated[bool, typer.Option("--save-predictions", help="Also write predictions.csv (method, seed, y_true, y_pred, sensitive) for the test split.")] = False,
    csv: Annotated[Path | None, typer.Option(help="CSV file for --dataset csv (one row per sample; '?' or empty = missing).")] = None,
    target: Annotated[str | None, typer.Option(help="Label column for --dataset csv.")] = None,
    sensitive: Annotated[str | None, typer.Option(help="Sensitive-attribute column for --dataset csv (2 or more groups).")] = None,
    positive: Annotated[str | None, typer.Option(help="Label value counted as positive (needed unless the label is 0/1 or true/false).")] = None,
    keep_sensitive: Annotated[bool, typer.Option("--keep-sensitive", help="Keep the sensitive column among the model's input features.")] = False,
    drop_missing: Annotated[bool, typer.Option("--drop-missing", help="Drop rows with missing values instead of stopping with an error.")] = False,
    split: Annotated[str | None, typer.Option(help="New-task sizes TRAIN,VAL,TEST as counts (12287,5000,10315) or fractions (0.27,0.11,0.23); the rest pre-trains. Default: Adult's Table 1 sizes / proportions.")] = None,
    split_seed: Annotated[int | None, typer.Option(help="Fix the data split and pre-trained model to this seed; seeds then vary only fine-tuning.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder of an image data set: --dataset celeba (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt) or lfw (lfw/<Person>/..., lfw_attributes.txt). For image data, --target/--sensitive name attributes (default WavyHair/Male, Male/HeavyMakeup), and --dataset image-folder reads --csv with columns path,label,sensitive.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights of the vision model (.safetensors or a PyTorch state dict; a 2-class model, or the architecture's standard head, whose new 2-class head is then trained on the source split). Default: pre-train on the source split (cached).")] = None,
    arch: Annotated[str | None, typer.Option(help="Vision model: resnet18 (the paper's; default for celeba, lfw, image-folder), small_cnn (default for digits-bias), or any torchvision classifier with a linear head (resnet34, mobilenet_v3_small, ...).")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Side of the square model input in pixels (default 224; 8, the native size, for digits-bias).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes reading images.")] = 0,
    layer: Annotated[str | None, typer.Option(help="Name of the nn.Linear to fine-tune (default: the last, 'output' for the MLP).")] = None,
    ranks: Annotated[str, typer.Option(help="Ranks r searched for svd/win (r <= min(d, k); k = 2 for a binary head).")] = "1,2",
    rank_fractions: Annotated[str, typer.Option(help="Ranks of the hidden/all-layer variants as fractions f of each layer's max rank: ceil(f·min(d,k)).")] = "0.25,0.5,1",
    lrs: Annotated[str, typer.Option(help="Learning rates searched (Adam).")] = "0.001,0.01",
    epochs: Annotated[str, typer.Option(help="Fine-tuning epochs searched (checkpoints of one run).")] = "5,20",
    operators: Annotated[str, typer.Option(help="Neutralization operators searched for win: mean, geometric, min, harmonic, pooled (= no neutralization).")] = "mean,geometric,min,harmonic,pooled",
    fisher: Annotated[str, typer.Option(help="Fisher information: 'empirical' (data labels) or 'true' (expected over the model's labels).")] = "empirical",
    batch_size: Annotated[int, typer.Option(min=1, help="Fine-tuning mini-batch size.")] = 256,
    selection: Annotated[str, typer.Option(help="Validation metric minimized to choose settings: err, delta_eo, delta_dp, err+delta_eo.")] = "err",
    retrain_scope: Annotated[str, typer.Option(help="What retrain-eo/retrain-dp update: 'all' (every parameter of the pre-trained model, on its inputs) or 'last' (the target layer only, like TL).")] = "all",
    hidden: Annotated[str, typer.Option(help="Hidden widths of the pre-trained MLP.")] = "64,32",
    pretrain_epochs: Annotated[int, typer.Option(min=1, help="Epochs of MLP pre-training on the source split.")] = 20,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache of pre-trained models (default $FAIRTUNE_CACHE or ~/.cache/fairtune).")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device of the model and features: cpu (default), cuda, cuda:1, ...")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Run the (method, seed) units in this many local processes (same results).")] = 1,
    serial_candidates: Annotated[bool, typer.Option("--serial-candidates", help="Train each candidate setting in its own loop (the reference path: the same results, slower) instead of all of a method's candidates together.")] = False,
    constraint: Annotated[str | None, typer.Option(help="Fairness target: fine-tune tl, svd, win (and win-hidden, svd-hidden) subject to ΔEO ('eo') or ΔDP ('dp') <= --tolerance, choosing settings among those that meet it on validation; other methods run as they are. Same as listing win-eo:ε etc. in --methods.")] = None,
    tolerance: Annotated[float | None, typer.Option(help="ε of the fairness target, in (0, 2) (default 0.05).")] = None,
    thresholds: Annotated[str | None, typer.Option(help="With --constraint: fine-tune as without the target, then fit decision thresholds meeting it on train+val: 'deterministic' (one threshold per group) or 'randomized' (a mixture of thresholds per group, drawn from the seed: less Err at the same gap), after which the model needs the sensitive attribute to predict; or 'proxy' (a randomized rule per cell of the group inferred from the inputs), which predicts without it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier run in --out (by default such a folder is refused).")] = False,
    min_group_size: Annotated[int | None, typer.Option(help="Merge sensitive groups with fewer rows than this into one group 'other' (needed when a group is too small to split).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Compare fine-tuning methods on one data set over seeds; print mean ± std and write CSV/JSON files."""
    from .experiments import RunConfig, choose_executor, run as run_experiment, summarize
    from .report import summary_table

    config = RunConfig.model_validate({
        "data": {
            "dataset": dataset, "csv": _path(csv), "target": target, "sensitive": sensitive,
            "positive": positive, "keep_sensitive": keep_sensitive, "drop_missing": drop_missing,
            "split": _split(split), "split_seed": split_seed, "data_dir": _path(data_dir), "weights": _path(weights),
            "arch": arch, "image_size": image_size, "workers": workers, "min_group_size": min_group_size,
        },
        "pretrain": {"hidden": _ints(hidden, "hidden"), "epochs": pretrain_epochs},
        "finetune": {
            "ranks": _ints(ranks, "ranks"), "rank_fractions": _floats(rank_fractions, "rank-fractions"),
            "lrs": _floats(lrs, "lrs"), "epochs": _ints(epochs, "epochs"), "operators": _words(operators),
            "fisher": fisher, "batch_size": batch_size, "selection": selection, "retrain_scope": retrain_scope,
        },
        "methods": _words(methods), "seeds": tuple(range(seeds)), "target_layer": layer,
        "cache_dir": _path(cache_dir), "device": device, "constraint": constraint, "tolerance": tolerance,
        "thresholds": thresholds,
    })
    result = run_experiment(config, out=out, overwrite=overwrite, keep_predictions=save_predictions,
                            executor=choose_executor(processes=processes), progress=not quiet and sys.stderr.isatty(),
                            batched=not serial_candidates)
    typer.echo(summary_table(summarize(result.results)).to_string(index=False))
    typer.echo(f"\nwrote {out}/results.csv, summary.csv, summary.md, selections.json, config.json"
               + (", predictions.csv" if result.predictions is not None else ""))


@app.command()
@user_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep grid, YAML or TOML: datasets, methods, settings, seeds, pretrain, out (see fairtune.experiments.sweep).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the config's 'out', else runs/sweep). Finished units are kept in OUT/units/ and skipped on restart.")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Local processes running the units (ignored with --scheduler).")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier sweep of another config in --out (the same config resumes without it).")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address tcp://HOST:PORT (default $DASK_SCHEDULER_ADDRESS); runs the units on that cluster.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a grid of (data set, method, setting, seed) units in parallel; resumable; writes OUT/results.csv."""
    from tqdm.auto import tqdm

    from .experiments import choose_executor
    from .experiments.sweep import load_sweep_config, sweep as run_sweep

    grid = load_sweep_config(config)
    out_dir = out or Path(grid.out or "runs/sweep")
    results = run_sweep(grid, out_dir, executor=choose_executor(processes=processes, scheduler=scheduler), progress=not quiet,
                        overwrite=overwrite)
    typer.echo(f"{len(results)} units ({results.attrs['reused']} reused from {out_dir}/units); wrote {out_dir}/results.csv")


@app.command()
@user_errors
def reproduce(
    dataset: Annotated[str, typer.Argument(help="The study to reproduce: 'adult' (the paper's Tables 2-3, Figures 3-4).")],
    out: Annotated[Path, typer.Option(help="Output folder: tables (CSV + Markdown), figures/, report.md, report.html; finished units are kept in OUT/units/ and reused on restart.")] = Path("runs/reproduce"),
    seeds: Annotated[int | None, typer.Option(min=1, help="Number of seeds (0..N-1). Default: 10, or 2 with --quick.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tiny study for tests and CI: small splits, one λ, a one-point grid.")] = False,
    methods: Annotated[str | None, typer.Option(help="Table 3's methods besides Retrain+EO/DP (default: tl,svd,win,logreg and the fairlearn peers).")] = None,
    lambdas: Annotated[str | None, typer.Option(help="Regularizer intensities λ for Retrain+EO/DP and fair pre-training (default 0.1,0.5,0.9).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache of pre-trained models (default $FAIRTUNE_CACHE or ~/.cache/fairtune).")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Run the units and Table 2's fair pre-training in this many local processes (same results).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Reproduce the paper's study on a data set; resumable; writes tables, figures and report.md/html."""
    from .experiments import choose_executor
    from .experiments.reproduce import reproduce_adult, study_config

    config = study_config(
        dataset, seeds=seeds, quick=quick, methods=_words(methods) if methods is not None else None,
        lambdas=_floats(lambdas, "lambdas") if lambdas is not None else None, cache_dir=str(cache_dir) if cache_dir else None,
    )
    outcome = reproduce_adult(config, out, progress=not quiet, command=sys.argv, executor=choose_executor(processes=processes))
    for name, table in outcome["tables"].items():
        typer.echo(f"\n{name}\n{table.to_string(index=False)}")
    typer.echo(f"\n{outcome['computed']} units computed, {outcome['reused']} reused; {outcome['wall_seconds']:.1f} s; "
               f"wrote {out}/report.html, report.md, table2/table3/ablation (.csv, .md), figures/")


@app.command()
@user_errors
def study(
    subject: Annotated[str, typer.Argument(help="What to study: 'neutralization' (WIN variants vs baselines on the accuracy-fairness front) or 'tradeoff' (which method meets a fairness target ε, at what Err, against fairlearn's peers).")],
    dataset: Annotated[str, typer.Option(help="Data set: adult, csv (with --csv/--target/--sensitive) or an image data set (last-layer variants only).")] = "adult",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1).")] = 10,
    out: Annotated[Path, typer.Option(help="Output folder: study.md, study.csv, study_summary.csv, dominance.csv, pareto_*.png; finished units kept in OUT/units/.")] = Path("runs/study"),
    variants: Annotated[str | None, typer.Option(help="WIN variants (default: win, win-hidden, svd-hidden, win-all, svd-all, tl-anchor, win-anchor, win-hidden-anchor).")] = None,
    baselines: Annotated[str | None, typer.Option(help="Baselines (default: tl, svd, retrain-eo:0.5, retrain-dp:0.5, logreg, fairlearn-eg-eo, fairlearn-to-eo).")] = None,
    sources: Annotated[str, typer.Option(help="Pre-training source conditions: none (as drawn), base_rate (equal positive rates), size (equal group sizes).")] = "none,base_rate",
    rank_sweep: Annotated[str, typer.Option(help="Rank fractions f of the hidden-layer rank sweep (rank = ceil(f·min(d,k))).")] = "0.03125,0.125,0.25,0.5,1",
    csv: Annotated[Path | None, typer.Option(help="CSV file for --dataset csv.")] = None,
    target: Annotated[str | None, typer.Option(help="Label column for --dataset csv.")] = None,
    sensitive: Annotated[str | None, typer.Option(help="Sensitive column for --dataset csv.")] = None,
    positive: Annotated[str | None, typer.Option(help="Positive label value for --dataset csv.")] = None,
    lrs: Annotated[str | None, typer.Option(help="Learning rates searched on validation (default 0.01).")] = None,
    epochs: Annotated[str | None, typer.Option(help="Epoch checkpoints searched on validation (default 5,20).")] = None,
    operators: Annotated[str | None, typer.Option(help="Neutralization operators searched on validation (default mean,min,pooled; pooled = no neutralization).")] = None,
    rank_fractions: Annotated[str | None, typer.Option(help="Rank fractions searched on validation by the deep variants (default 0.25,1).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache of pre-trained models.")] = None,
    constraint: Annotated[str, typer.Option(help="tradeoff: the gap the target bounds, 'eo' (ΔEO) or 'dp' (ΔDP).")] = "eo",
    tolerances: Annotated[str, typer.Option(help="tradeoff: the tolerances ε studied.")] = "0.02,0.05,0.1,0.2",
    methods: Annotated[str | None, typer.Option(help="tradeoff: method specs, {c} standing for the constraint and {e} for ε (default: tl, win, tl-{c}:{e}, win-{c}:{e}, fairret-{c}:{e}, fairlearn-eg-{c}, tl-{c}-thr:{e}, win-{c}-thr:{e}, errorparity-{c}:{e}, fairlearn-to-{c}).")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Run the units in this many local processes (same results).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Study where the neutralized importance changes the outcome, or the fairness-target trade-off; resumable; writes a report and plots."""
    from .experiments import choose_executor
    from .experiments.study import StudyConfig, run_study

    if subject == "tradeoff":
        from .experiments.tradeoff import TradeoffConfig, run_tradeoff

        grid = {"lrs": lrs and _floats(lrs, "lrs"), "epochs": epochs and _ints(epochs, "epochs"),
                "operators": operators and _words(operators)}
        config = TradeoffConfig.model_validate({
            "run": {"data": {"dataset": dataset, "csv": _path(csv), "target": target, "sensitive": sensitive, "positive": positive},
                    "finetune": {key: value for key, value in grid.items() if value is not None},
                    "seeds": tuple(range(seeds)), "cache_dir": _path(cache_dir)},
            "constraint": constraint, "tolerances": _floats(tolerances, "tolerances"),
            **({} if methods is None else {"methods": _words(methods)}),
        })
        started = time.perf_counter()
        markdown = run_tradeoff(config, out, progress=not quiet, executor=choose_executor(processes=processes))
        typer.echo("\n".join(line for line in markdown.splitlines() if line.startswith(("- ", "### "))))
        typer.echo(f"\n{time.perf_counter() - started:.1f} s; wrote {out}/tradeoff.md, tradeoff.csv, tradeoff_summary.csv, tradeoff_config.json, tradeoff_*.png")
        return
    if subject != "neutralization":
        raise ConfigError(f"unknown study {subject!r}; available: neutralization, tradeoff")
    grid = {"lrs": lrs and _floats(lrs, "lrs"), "epochs": epochs and _ints(epochs, "epochs"),
            "operators": operators and _words(operators), "rank_fractions": rank_fractions and _floats(rank_fractions, "rank-fractions")}
    settings = {
        "data": {"dataset": dataset, "csv": _path(csv), "target": target, "sensitive": sensitive, "positive": positive},
        "grid": {key: value for key, value in grid.items() if value is not None},
        "seeds": tuple(range(seeds)), "cache_dir": _path(cache_dir), "sources": _words(sources),
        "rank_sweep": _floats(rank_sweep, "rank-sweep"), "variants": variants and _words(variants),
        "baselines": baselines and _words(baselines),
    }
    config = StudyConfig.from_options(**{key: value for key, value in settings.items() if value is not None})
    started = time.perf_counter()
    markdown = run_study(config, out, progress=not quiet, executor=choose_executor(processes=processes))
    typer.echo(markdown.split("\n\n### ")[0])
    typer.echo(f"\n{time.perf_counter() - started:.1f} s; wrote {out}/study.md, study.csv, study_summary.csv, dominance.csv, pareto_*.png")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
