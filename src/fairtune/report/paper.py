"""The paper's published Adult figures, typed once, to print beside ours.

Source: Zhang & Zhou, arXiv 2403.00625, as quoted on the method page (``docs/method.md``, "Paper figures to
compare with"). These are the only hand-typed numbers in a reproduction report; everything
else is computed from results. The paper's Table 3 numbers are not in our excerpt: of Table 3
we hold only the pre-trained model's figures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    """Err (%), ΔEO and ΔDP of one model on Adult's new task (None: not published)."""

    err: float | None = None
    delta_eo: float | None = None
    delta_dp: float | None = None


@dataclass(frozen=True)
class Table2Row:
    """One row of the paper's Table 2: a fair pre-trained model before and after fine-tuning.

    ``bias`` is the gap the model was pre-trained to reduce: ΔEO for ``constraint="eo"``,
    ΔDP for ``constraint="dp"``. Fine-tuned values are mean and std over the paper's seeds.
    """

    constraint: str
    lam: float
    pretrain_err: float
    finetune_err: float
    finetune_err_std: float
    pretrain_bias: float
    finetune_bias: float
    finetune_bias_std: float


#: The original pre-trained model on the new task (the paper's Table 3 first row).
PRETRAINED = Figures(err=16.165, delta_eo=0.223, delta_dp=0.192)

#: Table 2: fair pre-training (EO / DP regularizer of intensity λ), then ordinary fine-tuning.
TABLE2: tuple[Table2Row, ...] = (
    Table2Row("eo", 0.1, 16.835, 16.676, 0.313, 0.068, 0.206, 0.024),
    Table2Row("eo", 0.5, 17.469, 17.168, 0.941, 0.012, 0.183, 0.037),
    Table2Row("eo", 0.9, 18.744, 17.343, 0.973, 0.008, 0.186, 0.017),
    Table2Row("dp", 0.1, 17.332, 17.479, 0.068, 0.125, 0.171, 0.009),
    Table2Row("dp", 0.5, 17.489, 17.773, 0.034, 0.047, 0.173, 0.023),
    Table2Row("dp", 0.9, 20.160, 17.071, 0.036, 0.031, 0.172, 0.018),
)

#: Figure 4's claim, checked metric by metric against these baselines.
FIGURE4_CLAIM = "WIN has lower Err, ΔDP and ΔEO than TL and f+SVD (on all three data sets; we check Adult)"
FIGURE4_METHOD = "win"
FIGURE4_BASELINES: tuple[str, ...] = ("tl", "svd")

#: Table 2's claim: fine-tuning a fair pre-trained model re-introduces bias.
TABLE2_CLAIM = "fine-tuning a fair pre-trained model re-introduces bias (the gap rises after fine-tuning)"

TABLE3_NOTE = (
    "The paper's Table 3 numbers are not in our excerpt of the paper; only the pre-trained "
    "model's figures (Err 16.165 %, ΔEO 0.223, ΔDP 0.192) are, so only that row has paper columns."
)


def table2_row(constraint: str, lam: float) -> Table2Row | None:
    """The paper's Table 2 row for ``constraint`` ('eo' or 'dp') and λ, if it published one."""
    return next((row for row in TABLE2 if row.constraint == constraint and abs(row.lam - lam) < 1e-9), None)
