"""The method catalogue: one place for a method's name, label, value and implementation."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fairtune import FairFineTuner, catalogue
from fairtune.catalogue import CATALOGUE, METHOD_NAMES, MethodInfo, MethodSpec, help_text, method_label, parse_methods
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig
from fairtune.errors import ConfigError
from fairtune.experiments import RunConfig, run
from fairtune.methods import HeadMethod, ModelMethod, build_method
from fairtune.methods.base import train_fitted, training_grid

SOURCE = Path(__file__).resolve().parents[1] / "src" / "fairtune"


@pytest.mark.parametrize(("text", "name", "value", "fraction", "label"), [
    ("win", "win", None, None, "WIN"),
    ("retrain-eo:0.1", "retrain-eo", 0.1, None, "Retrain+EO λ=0.1"),
    ("win-anchor:2", "win-anchor", 2.0, None, "WIN + anchor μ=2"),
    ("win-hidden@0.25", "win-hidden", None, 0.25, "WIN (hidden) f=0.25"),
    ("tl-anchor:0.5@1", "tl-anchor", 0.5, 1.0, "TL + anchor μ=0.5 f=1"),
    ("tl-eo-thr:0.05", "tl-eo-thr", 0.05, None, "TL (ΔEO≤0.05, thresholds)"),
    ("win-dp-rthr:0.1", "win-dp-rthr", 0.1, None, "WIN (ΔDP≤0.1, randomized thresholds)"),
])
def test_a_spec_parses_formats_and_labels(text, name, value, fraction, label):
    spec = MethodSpec.parse(text)
    assert (spec.name, spec.value, spec.fraction) == (name, value, fraction)
    assert str(spec) == text and MethodSpec.parse(str(spec)) == spec
    assert spec.label == label == method_label(text)


@pytest.mark.parametrize(("text", "message"), [
    ("nosuch", "unknown method 'nosuch'; available: tl, svd, win"),
    ("tl:0.5", "method 'tl' takes no ':value' suffix"),
    ("retrain-eo:nan", "λ of 'retrain-eo' must be a finite number >= 0, got 'nan'"),
    ("win-anchor:inf", "μ of 'win-anchor' must be a finite number >= 0, got 'inf'"),
    ("win-anchor:-1", "μ of 'win-anchor' must be a finite number >= 0"),
    ("win-hidden@0", "rank fraction of 'win-hidden@0' must be a number in (0, 1]"),
    ("win-hidden@x", "rank fraction"),
    ("pretrained:1", "unknown method"),
])
def test_a_bad_spec_is_a_one_line_config_error(text, message):
    with pytest.raises(ConfigError) as error:
        MethodSpec.parse(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_repeated_method_is_refused():
    with pytest.raises(ConfigError, match="method\\(s\\) tl listed more than once"):
        parse_methods(["tl", "svd", "tl"])
    with pytest.raises(ConfigError, match="retrain-eo:0.5 listed more than once"):
        RunConfig(methods=("retrain-eo:0.5", "retrain-eo:0.50"))


def test_every_entry_builds_the_protocol_its_inputs_name():
    for name, info in CATALOGUE.items():
        method = build_method(name)
        expected = ModelMethod if info.inputs == "model" else HeadMethod
        assert isinstance(method, expected), name
        assert info.label and info.description and re.fullmatch(r"#[0-9a-f]{6}", info.colour), name
    assert isinstance(build_method("retrain-eo", FinetuneGrid(retrain_scope="last")), HeadMethod)


def test_every_targetable_method_has_each_target_form_and_targeted_names_it():
    for base in catalogue.TARGETABLE:
        for suffix, (constrained, rule, _, _) in catalogue.TARGET_FORMS.items():
            info = CATALOGUE[f"{base}-eo{suffix}"]
            needs_s = rule in ("deterministic", "randomized")  # a proxy rule infers the groups from the inputs
            assert (info.base, info.constrained, info.thresholds, info.sensitive_at_prediction) == (base, constrained, rule, needs_s)
    assert catalogue.targeted("win", "dp", 0.1, "randomized") == "win-dp-rthr:0.1"
    assert catalogue.targeted("tl", "eo", 0.05, "proxy") == "tl-eo-pthr:0.05"
    assert catalogue.targeted("tl", "eo", 0.05, True) == catalogue.targeted("tl", "eo", 0.05, "deterministic") == "tl-eo-thr:0.05"
    assert catalogue.targeted("tl", "eo", 0.05, False) == catalogue.targeted("tl", "eo", 0.05) == "tl-eo:0.05"
    with pytest.raises(ConfigError, match="thresholds must be 'deterministic', 'randomized' or 'proxy', got 'both'"):
        catalogue.targeted("tl", "eo", 0.05, "both")


def test_the_help_text_names_every_method():
    text = help_text()
    for name in METHOD_NAMES:
        if CATALOGUE[name].family == "target":  # summarised once: METHOD-eo:ε for METHOD in ...
            assert CATALOGUE[name].base in text.split("for METHOD in ")[1], name
        else:
            assert f"{name}:" in text, name
    assert "retrain-eo:λ" in text and "win-anchor:μ" in text and "METHOD-eo:ε / METHOD-dp:ε" in text


def test_the_catalogue_does_not_import_torch():
    code = "import sys, fairtune.catalogue; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_no_method_spec_is_parsed_outside_the_catalogue():
    pattern = re.compile(r"""(split|partition)\(\s*["'][:@]["']""")
    offenders = [f"{path.relative_to(SOURCE)}:{number}" for path in SOURCE.rglob("*.py") if path.name != "catalogue.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


class BiasOnly(HeadMethod):
    """A toy method: fine-tune only the target layer's bias."""

    def candidates(self, layer, grid):
        return training_grid(grid)

    def fit(self, target, train, context, params, **kwargs):
        head = copy.deepcopy(target).requires_grad_(False)
        head.bias.requires_grad_(True)
        return train_fitted(head, train, lr=params.lr, **kwargs)


def test_a_new_method_is_one_class_plus_one_catalogue_entry(monkeypatch, write_csv, tmp_path):
    entry = MethodInfo("bias", "Bias only", "fine-tune only the target layer's bias", "baseline", "features",
                       f"{__name__}:BiasOnly.from_spec", "#aaaaaa", estimator_args=("lr",))
    monkeypatch.setitem(CATALOGUE, "bias", entry)
    monkeypatch.setattr(catalogue, "METHOD_NAMES", (*METHOD_NAMES, "bias"))

    data = DataConfig(dataset="csv", csv=str(write_csv(n_rows=600)), target="label", sensitive="group", positive="yes")
    config = RunConfig(data=data, pretrain=PretrainConfig(hidden=(8,), epochs=2), methods=("tl", "bias"), seeds=(0,),
                       finetune=FinetuneGrid(lrs=(0.01,), epochs=(2,)), cache_dir=str(tmp_path / "cache"))
    result = run(config, progress=False)
    assert list(result.results["method"]) == ["pretrained", "tl", "bias"]
    assert result.results.set_index("method").loc["bias", "trainable_params"] == 2
    assert method_label("bias") == "Bias only"

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(100, 3)
    tuner = FairFineTuner(model, method="bias", epochs=1).fit(x, (x[:, 0] > 0).long(), sensitive_features=(x[:, 1] > 0).long())
    assert tuner.trainable_params_ == 2
    torch.testing.assert_close(tuner.model_[2].weight, model[2].weight)
