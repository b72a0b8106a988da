"""The README's Python API example runs as written (so it stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    """The first ```python block under the "## Python API" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "no ```python block under '## Python API' in README.md"
    return match.group(1)


def test_python_api_example_runs(capsys) -> None:
    namespace: dict[str, object] = {}
    exec(compile(python_api_example(), f"{README}:Python API", "exec"), namespace)

    tuner, results = namespace["tuner"], namespace["results"]
    assert tuner.trainable_params_ == 20  # the README's comment: 16*1 + 1*2 + 2
    assert isinstance(results, pd.DataFrame)
    assert set(results["method"]) == {"pretrained", "tl", "svd", "win"}
    printed = capsys.readouterr().out
    assert "FactorizedLinear" in printed and "20" in printed
