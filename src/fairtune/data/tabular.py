"""Tabular tasks from a pandas DataFrame or a CSV file: split, preprocess, validate.

Preprocessing (standard scaling of numeric columns, one-hot encoding of the others) is
fitted on the pre-training (source) split only: it is part of the pre-trained model's
input pipeline, and never sees the new task's validation or test rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .. import errors
from .._validation import (
    OTHER_GROUP, binary_labels, check_finite_counts, check_groups_present, group_codes, merge_small_groups, nonfinite_per_column,
)
from ..config import SplitConfig
from ..errors import DataError
from ._types import Split, Task

logger = logging.getLogger(__name__)

#: Rows encoded at a time: the transform's float64 block (one-hot columns included) exists for
#: these rows only, not for a whole split (about 13 MB at Adult's 102 columns).
ENCODE_CHUNK_ROWS = 16384


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a user's CSV, with a one-line error for a missing, unreadable, header-only or ambiguous file.

    Duplicate column names are refused: pandas would rename the second ``label`` to ``label.1``
    and it would silently become a feature.
    """
    csv_path = Path(path)
    if csv_path.is_dir():
        raise DataError(errors.NOT_A_FILE.format(path=csv_path))
    if not csv_path.is_file():
        raise DataError(errors.MISSING_FILE.format(path=csv_path))
    try:
        header = pd.read_csv(csv_path, header=None, nrows=1, dtype=str, keep_default_na=False, skipinitialspace=True)
        frame = pd.read_csv(csv_path, skipinitialspace=True, na_values=["?", ""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse CSV {csv_path}: {str(exc).splitlines()[0]}") from exc
    check_unique_columns([str(name).strip() for name in header.iloc[0]], source=str(csv_path))
    return frame


def check_unique_columns(columns: list[str], *, source: str) -> None:
    """Refuse a table in which two columns have the same name."""
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(errors.DUPLICATE_COLUMNS.format(source=source, names=", ".join(map(repr, repeated))))


def split_indices(
    n_rows: int, split: SplitConfig, seed: int, *, strata: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random partition of ``range(n_rows)`` into disjoint source/train/val/test index sets.

    With ``strata`` (one int per row, e.g. 2·group + label) the partition is stratified: every
    stratum puts one row in each split, then its other rows are spread over the splits in
    proportion to their sizes, and the split sizes stay exactly those of ``split``. The caller
    checks beforehand that each stratum has a row per split (:func:`check_strata`).
    """
    try:
        counts = split.counts(n_rows)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    order = np.random.default_rng(seed).permutation(n_rows)
    if strata is None:
        bounds = np.cumsum(counts)[:-1]
        return dict(zip(("source", "train", "val", "test"), np.split(order, bounds)))
    return dict(zip(("source", "train", "val", "test"), _stratified_parts(order, strata, counts)))


def _stratified_parts(order: np.ndarray, strata: np.ndarray, counts: tuple[int, ...]) -> list[np.ndarray]:
    """Split the rows of the random ``order`` into ``len(counts)`` parts of exactly ``counts`` rows, stratified."""
    n_parts = len(counts)
    ranked = order[np.argsort(strata[order], kind="stable")]  # grouped by stratum, random within each
    first = np.r_[True, strata[ranked][1:] != strata[ranked][:-1]]
    rank_in_stratum = np.arange(len(ranked)) - np.maximum.accumulate(np.where(first, np.arange(len(ranked)), 0))
    reserved = rank_in_stratum < n_parts
    part = np.empty(len(ranked), np.int64)
    part[reserved] = rank_in_stratum[reserved]  # one row of each stratum per part
    quotas = np.asarray(counts) - int(first.sum())
    # the rest, still grouped by stratum, receives an evenly interleaved sequence of part labels:
    # every stratum then gets about its share of each part, and each part exactly its quota
    keys = np.concatenate([(np.arange(q) + 0.5) / q for q in quotas])
    labels = np.repeat(np.arange(n_parts), quotas)
    part[~reserved] = labels[np.argsort(keys, kind="stable")]
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    chosen = [ranked[part == p] for p in range(n_parts)]
    return [rows[np.argsort(position[rows])] for rows in chosen]  # each part in the random order


def smallest_sufficient_merge(table: np.ndarray, n_parts: int) -> int | None:
    """The smallest ``--min-group-size`` after which every (group, label) of ``table`` (groups x 2 counts),
    the merged group included, has ``n_parts`` rows and at least two groups remain; None if there is none."""
    totals = table.sum(axis=1)
    for threshold in sorted(set(totals.tolist())):
        small = totals <= threshold
        kept, merged = table[~small], table[small].sum(axis=0)
        if (kept >= n_parts).all() and (merged >= n_parts).all() and len(kept) + 1 >= 2:
            return int(threshold) + 1
    return None


def check_strata(
    y: np.ndarray, s: np.ndarray, group_names: tuple[str, ...], counts: tuple[int, ...], *, column: str, label: str,
) -> None:
    """Each (group, label) needs a row in each split, and each split a row per (group, label).

    Otherwise a one-line DataError names the smallest offending group with its row counts and
    the ``--min-group-size`` that merges it.
    """
    n_parts = len(counts)
    table = np.zeros((len(group_names), 2), np.int64)
    np.add.at(table, (s, y), 1)
    short = np.flatnonzero((table < n_parts).any(axis=1))
    if len(short):
        suggest = smallest_sufficient_merge(table, n_parts)
        code = short[np.argmin(table[short].sum(axis=1))]
        negatives, positives = (int(v) for v in table[code])
        remedy = errors.NO_MERGE_REMEDY if suggest is None else errors.MERGE_REMEDY.format(size=suggest, other=OTHER_GROUP)
        common = {"group": group_names[code], "column": column, "rows": positives + negatives, "remedy": remedy}
        if positives == 0 or negatives == 0:
            which = f"positive ({label})" if positives == 0 else f"negative (not {label})"
            rate = "true positive rate" if positives == 0 else "false positive rate"
            raise DataError(errors.GROUP_WITHOUT_LABEL.format(label=which, rate=rate, **common))
        raise DataError(errors.SMALL_GROUP.format(positives=positives, negatives=negatives, parts=n_parts, **common))
    for where, size in zip(("source", "train", "val", "test"), counts):
        if size < table.size:
            raise DataError(errors.TOO_MANY_STRATA.format(where=where, size=size, strata=table.size))


def sensitive_groups(groups: pd.Series, *, min_group_size: int | None, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group codes and names, merging the groups smaller than ``min_group_size`` first if asked (logged)."""
    if min_group_size is not None:
        groups, notice = merge_small_groups(groups, min_group_size, column=column)
        if notice:
            logger.warning(notice)
    return group_codes(groups, name=column)


def split_rows(
    y: np.ndarray, s: np.ndarray, group_names: tuple[str, ...], split: SplitConfig, seed: int, *, stratify: bool, column: str, label: str,
) -> dict[str, np.ndarray]:
    """The split of the rows, stratified by (group, label) if asked (each of which must then have a row per split).

    ``label`` names the positive label in messages (``income=>50K``).
    """
    if stratify:
        try:
            counts = split.counts(len(y))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        check_strata(y, s, group_names, counts, column=column, label=label)
    return split_indices(len(y), split, seed, strata=2 * s + y if stratify else None)


def group_split(
    y: np.ndarray, groups: pd.Series, split: SplitConfig, seed: int, *,
    stratify: bool, min_group_size: int | None, column: str, label: str,
) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray]]:
    """Group codes, group names and the split of the rows, merging small groups first if asked."""
    s, group_names = sensitive_groups(groups, min_group_size=min_group_size, column=column)
    return s, group_names, split_rows(y, s, group_names, split, seed, stratify=stratify, column=column, label=label)


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


#: Categorical column -> (each row's code, the distinct values the codes index).
Codes = dict[str, tuple[np.ndarray, pd.Index]]


def factorize(frame: pd.DataFrame, columns: list[str]) -> Codes:
    """The columns as codes, for :meth:`TableEncoder.encode` to match each distinct value with the categories, not each row."""
    return {column: pd.factorize(frame[column], use_na_sentinel=False) for column in columns}


def categorical_columns(frame: pd.DataFrame) -> list[str]:
    """The columns one-hot encoded: all but the numeric ones (booleans are categories)."""
    return [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]


class TableEncoder:
    """Standard scaling of the numeric columns, then one-hot encoding of the others, fitted on one
    frame (the source split) and written as float32 for rows of another, a chunk of rows at a time.

    scikit-learn's ColumnTransformer with the same two transformers gives the same values, but
    costs memory proportional to the whole table twice over: its ``fit`` also transforms the frame
    it fits (two float64 copies of the encoded source split, 0.65 GB at 1M rows), and its
    ``transform`` stacks the float64 output of each transformer into another copy before the
    float32 one. Here each transformer is fitted on its own columns, and :meth:`encode` writes
    its output for each chunk straight into its columns of one float32 array. The one-hot columns are
    written from the position of each row's value among OneHotEncoder's fitted categories (a
    value it did not see: all zeros, as ``handle_unknown="ignore"``) instead of its transform, which
    validates and matches every row again; a prepared table matches each distinct value once.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.categorical = categorical_columns(frame)
        self.numeric = [c for c in frame.columns if c not in self.categorical]
        self.scaler = StandardScaler().fit(frame[self.numeric]) if self.numeric else None
        self.one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(frame[self.categorical]) if self.categorical else None
        self.feature_names = tuple(
            str(name) for columns, transformer in ((self.numeric, self.scaler), (self.categorical, self.one_hot)) if columns
            for name in transformer.get_feature_names_out([str(c) for c in columns])
        )
        check_unique_columns(list(self.feature_names), source="the encoded table (a column is named like a category's one-hot column)")

    def encode(self, frame: pd.DataFrame, rows: np.ndarray, *, chunk_rows: int = ENCODE_CHUNK_ROWS, codes: Codes | None = None) -> np.ndarray:
        """The encoded ``frame.iloc[rows]``, ``(len(rows), len(feature_names))`` float32; non-finite entries refused.

        Scaling and one-hot encoding treat each row on its own, so any ``chunk_rows`` gives the
        same values; it bounds the float64 blocks that exist at once. ``codes``: ``frame``'s
        categorical columns factorized (:func:`factorize`), where one frame is encoded many times.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        numeric = frame.columns.get_indexer(self.numeric)
        categories = self.one_hot.categories_ if self.one_hot else []
        offsets = np.cumsum([len(self.numeric), *(len(c) for c in categories)])
        one_hot = [(column, pd.Index(c), offset) for column, c, offset in zip(self.categorical, categories, offsets)]
        out = np.empty((len(rows), len(self.feature_names)), np.float32)
        bad = np.zeros(len(self.feature_names), np.int64)
        for start in range(0, len(rows), chunk_rows):
            chunk, block = rows[start:start + chunk_rows], out[start:start + chunk_rows]
            if self.scaler is not None:
                block[:, :len(self.numeric)] = self.scaler.transform(frame.iloc[chunk, numeric])
            block[:, len(self.numeric):] = 0
            for column, index, offset in one_hot:  # position -1: a category the fit did not see
                if codes is None:
                    position = index.get_indexer(frame[column].iloc[chunk])
                else:
                    row_codes, values = codes[column]
                    position = index.get_indexer(values)[row_codes[chunk]]
                known = np.flatnonzero(position >= 0)
                block[known, offset + position[known]] = 1
            bad += nonfinite_per_column(block)
        check_finite_counts(bad, columns=self.feature_names)
        return out


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Table:
    """A frame checked and prepared once for every split of it: feature columns (categories factorized), labels,
    groups, the data's hash, and what the task's fingerprint names."""

    features: pd.DataFrame
    codes: Codes  # of the categorical features
    y: np.ndarray
    s: np.ndarray
    group_names: tuple[str, ...]
    data_hash: str
    target: str
    sensitive: str
    positive: object | None
    keep_sensitive: bool
    min_group_size: int | None


def prepare_table(
    frame: pd.DataFrame,
    *,
    target: str,
    sensitive: str,
    positive: object | None = None,
    keep_sensitive: bool = False,
    drop_missing: bool = False,
    min_group_size: int | None = None,
    source: str = "the data",
) -> Table:
    """Check ``frame`` and prepare what every seed's split of it shares (see :func:`tabular_task` for the parameters)."""
    check_unique_columns([str(c) for c in frame.columns], source=source)
    for column in (target, sensitive):
        if column not in frame.columns:
            raise DataError(errors.MISSING_COLUMN.format(column=column, source=source, available=", ".join(map(str, frame.columns[:20]))))
    if target == sensitive:
        raise DataError("target and sensitive must be different columns")
    if frame.empty:
        raise DataError(errors.NO_ROWS.format(source=source))
    feature_columns = [c for c in frame.columns if c != target and (keep_sensitive or c != sensitive)]
    if not feature_columns:
        raise DataError(f"{source} has no feature columns besides {target!r} and {sensitive!r}")
    frame = frame.replace([np.inf, -np.inf], np.nan)  # an infinite number is as unusable as a missing one
    missing = frame[feature_columns + [target, sensitive]].isna()
    if missing.to_numpy().any():
        if not drop_missing:
            columns = missing.columns[missing.any()].tolist()
            raise DataError(
                errors.NAN_FEATURES.format(count=int(missing.to_numpy().sum()), columns=", ".join(map(str, columns[:5])))
                + "; pass --drop-missing to drop those rows"
            )
        empty = missing.columns[missing.all()].tolist()
        if empty:
            raise DataError(errors.EMPTY_COLUMN.format(column=empty[0]))
        frame = frame.loc[~missing.any(axis=1)]
        logger.info("dropped %d rows with missing values", int(missing.any(axis=1).sum()))
    frame = frame.reset_index(drop=True)
    y = binary_labels(frame[target], name=target, positive=positive)
    s, group_names = sensitive_groups(frame[sensitive], min_group_size=min_group_size, column=sensitive)
    features = frame[feature_columns]
    return Table(
        features=features, codes=factorize(features, categorical_columns(features)), y=y, s=s, group_names=group_names,
        data_hash=hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest(),
        target=target, sensitive=sensitive, positive=positive, keep_sensitive=keep_sensitive, min_group_size=min_group_size,
    )


def table_task(
    table: Table, *, split: SplitConfig | None = None, seed: int = 0, source_balance: str = "none", stratify: bool = True, name: str = "csv",
) -> Task:
    """One seed's :class:`Task` of a prepared table: split, source subsampled, preprocessing fitted on the source
    split and applied to every split (see :func:`tabular_task`)."""
    split = split or SplitConfig()
    y, s, group_names = table.y, table.s, table.group_names
    parts = split_rows(y, s, group_names, split, seed, stratify=stratify, column=table.sensitive,
                       label=f"{table.target}={table.positive if table.positive is not None else 1}")
    parts["source"] = balance_source(parts["source"], y, s, source_balance, seed)
    encoder = TableEncoder(table.features.iloc[parts["source"]])

    def make(rows: np.ndarray, where: str) -> Split:
        check_groups_present(s[rows], len(group_names), where=where, names=group_names)
        return Split(torch.from_numpy(encoder.encode(table.features, rows, codes=table.codes)), y[rows], s[rows])

    min_group_size = table.min_group_size
    split_id = (stratify, min_group_size) if stratify or min_group_size is not None else ()  # () keeps older cache keys valid
    return Task(
        name=name,
        **{where: make(rows, where) for where, rows in parts.items()},
        group_names=group_names,
        label_name=table.target,
        sensitive_name=table.sensitive,
        fingerprint=_fingerprint(name, table.data_hash, split.model_dump(), seed, table.keep_sensitive, table.positive, table.target,
                                 table.sensitive, source_balance, *split_id),
        feature_names=encoder.feature_names,
    )


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
    stratify: bool = True,
    min_group_size: int | None = None,
    name: str = "csv",
    source: str = "the data",
) -> Task:
    """Build a :class:`Task` from a DataFrame: :func:`prepare_table`, then :func:`table_task`.

    Parameters
    ----------
    frame : one row per sample.
    target, sensitive : column names of the label and of the sensitive attribute.
    positive : label value counted as 1; without it the label must be 0/1-like.
    split : new-task sizes (the rest pre-trains the model); default: Adult's proportions.
    seed : seed of the random split.
    keep_sensitive : keep the sensitive column among the model's features.
    drop_missing : drop rows with missing values instead of failing (infinite numbers count as missing).
    source_balance : subsample the pre-training split, see :func:`balance_source`.
    stratify : split by (group, label), so that every group appears with both labels in every split.
    min_group_size : merge the groups with fewer rows into one group ``"other"`` (logged as a warning).
    """
    table = prepare_table(frame, target=target, sensitive=sensitive, positive=positive, keep_sensitive=keep_sensitive,
                          drop_missing=drop_missing, min_group_size=min_group_size, source=source)
    return table_task(table, split=split, seed=seed, source_balance=source_balance, stratify=stratify, name=name)


def csv_task(path: str | Path, *, target: str, sensitive: str, **kwargs: object) -> Task:
    """:func:`tabular_task` on a CSV file (``?`` and empty cells are read as missing)."""
    return tabular_task(read_csv(path), target=target, sensitive=sensitive, source=str(path), **kwargs)
