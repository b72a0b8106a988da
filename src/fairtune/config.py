"""Validated settings. The CLI maps its flags straight onto these models.

Every model forbids unknown keys, so a typo in a config file is named instead of ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Operator = Literal["mean", "geometric", "min", "harmonic", "pooled"]
FisherKind = Literal["empirical", "true"]
SourceBalance = Literal["none", "base_rate", "size"]
SelectionMetric = Literal["err", "delta_eo", "delta_dp", "err+delta_eo"]
RetrainScope = Literal["all", "last"]

#: Table 1's new-task sizes for Adult (train / val / test); the rest pre-trains the model.
ADULT_SIZES: tuple[int, int, int] = (12287, 5000, 10315)
#: The same proportions of 45,222 complete Adult rows, used for user CSVs by default.
DEFAULT_FRACTIONS: tuple[float, float, float] = (12287 / 45222, 5000 / 45222, 10315 / 45222)


class SettingsError(ConfigError, ValueError):
    """Invalid settings: the key path and the problem. A ValueError, so that a model nesting
    these settings reports it under its own key path too."""

    def __init__(self, where: tuple[str, ...], problem: str, unknown_key: bool = False) -> None:
        self.where, self.problem, self.unknown_key = where, problem, unknown_key
        path = ".".join(where) or "(top level)"
        super().__init__(f"unknown key {path!r}{problem}" if unknown_key else f"invalid value for {path!r}: {problem}")


def settings_error(exc: ValidationError) -> SettingsError:
    """The first problem of ``exc``, naming the key: ``invalid value for 'finetune.lrs': ...``."""
    first = exc.errors()[0]
    where = tuple(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, SettingsError):  # raised by nested settings: join the key paths
        return SettingsError(where + inner.where, inner.problem + more, inner.unknown_key)
    if first["type"] == "extra_forbidden":
        return SettingsError(where, more, unknown_key=True)
    return SettingsError(where, first["msg"].removeprefix("Value error, ") + more)


class _Settings(BaseModel):
    """Settings: unknown keys refused; invalid values raise :class:`ConfigError` (one line), not pydantic's error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise settings_error(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise settings_error(exc) from None


class SplitConfig(_Settings):
    """New-task split sizes, as counts (int) or fractions of all rows (float).

    The pre-training (source) split is the disjoint rest. Adult's default follows Table 1
    (12287 / 5000 / 10315 of 45,222 complete rows, leaving 17,620 for pre-training).
    """

    train: int | float = Field(DEFAULT_FRACTIONS[0], description="new-task training rows (count or fraction)")
    val: int | float = Field(DEFAULT_FRACTIONS[1], description="validation rows (count or fraction)")
    test: int | float = Field(DEFAULT_FRACTIONS[2], description="test rows (count or fraction)")

    @field_validator("train", "val", "test")
    @classmethod
    def _positive(cls, value: int | float) -> int | float:
        if value <= 0:
            raise ValueError("split sizes must be positive")
        return value

    def counts(self, n_rows: int) -> tuple[int, int, int, int]:
        """Return (source, train, val, test) row counts for ``n_rows`` rows."""
        sizes = [int(round(v * n_rows)) if isinstance(v, float) else v for v in (self.train, self.val, self.test)]
        source = n_rows - sum(sizes)
        if source < 1:
            raise ValueError(f"split sizes {sizes} leave no rows for pre-training out of {n_rows}")
        return (source, *sizes)


class DataConfig(_Settings):
    """Which data set and how to split it."""

    dataset: str = Field("adult", description="adult, csv, or an image data set name")
    csv: str | None = Field(None, description="path of a CSV file (dataset=csv)")
    target: str | None = Field(None, description="label column (dataset=csv)")
    sensitive: str | None = Field(None, description="sensitive-attribute column (dataset=csv)")
    positive: str | None = Field(None, description="label value that counts as positive (1)")
    keep_sensitive: bool = Field(False, description="keep the sensitive column among the features")
    drop_missing: bool = Field(False, description="drop rows with missing values instead of failing")
    split: SplitConfig | None = Field(None, description="split sizes; None = the data set's default")
    split_seed: int | None = Field(None, ge=0, description="fixed seed for split and pre-training; None = use each run seed")
    stratify: bool | None = Field(
        None, description="split by (group, label) so every group has both labels in every split; "
        "None = the data set's default (stratified for csv and image-folder, random for the bundled data sets)",
    )
    min_group_size: int | None = Field(None, ge=1, description="merge sensitive groups with fewer rows into one group 'other'")
    data_dir: str | None = Field(None, description="folder of an image data set (celeba, lfw)")
    weights: str | None = Field(None, description="weights file of the vision model; None = pre-train it on the source split")
    arch: str | None = Field(None, description="vision model: small_cnn or a torchvision classifier (resnet18, ...); None = the data set's default")
    image_size: int | None = Field(None, ge=8, description="side of the square image input; None = the data set's default")
    workers: int = Field(0, ge=0, description="DataLoader worker processes reading images")
    source_balance: SourceBalance = Field(
        "none", description="subsample the pre-training split so its groups differ from the new task's: "
        "'base_rate' = equal positive rate in every group, 'size' = equal group sizes, 'none' = as drawn",
    )

    @model_validator(mode="after")
    def _csv_needs_columns(self) -> DataConfig:
        if self.dataset == "csv" and not (self.csv and self.target and self.sensitive):
            raise ValueError("dataset=csv needs csv, target and sensitive")
        return self


class PretrainConfig(_Settings):
    """The pre-trained MLP (paper: a 2-layer ReLU MLP) and how it is trained on the source split."""

    hidden: tuple[int, ...] = Field((64, 32), description="hidden layer widths")
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    weight_decay: float = Field(0.0, ge=0)

    @field_validator("hidden")
    @classmethod
    def _widths_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 for width in value):
            raise ValueError("hidden widths must be >= 1")
        return value


class FinetuneGrid(_Settings):
    """Hyperparameters searched on the validation split (only), per method and seed."""

    ranks: tuple[int, ...] = Field((1, 2), description="ranks r for svd/win")
    rank_fractions: tuple[float, ...] = Field(
        (0.25, 0.5, 1.0), description="ranks of the deep variants (win-hidden, ...) as fractions f of each layer's max rank: ceil(f·min(d,k))"
    )
    lrs: tuple[float, ...] = Field((1e-3, 1e-2), description="learning rates")
    epochs: tuple[int, ...] = Field((5, 20), description="fine-tuning epochs T")
    operators: tuple[Operator, ...] = Field(("mean", "geometric", "min", "harmonic", "pooled"))
    fisher: FisherKind = Field("empirical", description="empirical (data labels) or true (model labels) Fisher")
    batch_size: int = Field(256, ge=1)
    selection: SelectionMetric = Field("err", description="validation metric minimized to choose settings")
    retrain_scope: RetrainScope = Field(
        "all", description="what retrain-eo/retrain-dp update: 'all' = every parameter of the pre-trained model, 'last' = the target layer"
    )

    @field_validator("ranks")
    @classmethod
    def _ranks_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError("ranks must be >= 1")
        return value

    @field_validator("rank_fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or min(value) <= 0 or max(value) > 1:
            raise ValueError("rank fractions must be in (0, 1]")
        return value

    @field_validator("lrs", "epochs", "operators")
    @classmethod
    def _non_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("the grid needs at least one value")
        return value

    @field_validator("lrs")
    @classmethod
    def _lrs_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < lr < float("inf") for lr in value):  # also refuses nan
            raise ValueError("learning rates must be > 0 and finite")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if min(value) < 1:
            raise ValueError("epochs must be >= 1")
        return value
