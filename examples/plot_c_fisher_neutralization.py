"""
Per-group Fisher information and what neutralization changes
============================================================

WIN weighs the rows of the last layer's weight by how much they matter for predicting *each*
sensitive group (:doc:`/method`). This example takes the MLP pre-trained on Adult's source
rows and walks through the pieces:

1. Eq. (1): the diagonal Fisher information of the last layer, per group (the paper's
   Figure 3), with :func:`fairtune.importance.group_fisher`;
2. Eq. (2): each group's Fisher normalized to sum 1 and combined by an operator
   (:func:`~fairtune.importance.neutralized_fisher`), against the plain (pooled) Fisher, and
   the row importance Î that the weighted SVD uses (:func:`~fairtune.importance.row_importance`);
3. Eq. (4): what that importance changes in the rank-1 factorization
   (:func:`fairtune.factorization.weighted_svd`).
"""

# %%
# The pre-trained model and its last layer's inputs
# -------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch

from fairtune.config import PretrainConfig
from fairtune.data import adult_task
from fairtune.factorization import find_linear, weighted_svd
from fairtune.importance import OPERATORS, feature_batches, group_fisher, neutralized_fisher, row_importance
from fairtune.models import extract_features, pretrained_mlp
from fairtune.report.figures import fisher_heatmaps

torch.set_num_threads(1)

task = adult_task(seed=0)
model = pretrained_mlp(task, PretrainConfig(epochs=5), seed=0)  # cached on disk after the first run
name, layer = find_linear(model)  # the last nn.Linear: 32 inputs -> 2 logits
x = extract_features(model, layer, task.train.inputs)
y, s = torch.from_numpy(task.train.y), torch.from_numpy(task.train.s)
print(f"target layer {name!r}: {layer}; {len(x)} training rows; groups {task.group_names}")

# %%
# Eq. (1): the Fisher of each group
# ---------------------------------
# ``F_g = (1/n_g) (X_g⊙X_g)ᵀ ((P_g−E_g)⊙(P_g−E_g))`` in closed form, streamed over batches. The
# right panel is the difference: the hidden units whose weights matter more for one group.
fisher = group_fisher(layer, feature_batches(x, y, s), n_groups=len(task.group_names))
print("samples per group:", dict(zip(task.group_names, fisher.counts.tolist())))
heatmaps = fisher_heatmaps(fisher.weight.numpy(), task.group_names)

# %%
# Eq. (2): neutralized importance against the pooled Fisher
# ---------------------------------------------------------
# The pooled Fisher (``pooled``, FWSVD's importance) is dominated by the larger group. The
# neutralized operators first scale every group's Fisher to sum 1, so each group counts the
# same, then combine them elementwise. The row importance ``Î[i] = sqrt(Σ_j F_N[i, j])`` is
# what the weighted SVD multiplies the weight's rows by; shown here as a share of its total.
importance = {op: row_importance(neutralized_fisher(fisher, op)) for op in OPERATORS}
order = torch.argsort(importance["pooled"], descending=True).numpy()
fig, ax = plt.subplots(figsize=(7, 3.6))
for op, values in importance.items():
    share = (values / values.sum()).numpy()[order]
    ax.plot(share, marker="o", markersize=3, linewidth=1.2 if op != "pooled" else 2.5, label=op)
ax.set_xlabel("hidden unit (sorted by pooled importance)")
ax.set_ylabel("row importance Î (share)")
ax.set_title("Row importance of the last layer's inputs, by operator")
ax.legend(ncols=3, fontsize=8)
fig.tight_layout()

# %%
# Eq. (4): what the importance changes in the factorization
# ---------------------------------------------------------
# A binary head is 32×2, so its rank is at most 2 and at rank 2 every factorization gives back
# W exactly. At rank 1 the weighted SVD keeps the direction that matters most *under Î*:
# the rows with high importance are reproduced more closely. Below, the error per row of the
# rank-1 ``A B`` against W, for plain SVD (Î = I, f+SVD) and for WIN's ``mean`` importance.
weight = layer.weight.detach().double()
rows_error = {}
for label, iota in (("plain SVD (f+SVD)", None), ("weighted by Î (WIN, mean)", importance["mean"])):
    factors = weighted_svd(weight, rank=1, row_importance=iota)
    approximation = factors.second @ factors.first  # (k x r) @ (r x d) = k x d
    rows_error[label] = (approximation - weight).norm(dim=0).numpy()[order]
fig, ax = plt.subplots(figsize=(7, 3.2))
width = 0.4
for i, (label, errors) in enumerate(rows_error.items()):
    ax.bar(np.arange(len(errors)) + (i - 0.5) * width, errors, width=width, label=label)
ax.set_xlabel("hidden unit (sorted by pooled importance)")
ax.set_ylabel("‖row of (AB − W)‖")
ax.set_title("Rank-1 factorization error per input row")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
