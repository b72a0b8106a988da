"""The catalogue of fine-tuning methods: what only it knows, read by everything else.

Each method has one :class:`MethodInfo` entry: its name, display label, description, the
symbol of the value its spec may carry (λ, μ or none), its family, the inputs it trains on
and the import path of its implementation. The registry, the report labels and colours, the
study grouping, sweep validation and the CLI help all read this table; adding a method is
one module plus one entry here.

Fairness targets are methods too: ``win-eo:0.05`` is WIN fine-tuned to ΔEO ≤ ε = 0.05
(constrained training, settings chosen among those that meet ε on validation);
``win-eo-thr:0.05`` is WIN fine-tuned as without a target, then per-group decision thresholds
meeting ε, and ``win-eo-rthr:0.05`` randomized ones (both need the sensitive attribute at
prediction time). They exist for every method in :data:`TARGETABLE`, for ``eo`` and ``dp``, in
each form of :data:`TARGET_FORMS`.

A method *spec* names a method and, where it takes one, its value; the neutralization
study adds a rank fraction: ``name[:value][@fraction]``, e.g. ``retrain-eo:0.1`` (λ = 0.1),
``win-anchor:2`` (μ = 2), ``win-hidden@0.25``. :class:`MethodSpec` is the one parser and
formatter of that syntax.

This module imports neither torch nor the implementations, so that ``fairtune --help`` and
the reports stay fast.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import REPEATED_METHODS, ConfigError

Family = Literal["reference", "baseline", "win", "regularizer", "variant", "peer", "target"]
Inputs = Literal["features", "model"]
#: Decision rules after fine-tuning: one threshold per group, a mixture of thresholds per group, or a mixture
#: per cell of the groups inferred from the inputs (no sensitive attribute at prediction time).
ThresholdRule = Literal["deterministic", "randomized", "proxy"]
#: The rules that decide by the sensitive attribute itself, which prediction then needs.
RULES_NEEDING_S: tuple[ThresholdRule, ...] = ("deterministic", "randomized")

UNKNOWN_METHOD = "unknown method {name!r}; available: {available}"
NO_VALUE = "method {name!r} takes no ':value' suffix (only {takers} do), got {spec!r}"
BAD_VALUE = "{symbol} of {name!r} must be a finite number {bounds}, got {value!r}"
NOT_TARGETABLE = "method {method!r} cannot take a fairness target; targets apply to: {targetable}"
BAD_CONSTRAINT = "unknown fairness constraint {constraint!r}; use eo or dp"
BAD_FRACTION = "rank fraction of {spec!r} must be a number in (0, 1], got {value!r}"


@dataclass(frozen=True)
class MethodValue:
    """The value a spec's ``:value`` suffix sets: its symbol, meaning and default."""

    symbol: str
    meaning: str
    default: float
    #: Largest value allowed (None: unbounded). Values are finite and >= 0; > 0 where ``positive``.
    maximum: float | None = None
    positive: bool = False

    def allows(self, value: float) -> bool:
        return (math.isfinite(value) and (value > 0 if self.positive else value >= 0)
                and (self.maximum is None or value < self.maximum))

    @property
    def bounds(self) -> str:
        low = "> 0" if self.positive else ">= 0"
        return low if self.maximum is None else f"{low} and < {self.maximum:g}"


@dataclass(frozen=True)
class MethodInfo:
    """What defines a method, apart from its code.

    ``inputs`` is what it trains on: ``"features"`` (the target layer's cached inputs) or
    ``"model"`` (the whole model on its raw inputs). ``implementation`` is
    ``"module:attribute"`` of a callable ``(spec, grid) -> method`` imported on first use.
    ``estimator_args`` are the :class:`~fairtune.FairFineTuner` arguments it uses.
    """

    name: str
    label: str
    description: str
    family: Family
    inputs: Inputs
    implementation: str
    colour: str
    value: MethodValue | None = None
    uses_importance: bool = False
    estimator_args: tuple[str, ...] = ()
    #: For a fairness target: the method it applies to, the gap (``"eo"``/``"dp"``), whether the
    #: method is given the target to meet while it fits (constrained fine-tuning, a tolerance peer),
    #: and the per-group decision rule fitted after (which needs the sensitive attribute to predict).
    base: str | None = None
    constraint: Literal["eo", "dp"] | None = None
    constrained: bool = False
    thresholds: ThresholdRule | None = None
    #: How the target is made to hold on new data (``FairnessTarget.estimate``: "expected", "upper", "sample").
    estimate: str = "expected"
    #: Whether its predictions need the sensitive attribute (per-group rules).
    sensitive_at_prediction: bool = False

    def load(self) -> Any:
        """The implementation's factory ``(spec, grid) -> method``."""
        module, _, path = self.implementation.partition(":")
        target: Any = importlib.import_module(module)
        for attribute in path.split("."):
            target = getattr(target, attribute)
        return target


_LAMBDA = MethodValue("λ", "regularizer intensity", 0.5)
_MU = MethodValue("μ", "anchor strength", 1.0)
_EPSILON = MethodValue("ε", "tolerance of the gap", 0.05, maximum=2.0, positive=True)
_HEAD = ("lr",)
_LOWRANK = ("rank", "lr")
_WIN = ("rank", "operator", "fisher", "lr")


def _entries() -> tuple[MethodInfo, ...]:
    m = "fairtune.methods."
    return (
        MethodInfo("pretrained", "pre-trained", "the pre-trained model as it is, before fine-tuning",
                   "reference", "features", m + "base:Pretrained.from_spec", "#7f7f7f"),
        MethodInfo("tl", "TL", "fine-tune the original target layer (transfer learning)",
                   "baseline", "features", m + "base:TransferLearning.from_spec", "#1f77b4", estimator_args=_HEAD),
        MethodInfo("svd", "f+SVD", "factorize the target layer by plain SVD and fine-tune both factors",
                   "baseline", "features", m + "lowrank:PlainSVD.from_spec", "#ff7f0e", estimator_args=_LOWRANK),
        MethodInfo("win", "WIN", "factorize the target layer by SVD weighted with the neutralized per-group Fisher "
                   "(the paper's method)", "win", "features", m + "lowrank:WeightImportanceNeutralization.from_spec",
                   "#2ca02c", uses_importance=True, estimator_args=_WIN),
        MethodInfo("retrain-eo", "Retrain+EO", "fine-tune with a relaxed equalized-odds regularizer of intensity λ",
                   "regularizer", "model", m + "retrain:retrain_eo", "#d62728", _LAMBDA),
        MethodInfo("retrain-dp", "Retrain+DP", "fine-tune with a relaxed demographic-parity regularizer of intensity λ",
                   "regularizer", "model", m + "retrain:retrain_dp", "#17becf", _LAMBDA),
        MethodInfo("logreg", "LogReg", "a new logistic-regression head on the same features (scikit-learn)",
                   "peer", "features", m + "peers:LogisticRegressionHead.from_spec", "#8c564b"),
        MethodInfo("fairlearn-eg-eo", "EG+EO", "fairlearn ExponentiatedGradient with EqualizedOdds around the logistic regression",
                   "peer", "features", m + "peers:ExponentiatedGradientEO.from_spec", "#9467bd"),
        MethodInfo("fairlearn-eg-dp", "EG+DP", "fairlearn ExponentiatedGradient with DemographicParity around the logistic regression",
                   "peer", "features", m + "peers:ExponentiatedGradientDP.from_spec", "#c5b0d5"),
        MethodInfo("fairlearn-to-eo", "TO+EO", "fairlearn ThresholdOptimizer (equalized odds) on the logistic regression; "
                   "needs the sensitive attribute to predict", "peer", "features",
                   m + "peers:ThresholdOptimizerEO.from_spec", "#e377c2", sensitive_at_prediction=True),
        MethodInfo("fairlearn-to-dp", "TO+DP", "fairlearn ThresholdOptimizer (demographic parity) on the logistic regression; "
                   "needs the sensitive attribute to predict", "peer", "features",
                   m + "peers:ThresholdOptimizerDP.from_spec", "#f7b6d2", sensitive_at_prediction=True),
        MethodInfo("errorparity-eo", "RTO (ΔEO≤ε)", "error-parity RelaxedThresholdOptimizer (l1 = our ΔEO) at tolerance ε on the "
                   "logistic regression; needs the sensitive attribute to predict (pip install --no-deps error-parity)",
                   "peer", "features", m + "tolerance_peers:RelaxedThresholdMethod.from_spec", "#17a2b8", _EPSILON,
                   constraint="eo", constrained=True, sensitive_at_prediction=True),
        MethodInfo("errorparity-dp", "RTO (ΔDP≤ε)", "error-parity RelaxedThresholdOptimizer (demographic parity) at tolerance ε; "
                   "needs the sensitive attribute to predict", "peer", "features",
                   m + "tolerance_peers:RelaxedThresholdMethod.from_spec", "#0e6674", _EPSILON, constraint="dp",
                   constrained=True, sensitive_at_prediction=True),
        MethodInfo("fairret-eo", "fairret (ΔEO≤ε)", "fairret NormLoss (TPR and FPR) added to TL's loss, strength and lr chosen "
                   "on validation under ΔEO ≤ ε", "peer", "features", m + "tolerance_peers:FairretMethod.from_spec",
                   "#ffbb78", _EPSILON, constraint="eo", constrained=True),
        MethodInfo("fairret-dp", "fairret (ΔDP≤ε)", "fairret NormLoss (positive rate) added to TL's loss, strength and lr chosen "
                   "on validation under ΔDP ≤ ε", "peer", "features", m + "tolerance_peers:FairretMethod.from_spec",
                   "#c49c94", _EPSILON, constraint="dp", constrained=True),
        MethodInfo("win-hidden", "WIN (hidden)", "WIN on the last hidden layer (weighted SVD with its neutralized Fisher), "
                   "fine-tune its factors", "variant", "model", m + "deep:WIN_HIDDEN", "#bcbd22", uses_importance=True),
        MethodInfo("svd-hidden", "f+SVD (hidden)", "plain SVD of the last hidden layer, fine-tune its factors (control for win-hidden)",
                   "variant", "model", m + "deep:SVD_HIDDEN", "#dbdb8d"),
        MethodInfo("win-all", "WIN (all layers)", "WIN on every linear layer, fine-tune all factors",
                   "variant", "model", m + "deep:WIN_ALL", "#393b79", uses_importance=True),
        MethodInfo("svd-all", "f+SVD (all layers)", "plain SVD of every linear layer, fine-tune all factors (control for win-all)",
                   "variant", "model", m + "deep:SVD_ALL", "#637939"),
        MethodInfo("tl-anchor", "TL + anchor", "TL with the neutralized Fisher as an EWC anchor of strength μ",
                   "variant", "features", m + "deep:TL_ANCHOR", "#8c6d31", _MU, uses_importance=True,
                   estimator_args=("operator", "fisher", "lr")),
        MethodInfo("win-anchor", "WIN + anchor", "WIN (last layer) plus the neutralized-Fisher anchor of strength μ",
                   "variant", "features", m + "deep:WIN_ANCHOR", "#843c39", _MU, uses_importance=True,
                   estimator_args=_WIN),
        MethodInfo("tl-all-anchor", "TL (all layers) + anchor", "fine-tune every linear layer with the neutralized-Fisher anchor of strength μ",
                   "variant", "model", m + "deep:TL_ALL_ANCHOR", "#7b4173", _MU, uses_importance=True),
        MethodInfo("win-hidden-anchor", "WIN (hidden) + anchor", "WIN on the last hidden layer plus the anchor of strength μ",
                   "variant", "model", m + "deep:WIN_HIDDEN_ANCHOR", "#5254a3", _MU, uses_importance=True),
    )


#: Methods that a fairness target can apply to (they train with cross-entropy by Adam).
TARGETABLE: tuple[str, ...] = ("tl", "svd", "win", "win-hidden", "svd-hidden")
_GAPS = {"eo": "ΔEO", "dp": "ΔDP"}
#: How a target is met, by spec suffix: whether the method is fine-tuned subject to it (else it is
#: fine-tuned and selected as without a target), the per-group rule fitted after, the target's
#: estimate (``FairnessTarget.estimate``) and the words of its description. Each choice is the one
#: measured best on Adult, 10 seeds (``docs/fairness_target.md``): thresholds on the plain model
#: beat thresholds on the constrained one; randomized rules meet ε on test with the "upper" bound,
#: which deterministic ones pay more Err for than with "expected".
TARGET_FORMS: dict[str, tuple[bool, ThresholdRule | None, str, str]] = {
    "": (True, None, "expected", "fine-tuned subject to {gap} ≤ ε (Lagrange multipliers), settings chosen among those "
                                 "that meet ε on validation"),
    "-thr": (False, "deterministic", "expected", "fine-tuned as without a target, then one decision threshold per group "
                                                 "meeting {gap} ≤ ε (needs the sensitive attribute at prediction time)"),
    "-rthr": (False, "randomized", "upper", "fine-tuned as without a target, then randomized per-group thresholds (a "
                                            "mixture of thresholds, drawn from the seed) meeting {gap} ≤ ε in expectation "
                                            "with the new split's noise added in full, at less Err (needs the sensitive "
                                            "attribute at prediction time)"),
    "-pthr": (False, "proxy", "upper", "fine-tuned as without a target, then randomized thresholds per cell of the group "
                                       "inferred from the inputs (a logistic regression of the sensitive attribute, fitted "
                                       "on train+val) meeting {gap} ≤ ε in expectation with the new split's noise added in "
                                       "full (no sensitive attribute at prediction time)"),
}
_RULE_LABELS = {None: "", "deterministic": ", thresholds", "randomized": ", randomized thresholds",
                "proxy": ", inferred-group thresholds"}
BAD_THRESHOLDS = "thresholds must be 'deterministic', 'randomized' or 'proxy', got {value!r}"
#: Colours of the fairness targets, in TARGETABLE's order and per base eo, eo-thr, eo-rthr, eo-pthr, dp, dp-thr,
#: dp-rthr, dp-pthr (mostly matplotlib's tab20c and tab20b, distinct from the methods' own).
_TARGET_COLOURS = (
    "#e6550d", "#fd8d3c", "#bd9e39", "#8c2d04", "#fdae6b", "#fdd0a2", "#e7ba52", "#a63603",  # tl: oranges, golds
    "#756bb1", "#9e9ac8", "#a55194", "#54278f", "#bcbddc", "#dadaeb", "#ce6dbd", "#3f007d",  # svd: purples, pinks
    "#31a354", "#74c476", "#8ca252", "#006d2c", "#a1d99b", "#c7e9c0", "#b5cf6b", "#00441b",  # win: greens
    "#636363", "#969696", "#ad494a", "#252525", "#bdbdbd", "#d9d9d9", "#d6616b", "#000000",  # win-hidden: greys, reds
    "#3182bd", "#6baed6", "#6b6ecf", "#08519c", "#9ecae1", "#c6dbef", "#9c9ede", "#08306b",  # svd-hidden: blues
)


def threshold_rule(value: object) -> ThresholdRule | None:
    """The decision rule a setting asks for: None/False (none), True or "deterministic", "randomized", "proxy"."""
    if value is None or value is False:
        return None
    if value is True:
        return "deterministic"
    if value not in ("deterministic", "randomized", "proxy"):
        raise ConfigError(BAD_THRESHOLDS.format(value=value))
    return value  # type: ignore[return-value]


def _targets(bases: dict[str, MethodInfo]) -> tuple[MethodInfo, ...]:
    """``{base}-{eo,dp}{form}``: each targetable method under a gap ≤ ε, in each of :data:`TARGET_FORMS`."""
    entries, colours = [], iter(_TARGET_COLOURS)
    for name in TARGETABLE:
        base = bases[name]
        for constraint, gap in _GAPS.items():
            value = MethodValue("ε", f"tolerance of {gap}", 0.05, maximum=2.0, positive=True)
            for suffix, (constrained, rule, estimate, how) in TARGET_FORMS.items():
                entries.append(MethodInfo(
                    f"{name}-{constraint}{suffix}", f"{base.label} ({gap}≤ε{_RULE_LABELS[rule]})",
                    f"{base.label} {how.format(gap=gap)}", "target", base.inputs, base.implementation, next(colours), value,
                    base.uses_importance, base.estimator_args, base=name, constraint=constraint, constrained=constrained,
                    thresholds=rule, estimate=estimate, sensitive_at_prediction=rule in RULES_NEEDING_S,
                ))
    return tuple(entries)


_BASES = {info.name: info for info in _entries()}
#: Every method by name, in the order of the help text and the reports.
CATALOGUE: dict[str, MethodInfo] = {**_BASES, **{info.name: info for info in _targets(_BASES)}}
#: The row of the model before fine-tuning, which every run reports.
PRETRAINED = "pretrained"
#: The methods a user chooses (all but the pre-trained reference).
METHOD_NAMES: tuple[str, ...] = tuple(name for name in CATALOGUE if name != PRETRAINED)
#: Colours of the values of a λ method in figures: darker for a larger λ.
_VALUE_SHADES: dict[str, dict[float, str]] = {
    "retrain-eo": {0.1: "#ff9896", 0.5: "#d62728", 0.9: "#8b0000"},
    "retrain-dp": {0.1: "#9edae5", 0.5: "#17becf", 0.9: "#0b5f66"},
}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class MethodSpec:
    """A parsed ``name[:value][@fraction]``: a catalogued method, its value and rank fraction.

    ``value`` is None for a bare name (the method's default applies); ``fraction`` is the
    rank fraction f of a neutralization-study rank sweep. ``str(spec)`` gives the canonical text.
    """

    name: str
    value: float | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """Parse and validate ``text``; a :class:`ConfigError` names what is wrong."""
        text = text.strip()
        base, has_fraction, fraction_text = text.partition("@")
        name, has_value, value_text = base.partition(":")
        info = CATALOGUE.get(name)
        if info is None or name == PRETRAINED and (has_value or has_fraction):
            raise ConfigError(UNKNOWN_METHOD.format(name=text, available=", ".join(METHOD_NAMES)))
        value = None
        if has_value:
            if info.value is None:
                takers = ", ".join(f"{n}:{i.value.symbol}" for n, i in CATALOGUE.items() if i.value is not None)
                raise ConfigError(NO_VALUE.format(name=name, takers=takers, spec=text))
            value = _number(value_text)
            if value is None or not info.value.allows(value):
                raise ConfigError(BAD_VALUE.format(symbol=info.value.symbol, name=name, bounds=info.value.bounds, value=value_text))
        fraction = None
        if has_fraction:
            fraction = _number(fraction_text)
            if fraction is None or not 0 < fraction <= 1:
                raise ConfigError(BAD_FRACTION.format(spec=text, value=fraction_text))
        return cls(name, value, fraction)

    @property
    def info(self) -> MethodInfo:
        return CATALOGUE[self.name]

    @property
    def method(self) -> str:
        """The spec without its rank fraction: what a run is asked to fit."""
        return self.name if self.value is None else f"{self.name}:{self.value:g}"

    def __str__(self) -> str:
        return self.method if self.fraction is None else f"{self.method}@{self.fraction:.3g}"

    @property
    def label(self) -> str:
        """Display name: ``"Retrain+EO λ=0.1"``, ``"WIN + anchor μ=2"``, ``"WIN (hidden) f=0.25"``."""
        info = self.info
        if info.constraint is not None:  # "WIN (ΔEO≤0.05)", "WIN (ΔEO≤0.05, thresholds)", "RTO (ΔEO≤0.05)"
            value = info.value.default if self.value is None else self.value
            label = info.label.replace("≤ε", f"≤{value:g}")
        else:
            label = info.label if self.value is None else f"{info.label} {info.value.symbol}={self.value:g}"
        return label if self.fraction is None else f"{label} f={self.fraction:.3g}"

    @property
    def colour(self) -> str:
        """The one colour of this spec in every figure."""
        shades = _VALUE_SHADES.get(self.name, {})
        return shades.get(self.value if self.value is not None else self.info.value.default, self.info.colour) \
            if shades else self.info.colour


def parse_methods(texts: tuple[str, ...] | list[str]) -> tuple[MethodSpec, ...]:
    """Parse each spec; a repeated method is an error (it would be reported over twice the seeds)."""
    specs = tuple(MethodSpec.parse(text) for text in texts)
    names = [str(spec) for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(REPEATED_METHODS.format(names=", ".join(repeated)))
    return specs


def method_label(text: str) -> str:
    """Display name of a spec's text; text that names no method is shown as it is."""
    try:
        return MethodSpec.parse(text).label
    except ConfigError:
        return text


def help_text() -> str:
    """For ``--help``: ``name[:value]: description`` per method; the fairness targets summarised once."""
    parts = []
    for name in METHOD_NAMES:
        info = CATALOGUE[name]
        if info.family == "target":
            continue
        value = f":{info.value.symbol} ({info.value.meaning}, default {info.value.default:g})" if info.value else ""
        parts.append(f"{name}{value}: {info.description}")
    parts.append(f"fairness targets METHOD-eo:ε / METHOD-dp:ε for METHOD in {', '.join(TARGETABLE)}: fine-tune subject to "
                 "ΔEO / ΔDP ≤ ε (default 0.05), settings chosen among those meeting ε on validation; "
                 "METHOD-eo-thr:ε / METHOD-dp-thr:ε: fine-tune as without a target, then one decision threshold per group "
                 "meeting ε; METHOD-eo-rthr:ε / METHOD-dp-rthr:ε: randomized per-group thresholds instead, at less Err "
                 "(both need the sensitive attribute at prediction time)")
    return "; ".join(parts)


def targeted(method: str, constraint: str, tolerance: float, thresholds: ThresholdRule | None = None) -> str:
    """The spec of ``method`` under a fairness target: ``targeted("win", "eo", 0.05)`` -> ``"win-eo:0.05"``,
    ``targeted("tl", "eo", 0.1, "randomized")`` -> ``"tl-eo-rthr:0.1"``."""
    spec = MethodSpec.parse(method)
    if spec.name not in TARGETABLE or spec.value is not None:
        raise ConfigError(NOT_TARGETABLE.format(method=method, targetable=", ".join(TARGETABLE)))
    if constraint not in _GAPS:
        raise ConfigError(BAD_CONSTRAINT.format(constraint=constraint))
    suffix = next(suffix for suffix, (_, rule, _, _) in TARGET_FORMS.items() if rule == threshold_rule(thresholds))
    return str(MethodSpec.parse(f"{spec.name}-{constraint}{suffix}:{tolerance}"))
