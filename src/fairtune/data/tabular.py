"""Tabular tasks from a pandas DataFrame or a CSV file: split, preprocess, validate.

Preprocessing (standard scaling of numeric columns, one-hot encoding of the others) is
fitted on the pre-training (source) split only: it is part of the pre-trained model's
input pipeline, and never sees the new task's validation or test rows.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .. import errors
from .._validation import binary_labels, check_groups_present, finite_features, group_codes
from ..config import SplitConfig
from ..errors import DataError
from ._types import Split, Task

logger = logging.getLogger(__name__)


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a user's CSV, with a one-line error for a missing or unreadable file."""
    csv_path = Path(path)
    if not csv_path.is_file():
        raise DataError(errors.MISSING_FILE.format(path=csv_path))
    try:
        return pd.read_csv(csv_path, skipinitialspace=True, na_values=["?", ""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse CSV {csv_path}: {str(exc).splitlines()[0]}") from exc


def split_indices(n_rows: int, split: SplitConfig, seed: int) -> dict[str, np.ndarray]:
    """Seeded random partition of ``range(n_rows)`` into disjoint source/train/val/test index sets."""
    try:
        counts = split.counts(n_rows)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    order = np.random.default_rng(seed).permutation(n_rows)
    bounds = np.cumsum(counts)[:-1]
    return dict(zip(("source", "train", "val", "test"), np.split(order, bounds)))


def balance_source(rows: np.ndarray, y: np.ndarray, s: np.ndarray, how: str, seed: int) -> np.ndarray:
    """Subsample ``rows`` (the pre-training split) so that its groups differ from the new task's.

    ``"base_rate"``: drop positives of every group down to the lowest group positive rate, so
    P(Y=1 | S=g) is equal across groups; ``"size"``: drop rows of every group down to the
    smallest group's size; ``"none"``: keep all. A model pre-trained on balanced data is
    fairer than the new task's data, so fine-tuning has bias to add (the paper's Table 2 setting).
    """
    if how == "none":
        return rows
    rng = np.random.default_rng(seed + 1)
    groups = np.unique(s[rows])
    keep = []
    if how == "size":
        smallest = min(int((s[rows] == g).sum()) for g in groups)
        for g in groups:
            members = rows[s[rows] == g]
            keep.append(rng.choice(members, smallest, replace=False))
    elif how == "base_rate":
        rate = min(float(y[rows][s[rows] == g].mean()) for g in groups)
        for g in groups:
            members = rows[s[rows] == g]
            positives, negatives = members[y[members] == 1], members[y[members] == 0]
            n_pos = int(round(rate * len(negatives) / (1 - rate))) if rate < 1 else len(positives)
            keep += [negatives, rng.choice(positives, min(n_pos, len(positives)), replace=False)]
    else:
        raise ValueError(f"unknown source balance {how!r}")
    return np.sort(np.concatenate(keep))


def _preprocessor(frame: pd.DataFrame) -> ColumnTransformer:
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in frame.columns if c not in numeric]
    return ColumnTransformer(
        [
            ("numeric", StandardScaler(), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ],
        verbose_feature_names_out=False,
    )


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


def tabular_task(
    frame: pd.DataFrame,
    *,
    target: str,
    sensitive: str,
    positive: object | None = None,
    split: SplitConfig | None = None,
    seed: int = 0,
    keep_sensitive: bool = False,
    drop_missing: bool = False,
    source_balance: str = "none",
    name: str = "csv",
    source: str = "the data",
) -> Task:
    """Build a :class:`Task` from a DataFrame.

    Parameters
    ----------
    frame : one row per sample.
    target, sensitive : column names of the label and of the sensitive attribute.
    positive : label value counted as 1; without it the label must be 0/1-like.
    split : new-task sizes (the rest pre-trains the model); default: Adult's proportions.
    seed : seed of the random split.
    keep_sensitive : keep the sensitive column among the model's features.
    drop_missing : drop rows with missing values instead of failing.
    source_balance : subsample the pre-training split, see :func:`balance_source`.
    """
    for column in (target, sensitive):
        if column not in frame.columns:
            raise DataError(errors.MISSING_COLUMN.format(column=column, source=source, available=", ".join(map(str, frame.columns[:20]))))
    if target == sensitive:
        raise DataError("target and sensitive must be different columns")
    feature_columns = [c for c in frame.columns if c != target and (keep_sensitive or c != sensitive)]
    if not feature_columns:
        raise DataError(f"{source} has no feature columns besides {target!r} and {sensitive!r}")
    missing = frame[feature_columns + [target, sensitive]].isna()
    if missing.to_numpy().any():
        if not drop_missing:
            columns = missing.columns[missing.any()].tolist()
            raise DataError(
                errors.NAN_FEATURES.format(count=int(missing.to_numpy().sum()), columns=", ".join(map(str, columns[:5])))
                + "; pass --drop-missing to drop those rows"
            )
        frame = frame.loc[~missing.any(axis=1)]
        logger.info("dropped %d rows with missing values", int(missing.any(axis=1).sum()))
    frame = frame.reset_index(drop=True)
    y = binary_labels(frame[target], name=target, positive=positive)
    s, group_names = group_codes(frame[sensitive], name=sensitive)
    split = split or SplitConfig()
    parts = split_indices(len(frame), split, seed)
    parts["source"] = balance_source(parts["source"], y, s, source_balance, seed)

    features = frame[feature_columns]
    preprocessor = _preprocessor(features).fit(features.iloc[parts["source"]])
    feature_names = tuple(map(str, preprocessor.get_feature_names_out()))

    def make(rows: np.ndarray, where: str) -> Split:
        check_groups_present(s[rows], len(group_names), where=where)
        x = finite_features(preprocessor.transform(features.iloc[rows]), columns=feature_names)
        return Split(torch.from_numpy(x), y[rows], s[rows])

    data_hash = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
    return Task(
        name=name,
        **{where: make(rows, where) for where, rows in parts.items()},
        group_names=group_names,
        label_name=target,
        sensitive_name=sensitive,
        fingerprint=_fingerprint(name, data_hash, split.model_dump(), seed, keep_sensitive, positive, target, sensitive, source_balance),
        feature_names=feature_names,
    )


def csv_task(path: str | Path, *, target: str, sensitive: str, **kwargs: object) -> Task:
    """:func:`tabular_task` on a CSV file (``?`` and empty cells are read as missing)."""
    return tabular_task(read_csv(path), target=target, sensitive=sensitive, source=str(path), **kwargs)
