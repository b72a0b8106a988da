"""
Your own images: an image folder through a small CNN
====================================================

``--dataset image-folder`` (or :func:`fairtune.data.image_folder_task`) reads any images
listed in a CSV file with one column for the path, one for the label and one for the sensitive
attribute. This example writes such a folder of small generated images into a temporary
directory, then runs TL, f+SVD and WIN on it with fairtune's small CNN, exactly as

.. code-block:: bash

   fairtune run --dataset image-folder --csv images.csv --arch small_cnn --image-size 16 \\
       --methods tl,svd,win --seeds 2 --out runs/images

would. The CNN is pre-trained on the rows that the new task's splits leave over (cached on
disk), its frozen backbone's features are computed once per split and cached, and only the
last linear layer is fine-tuned.
"""

# %%
# A folder of images and its CSV
# ------------------------------
# Each 16×16 image shows a bright bar, horizontal (label 1) or vertical (label 0), on a
# background tinted red or blue: the tint is the sensitive attribute. The tint agrees with the
# label for 75 % of the images, so a model can learn to lean on it.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from PIL import Image

from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig, SplitConfig
from fairtune.experiments import RunConfig, run, summarize
from fairtune.report.figures import accuracy_fairness

torch.set_num_threads(1)
rng = np.random.default_rng(0)
folder = Path(tempfile.mkdtemp(prefix="fairtune-images-"))


def draw(label: int, tint: str) -> np.ndarray:
    """A 16x16 RGB image: a noisy bar (horizontal for label 1) on a tinted background."""
    image = rng.normal(70, 40, size=(16, 16, 3))
    image[..., 0 if tint == "red" else 2] += 60
    where = rng.integers(3, 13)
    if label == 1:
        image[where - 1:where + 1, 4:12] += 45
    else:
        image[4:12, where - 1:where + 1] += 45
    return np.clip(image, 0, 255).astype(np.uint8)


rows = []
for i in range(600):
    label = int(rng.integers(0, 2))
    tint = ("blue", "red")[label] if rng.random() < 0.75 else ("red", "blue")[label]
    path = f"images/{i:04d}.png"
    (folder / "images").mkdir(exist_ok=True)
    Image.fromarray(draw(label, tint)).save(folder / path)
    rows.append({"path": path, "label": label, "sensitive": tint})
pd.DataFrame(rows).to_csv(folder / "images.csv", index=False)
print((folder / "images.csv").read_text().splitlines()[:4])

fig, axes = plt.subplots(2, 8, figsize=(8, 2.3))
for ax, row in zip(axes.flat, rows):
    ax.imshow(Image.open(folder / row["path"]))
    ax.set_title(f"y={row['label']} {row['sensitive']}", fontsize=7)
    ax.axis("off")
fig.suptitle("The first images of the folder (label, sensitive attribute)")
fig.tight_layout()

# %%
# Run TL, f+SVD and WIN
# ---------------------
# The new task takes 150 / 100 / 150 images for train / validation / test; the other 200
# pre-train the CNN. Everything goes into a private cache folder.
config = RunConfig(
    data=DataConfig(dataset="image-folder", csv=str(folder / "images.csv"), arch="small_cnn", image_size=16,
                    split=SplitConfig(train=150, val=100, test=150)),
    pretrain=PretrainConfig(epochs=8, lr=1e-2, batch_size=32),
    finetune=FinetuneGrid(ranks=(1, 2), lrs=(0.01,), epochs=(5, 20), operators=("mean", "pooled")),
    methods=("tl", "svd", "win"),
    seeds=(0, 1),
    cache_dir=str(folder / "cache"),
)
result = run(config, progress=False)
summary = summarize(result.results)
summary.round(3)

# %%
# The accuracy-fairness plot
# --------------------------
# One point per method (mean over the two seeds, ±1 std), with the Pareto front: the methods
# that no other method beats on both Err and the gap.
tradeoff = accuracy_fairness(summary, title="Generated image folder, small CNN, 2 seeds")
