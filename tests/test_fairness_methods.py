"""Relaxed fairness gaps, the λ-regularizer, Retrain+EO/DP and the fair pre-training study."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig, SplitConfig
from fairtune.data import tabular_task
from fairtune.errors import ConfigError
from fairtune.experiments import compare_on_features, split_features
from fairtune.experiments.fair_pretraining import STUDY_COLUMNS, fair_pretraining_study, summarize_fair_pretraining
from fairtune.experiments.engine import NEEDS_INPUTS
from fairtune.factorization import count_parameters, find_linear
from fairtune.methods import build_method
from fairtune.methods.base import TrainParams
from fairtune.methods.fairness import BAD_INTENSITY, fairness_penalty, relaxed_dp_gap, relaxed_eo_gap, spread
from fairtune.metrics import delta_dp
from fairtune.models import pretrained_mlp
from fairtune.training import AutogradOnly, TrainingData

from conftest import generated_frame


# --- the relaxed gaps, against their definition ---------------------------------------------

def test_dp_gap_is_zero_for_equal_group_means_and_positive_otherwise():
    s = torch.tensor([0, 0, 1, 1])
    assert relaxed_dp_gap(torch.tensor([0.2, 0.8, 0.5, 0.5]), s).item() == pytest.approx(0.0)
    assert relaxed_dp_gap(torch.tensor([0.2, 0.4, 0.5, 0.9]), s).item() == pytest.approx(0.4)


def test_dp_gap_is_the_largest_pairwise_difference_of_group_means():
    probs = torch.tensor([0.1, 0.3, 0.9, 0.6, 0.4, 0.2])
    s = torch.tensor([0, 0, 1, 1, 2, 2])  # means 0.2, 0.75, 0.3
    assert relaxed_dp_gap(probs, s).item() == pytest.approx(0.55)


def test_dp_gap_skips_absent_groups_and_is_zero_with_a_single_group():
    probs = torch.tensor([0.1, 0.5, 0.9])
    assert relaxed_dp_gap(probs, torch.tensor([0, 2, 2])).item() == pytest.approx(0.6)
    assert relaxed_dp_gap(probs, torch.tensor([1, 1, 1])).item() == 0.0
    assert relaxed_dp_gap(torch.tensor([]), torch.tensor([], dtype=torch.long)).item() == 0.0


def test_eo_gap_sums_the_gaps_among_positives_and_among_negatives():
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4, 0.6, 0.1, 0.5, 0.3])
    y = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    tpr_gap = abs((0.9 + 0.7) / 2 - (0.6 + 0.1) / 2)
    fpr_gap = abs((0.2 + 0.4) / 2 - (0.5 + 0.3) / 2)
    assert relaxed_eo_gap(probs, y, s).item() == pytest.approx(tpr_gap + fpr_gap)
    equal = torch.tensor([0.9, 0.5, 0.2, 0.4, 0.5, 0.9, 0.4, 0.2])
    assert relaxed_eo_gap(equal, y, s).item() == pytest.approx(0.0)


def test_penalty_is_lambda_times_the_gap_of_the_softmax_probability():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.5], [0.3, 0.0]])
    y, s = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1])
    probs = logits.softmax(dim=1)[:, 1]
    assert fairness_penalty("dp", 0.7)(logits, y, s, nn.Identity()).item() == pytest.approx(0.7 * relaxed_dp_gap(probs, s).item())
    assert fairness_penalty("eo", 0.3)(logits, y, s, nn.Identity()).item() == pytest.approx(0.3 * relaxed_eo_gap(probs, y, s).item())


@pytest.mark.parametrize("kind", ["dp", "eo"])
def test_a_gradient_step_on_the_gap_reduces_it(kind):
    torch.manual_seed(0)
    x = torch.randn(200, 3)
    s = (torch.rand(200) < 0.5).long()
    x[:, 0] += 1.5 * s  # the first feature reveals the group
    y = (x[:, 0] + 0.3 * torch.randn(200) > 0.7).long()
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    penalty = fairness_penalty(kind, 1.0)
    before = penalty(head(x), y, s, head)
    before.backward()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter -= 2.0 * parameter.grad
    after = penalty(head(x), y, s, head)
    assert before.item() > 0.05
    assert after.item() < 0.95 * before.item()


@pytest.mark.parametrize("values", [[0.3, 0.7], [0.7, 0.3, 0.5], [0.5, 0.5], [0.2, 0.9, 0.9, 0.1], [0.4], [float("nan"), 0.2]])
def test_spread_is_max_minus_min_with_its_gradient_bit_for_bit(values):
    """A unique extreme is indexed, ties and NaN keep max() and min(): the same value and gradient either way."""
    results = []
    for gap in (spread, lambda v: v.max() - v.min()):
        leaf = (torch.tensor(values) * 3).requires_grad_(True)
        value = gap(leaf / 3)
        value.backward()
        results.append((value.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) or (results[0][0].isnan() and results[1][0].isnan())
    assert torch.equal(results[0][1], results[1][1]) or torch.equal(results[0][1].isnan(), results[1][1].isnan())


def _written_penalty(kind: str, lam: float, temperature: float, momentum: float):
    """The penalty as first written, all of it in torch: the reference of fairness_penalty's numbers."""
    averages: dict[int, torch.Tensor] = {}

    def dp_gap(probs, s):
        counts = torch.bincount(s, minlength=int(s.max()) + 1 if len(s) else 0)
        present = counts > 0
        if int(present.sum()) < 2:
            return probs.new_zeros(())
        means = probs.new_zeros(len(counts)).index_add(0, s, probs)[present] / counts[present].to(probs.dtype)
        return means.max() - means.min()

    def smoothed_gap(probs, s, rate):  # one count per group seen before: as written it failed when a batch lacked the highest
        counts = torch.bincount(s, minlength=max(int(s.max()) + 1 if len(s) else 0, len(averages.get(rate, ()))))
        if int((counts > 0).sum()) < 2:
            return probs.new_zeros(())
        means = probs.new_zeros(len(counts)).index_add(0, s, probs) / counts.clamp(min=1).to(probs.dtype)
        present = counts > 0
        previous = averages.get(rate)
        if previous is None or len(previous) < len(means):
            previous = torch.where(present, means.detach(), torch.full_like(means, float("nan")))
        average = torch.where(present & ~previous.isnan(), momentum * previous + (1 - momentum) * means.detach(), previous)
        average = torch.where(present & previous.isnan(), means.detach(), average)
        averages[rate] = average
        ranked = torch.where(present, average, torch.full_like(average, float("nan")))
        high = int(torch.nan_to_num(ranked, nan=-float("inf")).argmax())
        low = int(torch.nan_to_num(ranked, nan=float("inf")).argmin())
        return means[high] - means[low]

    def penalty(logits, y, s, module):
        probs = logits.softmax(dim=1)[:, 1] if temperature == 1.0 else torch.sigmoid((logits[:, 1] - logits[:, 0]) / temperature)
        if momentum == 0:
            positive = y == 1
            gap = dp_gap(probs[positive], s[positive]) + dp_gap(probs[~positive], s[~positive]) if kind == "eo" else dp_gap(probs, s)
        elif kind == "eo":
            gap = smoothed_gap(probs[y == 1], s[y == 1], 1) + smoothed_gap(probs[y == 0], s[y == 0], 0)
        else:
            gap = smoothed_gap(probs, s, 0)
        return lam * gap

    return penalty


def _awkward_batches(seed: int, one_label: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """60 batches of (logits, y, s): two or three groups, one group, a single row, tied group means (every 10th),
    and with ``one_label`` a batch of positives only."""
    generator = torch.Generator().manual_seed(seed)
    for batch in range(60):
        rows = 1 if batch == 7 else 24
        logits = torch.randn(rows, 2, generator=generator)
        y = torch.randint(0, 2, (rows,), generator=generator)
        s = torch.randint(0, 3 if batch % 3 == 0 else 2, (rows,), generator=generator)
        if batch % 11 == 5:
            s = torch.full((rows,), batch % 2)  # one group
        if one_label and batch % 13 == 4:
            y = torch.ones(rows, dtype=torch.long)  # one label
        if batch % 10 == 9:
            logits = torch.zeros(rows, 2)  # every group mean equal: ties
        yield logits, y, s


@pytest.mark.parametrize("kind", ["eo", "dp"])
@pytest.mark.parametrize(("temperature", "momentum"), [(1.0, 0.0), (0.3, 0.95), (0.3, 0.0), (1.0, 0.9)])
@pytest.mark.parametrize("lam", [0.7, 0.0])
def test_the_penalty_keeps_the_numbers_of_its_written_graph(kind, temperature, momentum, lam):
    """The penalty's averages live in NumPy and a unique extreme is indexed instead of max()/min(), for speed; its
    value and the gradient it sends to the logits (beside a cross-entropy) stay bit for bit those of the graph as
    written, over batches with two or three groups, a group or a label absent, tied group means and a single row."""
    ours, reference = fairness_penalty(kind, lam, temperature=temperature, momentum=momentum), _written_penalty(kind, lam, temperature, momentum)
    for batch, (logits, y, s) in enumerate(_awkward_batches(seed=0, one_label=True)):
        values, grads = [], []
        for penalty in (ours, reference):
            leaf = logits.clone().requires_grad_(True)
            value = penalty(leaf, y, s, nn.Identity())
            (torch.nn.functional.cross_entropy(leaf, y) + value).backward()
            values.append(value.detach())
            grads.append(leaf.grad)
        assert torch.equal(values[0], values[1]), batch
        assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0].signbit(), grads[1].signbit()), batch


@pytest.mark.parametrize("kind", ["eo", "dp"])
@pytest.mark.parametrize(("temperature", "momentum"), [(1.0, 0.0), (0.3, 0.95), (0.3, 0.0), (1.0, 0.9)])
@pytest.mark.parametrize("lam", [0.7, 0.0])
def test_logits_grad_is_the_gradient_autograd_gives_the_written_graph(kind, temperature, momentum, lam):
    """The penalty's gradient without autograd (for the explicit MLP step) equals, bit for bit, autograd's through the
    graph as written; None where that graph has no gradient; tied means without momentum are left to autograd."""
    ours, reference = fairness_penalty(kind, lam, temperature=temperature, momentum=momentum), _written_penalty(kind, lam, temperature, momentum)
    for batch, (logits, y, s) in enumerate(_awkward_batches(seed=1, one_label=False)):
        leaf = logits.clone().requires_grad_(True)
        value = reference(leaf, y, s, nn.Identity())
        if value.requires_grad:
            value.backward()
        try:
            grad = ours.logits_grad(logits, y, s)
        except AutogradOnly:
            assert momentum == 0 and batch % 10 == 9, batch
            continue
        if leaf.grad is None:
            assert grad is None, batch
        else:
            assert torch.equal(grad, leaf.grad) and torch.equal(grad.signbit(), leaf.grad.signbit()), batch


def test_the_momentum_penalty_takes_a_batch_without_the_highest_group_seen_before():
    penalty = fairness_penalty("dp", 1.0, momentum=0.9)
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.5], [0.3, 0.0]])
    y = torch.tensor([1, 0, 1, 0])
    penalty(logits, y, torch.tensor([0, 1, 2, 2]), nn.Identity())
    probs = logits.softmax(dim=1)[:, 1]
    gap = penalty(logits, y, torch.tensor([0, 0, 1, 1]), nn.Identity())  # group 2 absent: the gap of groups 0 and 1
    assert gap.item() == pytest.approx(abs(probs[:2].mean() - probs[2:].mean()).item())


@pytest.mark.parametrize("value", ["-0.1", "abc", "nan", "inf", ""])
def test_a_bad_intensity_is_a_config_error(value):
    with pytest.raises(ConfigError, match="λ of 'retrain-eo' must be a finite number >= 0"):
        build_method(f"retrain-eo:{value}")
    assert BAD_INTENSITY.format(value="x").startswith("fairness intensity λ")


def test_method_specs_parse_lambda_and_refuse_it_elsewhere():
    assert build_method("retrain-eo").lam == 0.5
    assert build_method("retrain-dp:0.9").lam == 0.9
    assert build_method("retrain-eo:0").lam == 0.0
    with pytest.raises(ConfigError, match="takes no ':value'"):
        build_method("tl:0.5")
    with pytest.raises(ConfigError, match="unknown method 'retrain-xx:1'"):
        build_method("retrain-xx:1")


# --- Retrain+EO/DP end to end on a small generated task --------------------------------------

@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    task = tabular_task(generated_frame(1400, seed=1), target="label", sensitive="group", positive="yes",
                        split=SplitConfig(train=0.3, val=0.15, test=0.2), keep_sensitive=True)
    model = pretrained_mlp(task, PretrainConfig(hidden=(16, 8), epochs=15, lr=3e-3), seed=0,
                           cache_dir=tmp_path_factory.mktemp("cache"))
    _, layer = find_linear(model)
    splits = {k: v for k, v in task.splits().items() if k != "source"}
    inputs = {name: TrainingData.from_arrays(split.inputs, split.y, split.s) for name, split in splits.items()}
    return task, model, layer, split_features(model, layer, splits), inputs


GRID = FinetuneGrid(lrs=(0.01,), epochs=(3, 10))


def test_retrain_all_updates_the_whole_model_and_last_only_the_layer(small_task):
    _, model, layer, features, inputs = small_task
    weights_before = [p.detach().clone() for p in model.parameters()]
    results = compare_on_features(layer, features, ["retrain-eo:0.5", "retrain-dp"], GRID, seed=0, model=model, inputs=inputs)
    by_method = {r.row["method"]: r.row for r in results}
    selections = [r.selection for r in results if r.selection]
    assert by_method["retrain-eo:0.5"]["trainable_params"] == count_parameters(model, trainable_only=False)
    assert by_method["retrain-dp"]["trainable_params"] == count_parameters(model, trainable_only=False)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))  # the caller's model is untouched
    assert {tuple(sorted(s["params"])) for s in selections} == {("epochs", "lr")}
    results = compare_on_features(layer, features, ["retrain-eo"], GRID.model_copy(update={"retrain_scope": "last"}), seed=0)
    assert results[-1].row["trainable_params"] == count_parameters(layer, trainable_only=False)


def test_retrain_all_without_the_model_is_a_config_error(small_task):
    _, _, layer, features, _ = small_task
    with pytest.raises(ConfigError) as error:
        compare_on_features(layer, features, ["retrain-dp:0.1"], GRID, seed=0)
    assert str(error.value) == NEEDS_INPUTS.format(method="retrain-dp:0.1")


def test_zero_lambda_is_plain_fine_tuning(small_task):
    _, model, layer, features, _ = small_task
    last = GRID.model_copy(update={"retrain_scope": "last"})
    tl, retrain = (compare_on_features(layer, features, [m], last, seed=3)[-1].row for m in ("tl", "retrain-dp:0"))
    assert {k: tl[k] for k in ("err", "delta_dp", "delta_eo")} == {k: retrain[k] for k in ("err", "delta_dp", "delta_eo")}


def test_raising_lambda_lowers_the_measured_gap():
    """Retrain+DP of a small MLP where the label depends on the group, λ = 0 against λ = 3, over 3 seeds."""
    rng = np.random.default_rng(0)
    n = 3000
    s = rng.integers(0, 2, n)
    x = np.column_stack([rng.normal(size=n) + 1.0 * s, rng.normal(size=n)]).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0.5).astype(np.int64)
    data = TrainingData.from_arrays(torch.from_numpy(x), y, s)
    gaps = {}
    for lam in (0, 3):
        per_seed = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
            fitted = build_method(f"retrain-dp:{lam}").fit(model, data, None, TrainParams(0.05), epochs=10, batch_size=500, seed=seed)
            per_seed.append(delta_dp(fitted.predict(data.x), s))
        gaps[lam] = float(np.mean(per_seed))
    assert gaps[0] > 0.3
    assert gaps[3] < gaps[0] - 0.15


# --- fair pre-training -----------------------------------------------------------------------

def test_the_tl_of_several_fair_models_in_one_loop_gives_the_rows_of_one_loop_each(tmp_path, write_csv):
    """fair_pretraining_rows trains the TL candidates of every fair model of a seed in one loop (each model keeps its
    own features and batch order): the rows one model at a time gives."""
    from fairtune.data import load_task
    from fairtune.experiments.fair_pretraining import fair_pretraining_rows

    data = DataConfig(dataset="csv", csv=str(write_csv(generated_frame(900, seed=3))), target="label", sensitive="group",
                      positive="yes", split=SplitConfig(train=0.3, val=0.15, test=0.2))
    pretrain, grid = PretrainConfig(hidden=(16,), epochs=15, lr=0.01), FinetuneGrid(lrs=(0.01, 0.1), epochs=(1, 3))
    task, settings = load_task(data, seed=1), [("eo", 0.1), ("dp", 2.0), ("eo", 5.0)]
    together = fair_pretraining_rows(task, data, pretrain, grid, settings, 1, cache_dir=str(tmp_path / "cache"))
    apart = [row for setting in settings for row in fair_pretraining_rows(task, data, pretrain, grid, [setting], 1, cache_dir=str(tmp_path / "cache"))]
    assert together == apart
    assert len({row["finetune_err"] for row in together}) > 1  # the models differ


def test_fair_pretraining_study_rows_and_table2_layout(tmp_path, write_csv):
    path = write_csv(generated_frame(900, seed=2))
    data = DataConfig(dataset="csv", csv=str(path), target="label", sensitive="group", positive="yes",
                      split=SplitConfig(train=0.3, val=0.15, test=0.2))
    study = fair_pretraining_study(data, PretrainConfig(hidden=(8,), epochs=3), FinetuneGrid(lrs=(0.01,), epochs=(2,)),
                                   constraints=("eo", "dp"), lambdas=(0.1, 0.9), seeds=[0, 1], cache_dir=str(tmp_path / "cache"),
                                   progress=False)
    assert list(study.columns) == STUDY_COLUMNS
    assert len(study) == 2 * 2 * 2
    assert study[["pretrain_err", "finetune_err"]].apply(lambda c: c.between(0, 100)).all().all()
    table = summarize_fair_pretraining(study)
    assert list(table[["constraint", "lambda"]].itertuples(index=False, name=None)) == [("eo", 0.1), ("eo", 0.9), ("dp", 0.1), ("dp", 0.9)]
    eo = study[(study.constraint == "eo") & (study["lambda"] == 0.9)]
    row = table.iloc[1]
    assert row["bias_metric"] == "delta_eo"
    assert row["bias_pretrain_mean"] == pytest.approx(eo["pretrain_delta_eo"].mean())
    assert row["bias_change_mean"] == pytest.approx((eo["finetune_delta_eo"] - eo["pretrain_delta_eo"]).mean())
    assert row["err_finetune_std"] == pytest.approx(eo["finetune_err"].std(ddof=1))
    with pytest.raises(ConfigError, match="unknown fairness constraint 'tpr'"):
        fair_pretraining_study(data, PretrainConfig(), FinetuneGrid(), constraints=("tpr",), seeds=[0], progress=False)
