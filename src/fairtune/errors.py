"""The errors fairtune raises for problems a user can fix.

Every error a user can act on is a :class:`FairtuneError`; the CLI prints its message as
one line and exits with a non-zero code, without a traceback. Messages are module-level
templates so that tests can assert the exact text.
"""

from __future__ import annotations


class FairtuneError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code: int = 2


class DataError(FairtuneError):
    """The data cannot be used as given (missing file or column, NaN, bad labels)."""


class ModelError(FairtuneError):
    """The model cannot be used as given (no such linear layer, bad checkpoint)."""


class ConfigError(FairtuneError):
    """A setting is out of range or of the wrong type."""


class UndefinedMetricError(FairtuneError):
    """A fairness metric is undefined on the given data (e.g. a group with no positives)."""


SINGLE_GROUP = "sensitive attribute {name!r} has a single group ({group!r}); at least 2 are needed"
NAN_FEATURES = "features contain {count} missing/NaN value(s) (columns: {columns})"
NON_BINARY_LABELS = (
    "label {name!r} is not binary: found {count} distinct values ({values}); "
    "pass the positive value (--positive VALUE) to binarize it"
)
MISSING_FILE = "file not found: {path}"
MISSING_COLUMN = "column {column!r} not found in {source}; available: {available}"
NO_LINEAR_LAYER = "model has no nn.Linear layer named {name!r}; linear layers: {available}"
NOT_LINEAR = "module {name!r} is a {kind}, not an nn.Linear; fairtune only factorizes nn.Linear"
RANK_TOO_LARGE = "rank {rank} is larger than allowed for a {rows}x{cols} layer (max {max_rank})"
RANK_TOO_SMALL = "rank must be >= 1, got {rank}"
NOT_BINARY_HEAD = "layer {name!r} has {outputs} outputs; fairtune fine-tunes binary classifiers (2 outputs: logits of Y=0, Y=1)"
MISSING_LABELS_OR_GROUPS = "fit needs labels y and sensitive_features (or a DataLoader of (x, y, s) batches)"
ROOT_NOT_REPLACEABLE = "the model is itself the nn.Linear to replace; wrap it (nn.Sequential(model)) to replace it in place"
LENGTH_MISMATCH = "X, y and sensitive_features have different lengths: {x}, {y}, {s}"

# --- input checks (issue 13, reliability) ---
INFINITE_FEATURES = "features contain {count} infinite value(s) (columns: {columns}); they are treated as missing"
DUPLICATE_COLUMNS = "{source} has duplicate column name(s) {names}; rename them so each column has one name"
NO_ROWS = "{source} has no data rows (only a header)"
EMPTY_COLUMN = "column {column!r} has no value in any row, so --drop-missing would drop every row"
NOT_A_FILE = "{path} is a folder, not a file"
TOO_MANY_GROUPS = (
    "sensitive attribute {name!r} has {count} distinct values, more than the {limit} groups fairtune accepts; "
    "is it continuous? bin it into groups first (e.g. pandas.cut)"
)
SMALL_GROUP = (
    "group {group!r} of {column!r} has {rows} rows ({positives} positive, {negatives} negative): too few to put "
    "both labels in each of the {parts} splits (at least {parts} of each label); {remedy}"
)
GROUP_WITHOUT_LABEL = (
    "group {group!r} of {column!r} has no {label} sample in its {rows} rows, so its {rate} is undefined (and ΔEO with it); {remedy}"
)
MERGE_REMEDY = "pass --min-group-size {size} to merge the groups with fewer rows into {other!r}"
NO_MERGE_REMEDY = "no --min-group-size gives every group both labels in every split: the data set needs more rows of both labels"
TOO_MANY_STRATA = (
    "the {where} split has {size} rows, fewer than the {strata} (group, label) combinations it must hold; "
    "use a larger --split or --min-group-size"
)
MERGED_GROUPS = "merged {count} group(s) of {column!r} with fewer than {minimum} rows ({names}) into {other!r} ({rows} rows)"
GROUPS_ABSENT = "the {where} split has no sample of group(s) {groups}"
REPEATED_METHODS = "method(s) {names} listed more than once; list each method once"
NOT_A_STATE_DICT = (
    "weights {path} are not a plain state dict: the file pickles code (e.g. a whole model object), which fairtune "
    "does not load; convert it in a trusted session: torch.save(torch.load(path, weights_only=False).state_dict(), 'plain.pt')"
)
NON_BINARY_LABELS_API = (
    "label {name!r} is not binary 0/1: found {count} distinct values ({values}); "
    "map it to 0/1 first, e.g. y = (y == POSITIVE_VALUE)"
)
NOT_A_LABEL_VECTOR = "y must be a vector of class labels, got shape {shape}; for one-hot labels pass y.argmax(1)"
NOT_A_TRIPLE = (
    "each batch must be (x, y, s), got {count} item(s); the sensitive features are needed too, "
    "e.g. TensorDataset(X, y, s)"
)
NO_SAMPLES = "X has no samples"
NO_SEEDS = "seeds is empty; give at least one seed"
