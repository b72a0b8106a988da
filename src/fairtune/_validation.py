"""Input validation at the public boundary: turn user input into clean arrays or fail in one line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import errors
from .errors import DataError

_TRUE_LIKE = {"1", "1.0", "true", "yes", "y", "t"}  # "1.0": float labels, e.g. y.float()
_FALSE_LIKE = {"0", "0.0", "false", "no", "n", "f"}


def binary_labels(values: Sequence | np.ndarray | pd.Series, *, name: str = "label", positive: object | None = None) -> np.ndarray:
    """Map ``values`` to int64 {0, 1}.

    With ``positive`` given, 1 marks entries equal to it (compared as strings, so ``--positive 1``
    matches an integer column). Without it the values must already be two-valued and 0/1- or
    boolean-like.
    """
    series = pd.Series(np.asarray(values)).reset_index(drop=True)
    if series.isna().any():
        raise DataError(f"label {name!r} has {int(series.isna().sum())} missing value(s)")
    as_text = series.astype(str).str.strip()
    if positive is not None:
        positive_text = str(positive).strip()
        if not (as_text == positive_text).any():
            shown = ", ".join(sorted(as_text.unique())[:10])
            raise DataError(f"positive value {positive_text!r} does not occur in label {name!r} (values: {shown})")
        labels = (as_text == positive_text).to_numpy(np.int64)
    else:
        distinct = sorted(as_text.unique())
        lowered = {v.lower() for v in distinct}
        if len(distinct) > 2 or not (lowered <= _TRUE_LIKE | _FALSE_LIKE and len(lowered) == len(distinct)):
            raise DataError(
                errors.NON_BINARY_LABELS.format(name=name, count=len(distinct), values=", ".join(distinct[:10]))
            )
        labels = as_text.str.lower().isin(_TRUE_LIKE).to_numpy(np.int64)
    if labels.min() == labels.max():
        raise DataError(f"label {name!r} has a single class ({int(labels[0])}); fine-tuning needs both")
    return labels


def group_codes(values: Sequence | np.ndarray | pd.Series, *, name: str = "sensitive") -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode a sensitive attribute as int64 codes 0..G-1 (sorted by name); require G >= 2."""
    series = pd.Series(np.asarray(values)).reset_index(drop=True)
    if series.isna().any():
        raise DataError(f"sensitive attribute {name!r} has {int(series.isna().sum())} missing value(s)")
    as_text = series.astype(str).str.strip()
    names = tuple(sorted(as_text.unique()))
    if len(names) < 2:
        raise DataError(errors.SINGLE_GROUP.format(name=name, group=names[0] if names else None))
    codes = as_text.map({g: i for i, g in enumerate(names)}).to_numpy(np.int64)
    return codes, names


def finite_features(x: np.ndarray, *, columns: Sequence[str] | None = None) -> np.ndarray:
    """Return ``x`` as float32, refusing NaN or infinite entries."""
    array = np.asarray(x, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"features must be a 2-d array (samples x features), got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        shown = [columns[i] for i in cols[:5]] if columns is not None else [str(i) for i in cols[:5]]
        raise DataError(errors.NAN_FEATURES.format(count=int(bad.sum()), columns=", ".join(shown)))
    return array


def check_groups_present(s: np.ndarray, n_groups: int, *, where: str) -> None:
    """Every group must occur in a split that is used for fitting or evaluation."""
    counts = np.bincount(s, minlength=n_groups)
    if (counts == 0).any():
        raise DataError(f"the {where} split has no sample of group code(s) {np.flatnonzero(counts == 0).tolist()}")
