"""
The paper's Adult comparison at a small scale
=============================================

``fairtune reproduce adult`` runs the paper's whole Adult study (10 seeds, every λ, the
ablation; about 15 minutes on 2 cores). This example runs the same machinery,
:func:`fairtune.experiments.run`, on a small scale that takes seconds: three seeds, smaller
splits and a one-point fine-tuning grid. It prints Table 3's columns (Err, ΔEO, ΔDP,
trainable parameters) with the paper's figures for the pre-trained model beside ours, and
draws Figure 4's bars.

At this scale the numbers are noisier than the committed 10-seed report
(``docs/results/reproduce/``), but they are read the same way: mean ± std over seeds, a
difference smaller than a standard deviation is not a difference.
"""

# %%
# The run
# -------
# Per seed: split Adult (bundled with fairtune), pre-train the MLP on the source rows (cached
# on disk), compute the last layer's inputs once per split, then fine-tune every method, choose
# its settings on validation and score it on test.
import torch

from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig, SplitConfig
from fairtune.experiments import RunConfig, run, summarize
from fairtune.report import paper, table3_display, table3_frame
from fairtune.report.figures import metric_bars

torch.set_num_threads(1)

config = RunConfig(
    data=DataConfig(dataset="adult", split=SplitConfig(train=3000, val=1500, test=3000)),
    pretrain=PretrainConfig(epochs=5),
    finetune=FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(5,), operators=("mean",), retrain_scope="last"),
    methods=("tl", "svd", "win", "retrain-eo:0.5", "retrain-dp:0.5"),
    seeds=(0, 1, 2),
)
result = run(config, progress=False)
result.results.head(6)

# %%
# Table 3's columns
# -----------------
# ``table3_frame`` puts the paper's published figures beside ours where our copy of the paper
# has them (the pre-trained model's row); the other cells show "—".
summary = summarize(result.results)
table = table3_display(table3_frame(summary, {"pretrained": paper.PRETRAINED}))
table

# %%
# Figure 4: the bars
# ------------------
# Mean over seeds with one standard deviation as error bars, one colour per method in every
# figure fairtune draws.
figure = metric_bars(summary, title="Adult, 3 seeds, small splits")
