"""Input validation at the public boundary: turn user input into clean arrays or fail in one line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import errors
from .errors import ConfigError, DataError

_TRUE_LIKE = {"1", "1.0", "true", "yes", "y", "t"}  # "1.0": float labels, e.g. y.float()
_FALSE_LIKE = {"0", "0.0", "false", "no", "n", "f"}


def binary_labels(
    values: Sequence | np.ndarray | pd.Series, *, name: str = "label", positive: object | None = None,
    not_binary: str = errors.NON_BINARY_LABELS,
) -> np.ndarray:
    """Map ``values`` to int64 {0, 1}.

    With ``positive`` given, 1 marks entries equal to it (compared as strings, so ``--positive 1``
    matches an integer column). Without it the values must already be two-valued and 0/1- or
    boolean-like; ``not_binary`` is the message template otherwise (the CLI's names ``--positive``).
    """
    series = pd.Series(np.asarray(values)).reset_index(drop=True)
    if series.empty:
        raise DataError(f"label {name!r} has no value: no samples")
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
            raise DataError(not_binary.format(name=name, count=len(distinct), values=", ".join(distinct[:10])))
        labels = as_text.str.lower().isin(_TRUE_LIKE).to_numpy(np.int64)
    if labels.min() == labels.max():
        raise DataError(f"label {name!r} has a single class ({int(labels[0])}); fine-tuning needs both")
    return labels


#: More distinct sensitive values than this are refused: a continuous attribute (age, a score)
#: would otherwise be fitted as hundreds of groups of a few samples each.
MAX_GROUPS = 50
#: Name of the group that ``min_group_size`` merges small groups into.
OTHER_GROUP = "other"


def group_codes(
    values: Sequence | np.ndarray | pd.Series, *, name: str = "sensitive", max_groups: int = MAX_GROUPS,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode a sensitive attribute as int64 codes 0..G-1 (sorted by name); require 2 <= G <= ``max_groups``."""
    series = pd.Series(np.asarray(values)).reset_index(drop=True)
    if series.isna().any():
        raise DataError(f"sensitive attribute {name!r} has {int(series.isna().sum())} missing value(s)")
    as_text = series.astype(str).str.strip()
    names = tuple(sorted(as_text.unique()))
    if len(names) < 2:
        raise DataError(errors.SINGLE_GROUP.format(name=name, group=names[0] if names else None))
    if len(names) > max_groups:
        raise DataError(errors.TOO_MANY_GROUPS.format(name=name, count=len(names), limit=max_groups))
    codes = as_text.map({g: i for i, g in enumerate(names)}).to_numpy(np.int64)
    return codes, names


def finite_features(x: np.ndarray, *, columns: Sequence[str] | None = None) -> np.ndarray:
    """Return ``x`` as float32, refusing NaN or infinite entries."""
    array = np.asarray(x, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"features must be a 2-d array (samples x features), got shape {array.shape}")
    check_finite_counts(nonfinite_per_column(array), columns=columns)
    return array


def nonfinite_per_column(x: np.ndarray) -> np.ndarray:
    """NaN or infinite entries of each column of a 2-d ``x``, int64: block sums add up to the whole's."""
    return (~np.isfinite(x)).sum(axis=0, dtype=np.int64)


def check_finite_counts(bad: np.ndarray, *, columns: Sequence[str] | None = None) -> None:
    """Refuse features with non-finite entries, given their count per column (:func:`nonfinite_per_column`)."""
    if bad.any():
        cols = np.flatnonzero(bad)
        shown = [columns[i] for i in cols[:5]] if columns is not None else [str(i) for i in cols[:5]]
        raise DataError(errors.NAN_FEATURES.format(count=int(bad.sum()), columns=", ".join(shown)))


def check_groups_present(s: np.ndarray, n_groups: int, *, where: str, names: Sequence[str] | None = None) -> None:
    """Every group must occur in a split that is used for fitting or evaluation; named by ``names[code]``."""
    counts = np.bincount(s, minlength=n_groups)
    if (counts == 0).any():
        absent = np.flatnonzero(counts == 0).tolist()
        shown = [names[code] for code in absent] if names is not None else absent
        raise DataError(errors.GROUPS_ABSENT.format(where=where, groups=", ".join(map(repr, shown))))


def merge_small_groups(values: pd.Series, minimum: int, *, column: str) -> tuple[pd.Series, str | None]:
    """Replace the groups of ``values`` with fewer than ``minimum`` rows by one group, ``OTHER_GROUP``.

    Returns the new values and a notice naming the merged groups (None when none was merged).
    The merged group is called ``"other"``, or ``"other (merged)"`` if ``"other"`` is already a group.
    """
    text = values.astype(str).str.strip()
    counts = text.value_counts()
    small = sorted(counts.index[counts < minimum])
    if not small:
        return values, None
    other = OTHER_GROUP if OTHER_GROUP not in counts.index or OTHER_GROUP in small else f"{OTHER_GROUP} (merged)"
    merged = text.where(~text.isin(small), other)
    notice = errors.MERGED_GROUPS.format(
        count=len(small), column=column, minimum=minimum, names=", ".join(map(repr, small[:10])) + (", ..." if len(small) > 10 else ""),
        other=other, rows=int(counts[small].sum()),
    )
    return merged, notice


def seed_range(count: int) -> tuple[int, ...]:
    """Seeds 0..count-1 for a count of seeds; a ValueError (a settings error) unless count >= 1."""
    if count < 1:
        raise ValueError(f"a number of seeds must be >= 1, got {count}")
    return tuple(range(count))
