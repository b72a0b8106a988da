"""Do pre-trained Adult MLPs agree across CPU capabilities? (README, "Reproducibility")

torch picks its CPU kernels by the capability it detects (``torch.backends.cpu.get_cpu_capability()``:
DEFAULT, AVX2, AVX512); ``ATEN_CPU_CAPABILITY`` forces a lower one, which emulates another
processor on this machine. For each capability this pre-trains the default Adult MLP on the
default split of seeds 0..N-1 in three modes and stores the weights and test probabilities:

- ``float32``: as fairtune does by default;
- ``float64``: the same model and batches in double precision;
- ``deterministic``: float32 under ``torch.use_deterministic_algorithms(True)``.

Usage: ``python benchmarks/cpu_capability.py OUT_DIR [SEEDS]``; prints, per mode, on how many
seeds every capability gave bit-identical weights, the largest weight difference and the
largest difference of the pre-trained test Err (percentage points).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CAPABILITIES = ("default", "avx2", "avx512")
MODES = ("float32", "float64", "deterministic")


def pretrain_all(out: Path, seeds: int) -> None:
    """In this process (one capability): pre-train every (mode, seed) and save weights + test probabilities."""
    import torch

    from fairtune.config import PretrainConfig
    from fairtune.data import adult_task
    from fairtune.metrics import err
    from fairtune.models import MLP
    from fairtune.training import TrainingData, train_classifier

    torch.set_num_threads(1)
    config = PretrainConfig()
    arrays: dict[str, np.ndarray] = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
    for seed in range(seeds):
        task = adult_task(seed=seed)
        for mode in MODES:
            dtype = torch.float64 if mode == "float64" else torch.float32
            torch.use_deterministic_algorithms(mode == "deterministic")
            torch.manual_seed(seed)
            model = MLP(task.source.inputs.shape[1], config.hidden).to(dtype)
            data = TrainingData(task.source.inputs.to(dtype), torch.as_tensor(task.source.y), torch.as_tensor(task.source.s))
            train_classifier(model, data, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed)
            with torch.no_grad():
                probs = model.eval()(task.test.inputs.to(dtype)).softmax(dim=1)[:, 1].double().numpy()
            weights = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
            arrays[f"{mode}/{seed}/weights"] = weights
            arrays[f"{mode}/{seed}/probs"] = probs
            arrays[f"{mode}/{seed}/err"] = np.array(err(task.test.y, (probs > 0.5).astype(np.int64)))
    np.savez(out, **arrays)


def compare(files: dict[str, Path], seeds: int) -> None:
    loaded = {cap: np.load(path) for cap, path in files.items()}
    print("reported capabilities:", {cap: str(data["capability"]) for cap, data in loaded.items()})
    for mode in MODES:
        identical, max_weight, max_err, flipped = 0, 0.0, 0.0, 0
        for seed in range(seeds):
            weights = [data[f"{mode}/{seed}/weights"] for data in loaded.values()]
            errs = [float(data[f"{mode}/{seed}/err"]) for data in loaded.values()]
            preds = [data[f"{mode}/{seed}/probs"] > 0.5 for data in loaded.values()]
            identical += all(np.array_equal(weights[0], w) for w in weights[1:])
            max_weight = max(max_weight, max(float(np.abs(weights[0] - w).max()) for w in weights[1:]))
            max_err = max(max_err, max(errs) - min(errs))
            flipped = max(flipped, max(int((preds[0] != p).sum()) for p in preds[1:]))
        print(f"{mode:14s} identical on {identical}/{seeds} seeds; max |Δweight| {max_weight:.3g}; "
              f"max ΔErr {max_err:.4f} points; max test predictions that differ {flipped}")


def main() -> None:
    out_dir, seeds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if os.environ.get("_CAPABILITY_WORKER"):
        pretrain_all(out_dir / f"{os.environ['ATEN_CPU_CAPABILITY']}.npz", seeds)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for capability in CAPABILITIES:
        files[capability] = out_dir / f"{capability}.npz"
        if not files[capability].is_file():
            env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "_CAPABILITY_WORKER": "1"}
            subprocess.run([sys.executable, __file__, str(out_dir), str(seeds)], env=env, check=True)
    compare(files, seeds)


if __name__ == "__main__":
    main()
