"""Image data: CelebA, LFW+a and image-folder loaders on small generated files in the real formats;
the digits-bias benchmark; vision models and weight files; the image path of `run` and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from fairtune.cli import app
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig, SplitConfig
from fairtune.data import load_task
from fairtune.data.celeba import celeba_task
from fairtune.data.digits import PATCH, digits_task
from fairtune.data.image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MISSING_ATTRIBUTE,
    image_folder_task,
)
from fairtune.data.lfw import lfw_image_path, lfw_task
from fairtune.errors import DataError, ModelError
from fairtune.experiments.run import RunConfig, run
from fairtune.factorization import find_linear
from fairtune.models import save_weights
from fairtune.models.checkpoint import load_weights_
from fairtune.models.vision import SmallCNN, pretrained_vision, vision_model

CELEBA_ATTRIBUTES = ["5_o_Clock_Shadow", "Male", "Smiling", "Wavy_Hair", "Young"]
LFW_ATTRIBUTES = ["Male", "Asian", "White", "Heavy Makeup", "Smiling"]


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    """A small random RGB image (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_celeba(root: Path, partitions: tuple[int, int, int] = (24, 8, 8)) -> pd.DataFrame:
    """The official CelebA layout with ``sum(partitions)`` images; returns the attribute table (-1/1)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = sum(partitions)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    values = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRIBUTES)))
    values[:4, 1], values[4:8, 1] = 1, -1  # both groups of Male in every partition
    values[n - 8:n - 4, 1], values[n - 4:, 1] = 1, -1
    values[partitions[0]:partitions[0] + 4, 1], values[partitions[0] + 4:partitions[0] + 8, 1] = 1, -1
    table = pd.DataFrame(values, index=names, columns=CELEBA_ATTRIBUTES)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)] + [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    codes = np.repeat([0, 1, 2], partitions)
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {code}\n" for name, code in zip(names, codes)))
    for i, name in enumerate(names):
        write_image(root / "img_align_celeba" / name, i)
    return table


def write_lfw(root: Path, n_people: int = 10, per_person: int = 3) -> pd.DataFrame:
    """LFW images ``lfw/<Name>/<Name>_000k.jpg`` and ``lfw_attributes.txt``; returns the score table."""
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_people):
        person = f"Person Number{p} Smith"
        for k in range(1, per_person + 1):
            rows.append([person, k, *rng.normal(size=len(LFW_ATTRIBUTES)).round(5)])
            write_image(root / "lfw" / lfw_image_path(person, k), len(rows))
    table = pd.DataFrame(rows, columns=["person", "imagenum", *LFW_ATTRIBUTES])
    table["Heavy Makeup"] = np.where(np.arange(len(table)) % 2 == 0, 0.7, -0.4)  # both groups everywhere
    header = "#\t" + "\t".join(["person", "imagenum", *LFW_ATTRIBUTES])
    body = ["\t".join(str(v) for v in row) for row in table.itertuples(index=False)]
    (root / "lfw_attributes.txt").write_text("\n".join(["# Attribute values for LFW, generated", header, *body]) + "\n")
    return table


def write_image_folder(root: Path, n: int = 40) -> Path:
    paths = [f"images/{i:03d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        write_image(root / path, 100 + i)
    frame = pd.DataFrame({"path": paths, "label": np.arange(n) % 2, "sensitive": np.where(np.arange(n) % 4 < 2, "a", "b")})
    frame.to_csv(root / "images.csv", index=False)
    return root / "images.csv"


# --- CelebA -------------------------------------------------------------------------------------


def test_celeba_reads_official_layout_and_keeps_partitions_apart(tmp_path: Path) -> None:
    table = write_celeba(tmp_path)
    task = celeba_task(tmp_path, target="WavyHair", sensitive="Male", split=SplitConfig(train=0.5, val=6, test=5), image_size=16)
    assert task.sizes() == {"source": 12, "train": 12, "val": 6, "test": 5}
    assert (task.label_name, task.sensitive_name, task.group_names) == ("Wavy_Hair", "Male", ("not_Male", "Male"))
    names = {name: list(split.inputs.paths) for name, split in task.splits().items()}
    official_train = {f"{i:06d}.jpg" for i in range(1, 25)}
    assert set(names["source"]) | set(names["train"]) == official_train and not set(names["source"]) & set(names["train"])
    assert all(24 < int(n[:6]) <= 32 for n in names["val"]) and all(int(n[:6]) > 32 for n in names["test"])
    for split, paths in zip(task.splits().values(), names.values()):
        np.testing.assert_array_equal(split.y, (table.loc[paths, "Wavy_Hair"] == 1).to_numpy())
        np.testing.assert_array_equal(split.s, (table.loc[paths, "Male"] == 1).to_numpy())
    image = task.test.inputs[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32


def test_celeba_defaults_and_torchvision_subfolder(tmp_path: Path) -> None:
    write_celeba(tmp_path / "celeba")
    task = celeba_task(tmp_path, split=SplitConfig(train=10, val=4, test=4), seed=3)
    assert task.label_name == "Wavy_Hair" and task.sensitive_name == "Male"
    assert task.sizes() == {"source": 14, "train": 10, "val": 4, "test": 4}


def test_celeba_unknown_attribute_is_one_line(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    with pytest.raises(DataError) as info:
        celeba_task(tmp_path, target="Curly_Hair", split=SplitConfig(train=10, val=4, test=4))
    assert str(info.value) == MISSING_ATTRIBUTE.format(name="Curly_Hair", source=tmp_path / "list_attr_celeba.txt", available=", ".join(CELEBA_ATTRIBUTES))
    assert "\n" not in str(info.value)


def test_celeba_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found: .*list_attr_celeba.txt"):
        celeba_task(tmp_path)
    write_celeba(tmp_path)
    (tmp_path / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(DataError, match=r"^1 image\(s\) listed in .* are missing, e.g. .*000007.jpg$"):
        celeba_task(tmp_path, split=SplitConfig(train=10, val=4, test=4))


def test_celeba_too_large_split_is_refused(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    with pytest.raises(DataError, match="the test split asks for 9 images but only 8 are available"):
        celeba_task(tmp_path, split=SplitConfig(train=10, val=4, test=9))
    with pytest.raises(DataError, match="leaves none of the 24 training-pool images for pre-training"):
        celeba_task(tmp_path, split=SplitConfig(train=24, val=4, test=4))


# --- LFW+a --------------------------------------------------------------------------------------


def test_lfw_reads_attribute_table_and_thresholds_scores(tmp_path: Path) -> None:
    table = write_lfw(tmp_path)
    task = lfw_task(tmp_path, split=SplitConfig(train=0.5, val=6, test=8), image_size=20)
    assert task.sizes() == {"source": 8, "train": 8, "val": 6, "test": 8}
    assert (task.label_name, task.sensitive_name) == ("Male", "Heavy Makeup")
    by_path = {lfw_image_path(p, k): i for i, (p, k) in enumerate(zip(table["person"], table["imagenum"]))}
    seen = []
    for split in task.splits().values():
        rows = [by_path[p] for p in split.inputs.paths]
        seen += rows
        np.testing.assert_array_equal(split.y, (table["Male"].to_numpy()[rows] > 0))
        np.testing.assert_array_equal(split.s, (table["Heavy Makeup"].to_numpy()[rows] > 0))
    assert sorted(seen) == list(range(len(table)))  # disjoint splits covering every row
    assert task.train.inputs[0].shape == (3, 20, 20)


def test_lfw_path_name_matching_and_grayscale_lfw_a(tmp_path: Path) -> None:
    assert lfw_image_path("Aaron Eckhart", 1) == "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
    table = write_lfw(tmp_path)
    (tmp_path / "lfw").rename(tmp_path / "lfw2")  # LFW-a's folder, grayscale images
    first = tmp_path / "lfw2" / lfw_image_path(table["person"][0], 1)
    Image.fromarray(np.full((10, 12), 200, dtype=np.uint8), mode="L").save(first)
    task = lfw_task(tmp_path, target="male", sensitive="HeavyMakeup", split=SplitConfig(train=4, val=6, test=8), image_size=8)
    assert task.sensitive_name == "Heavy Makeup"
    files = next(s.inputs for s in task.splits().values() if first.relative_to(tmp_path / "lfw2").as_posix() in s.inputs.paths)
    image = files[files.paths.index(first.relative_to(tmp_path / "lfw2").as_posix())]
    pixels = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert image.shape == (3, 8, 8)
    torch.testing.assert_close(pixels, torch.full((3, 8, 8), 200 / 255))


def test_lfw_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found: .*lfw_attributes.txt"):
        lfw_task(tmp_path)
    write_lfw(tmp_path)
    with pytest.raises(DataError, match="attribute 'Beard' not found in .*lfw_attributes.txt; available: Male, Asian"):
        lfw_task(tmp_path, sensitive="Beard")
    (tmp_path / "lfw").rename(tmp_path / "faces")
    with pytest.raises(DataError, match="no LFW image folder in .*: expected one of lfw, lfw2"):
        lfw_task(tmp_path)


# --- your image folder --------------------------------------------------------------------------


def test_image_folder_csv(tmp_path: Path) -> None:
    csv = write_image_folder(tmp_path)
    task = image_folder_task(csv, split=SplitConfig(train=0.25, val=0.25, test=0.25), image_size=8)
    assert task.sizes() == {"source": 10, "train": 10, "val": 10, "test": 10}
    assert task.group_names == ("a", "b")
    frame = pd.read_csv(csv).set_index("path")
    for split in task.splits().values():
        np.testing.assert_array_equal(split.y, frame.loc[list(split.inputs.paths), "label"].to_numpy())
    assert task.test.inputs[3].shape == (3, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    csv = write_image_folder(tmp_path)
    with pytest.raises(DataError, match="column 'group' not found in .*images.csv; available: path, label, sensitive"):
        image_folder_task(csv, sensitive="group")
    (tmp_path / "images" / "005.png").write_bytes(b"not an image")
    task = image_folder_task(csv, split=SplitConfig(train=0.25, val=0.25, test=0.25), image_size=8)
    split = next(s for s in task.splits().values() if "images/005.png" in s.inputs.paths)
    with pytest.raises(DataError, match=r"^cannot read image .*005.png: UnidentifiedImageError$"):
        split.inputs[split.inputs.paths.index("images/005.png")]
    (tmp_path / "images" / "005.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) listed in .*images.csv are missing"):
        image_folder_task(csv)


# --- digits-bias --------------------------------------------------------------------------------


def test_digits_bias_correlation_and_patch() -> None:
    task = digits_task(seed=0)
    assert task.sizes() == {"source": 899, "train": 359, "val": 180, "test": 359}
    source_agreement = (task.source.y == task.source.s).mean()
    task_agreement = np.mean(np.concatenate([(split.y == split.s) for split in (task.train, task.val, task.test)]))
    assert 0.86 < source_agreement < 0.94 and 0.44 < task_agreement < 0.56
    for split in task.splits().values():
        images = split.inputs.images[:, 0]
        np.testing.assert_array_equal((images[:, PATCH[0], PATCH[1]] == 1).all(dim=(1, 2)).numpy(), split.s == 1)
    assert task.train.inputs[0].shape == (3, 8, 8)
    assert digits_task(seed=0, image_size=32).test.inputs[5].shape == (3, 32, 32)
    assert digits_task(seed=0).fingerprint == task.fingerprint != digits_task(seed=1).fingerprint


# --- vision models and weights ------------------------------------------------------------------


def test_vision_models_get_a_two_class_linear_head() -> None:
    for arch, width in (("resnet18", 512), ("mobilenet_v3_small", 1024), ("small_cnn", 128)):
        _, head = find_linear(vision_model(arch))
        assert (head.in_features, head.out_features) == (width, 2)
    assert isinstance(vision_model("small_cnn"), SmallCNN)
    with pytest.raises(ModelError, match="unknown architecture 'resnet1'; use small_cnn or a torchvision"):
        vision_model("resnet1")


def test_weights_file_two_class_and_standard_head(tmp_path: Path) -> None:
    task = image_folder_task(write_image_folder(tmp_path), split=SplitConfig(train=10, val=10, test=10), image_size=32)
    torch.manual_seed(1)
    two_class = vision_model("resnet18").eval()
    save_weights(two_class, tmp_path / "two_class.safetensors")
    loaded = pretrained_vision(task, arch="resnet18", weights=tmp_path / "two_class.safetensors", cache_dir=tmp_path)
    for key, value in two_class.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

    imagenet_style = torchvision.models.resnet18(weights=None)  # 1000-class head, as torchvision's checkpoint
    torch.save(imagenet_style.state_dict(), tmp_path / "resnet18-imagenet.pth")
    config = PretrainConfig(epochs=2, batch_size=256)
    model = pretrained_vision(task, config, arch="resnet18", weights=tmp_path / "resnet18-imagenet.pth", cache_dir=tmp_path)
    torch.testing.assert_close(model.conv1.weight, imagenet_style.conv1.weight)
    assert model.fc.out_features == 2 and not model.training

    with pytest.raises(ModelError, match="do not match the model"):
        pretrained_vision(task, arch="mobilenet_v3_small", weights=tmp_path / "resnet18-imagenet.pth", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="file not found"):
        pretrained_vision(task, arch="resnet18", weights=tmp_path / "absent.pth", cache_dir=tmp_path)


def test_pretraining_is_cached_per_seed(tmp_path: Path) -> None:
    task = digits_task(seed=0, split=SplitConfig(train=0.1, val=0.1, test=0.1))
    config = PretrainConfig(epochs=1)
    first = pretrained_vision(task, config, arch="small_cnn", seed=0, cache_dir=tmp_path)
    [path] = (tmp_path / "models").glob("small_cnn-*.safetensors")
    stamp = path.stat().st_mtime_ns
    again = pretrained_vision(task, config, arch="small_cnn", seed=0, cache_dir=tmp_path)
    assert path.stat().st_mtime_ns == stamp
    for key, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    pretrained_vision(task, config, arch="small_cnn", seed=1, cache_dir=tmp_path)
    assert len(list((tmp_path / "models").glob("small_cnn-*.safetensors"))) == 2


def test_a_corrupted_cached_vision_model_is_rebuilt(tmp_path: Path) -> None:
    """A cache entry is derived data: a damaged one is pre-trained again (same seed, same weights), not an error."""
    task = digits_task(seed=0, split=SplitConfig(train=0.1, val=0.1, test=0.1))
    config = PretrainConfig(epochs=1)
    fresh = pretrained_vision(task, config, arch="small_cnn", seed=0, cache_dir=tmp_path)
    [path] = (tmp_path / "models").glob("small_cnn-*.safetensors")
    path.write_bytes(b"corrupted")
    rebuilt = pretrained_vision(task, config, arch="small_cnn", seed=0, cache_dir=tmp_path)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
    reloaded = load_weights_(vision_model("small_cnn"), path)  # the cache entry was replaced by a good file
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)


# --- run() and the CLI on image data --------------------------------------------------------------


def test_run_on_digits_bias_uses_vision_model_and_feature_cache(tmp_path: Path) -> None:
    config = RunConfig(
        data=DataConfig(dataset="digits-bias"), pretrain=PretrainConfig(epochs=1),
        finetune=FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(2,), operators=("mean",)),
        methods=("tl", "svd", "win"), seeds=(0,), cache_dir=str(tmp_path),
    )
    result = run(config, progress=False)
    assert list(result.results["method"]) == ["pretrained", "tl", "svd", "win"]
    assert result.results["trainable_params"].tolist()[:2] == [258, 258]  # the small CNN's fc: 128 x 2 + 2
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3  # train, val, test
    assert len(list((tmp_path / "models").glob("small_cnn-*.safetensors"))) == 1


def test_load_task_image_datasets(tmp_path: Path) -> None:
    write_celeba(tmp_path / "celeba")
    task = load_task(DataConfig(dataset="celeba", data_dir=str(tmp_path), target="Smiling", split=SplitConfig(train=10, val=6, test=5)), seed=0)
    assert task.label_name == "Smiling" and task.sensitive_name == "Male"
    csv = write_image_folder(tmp_path)
    assert load_task(DataConfig(dataset="image-folder", csv=str(csv), split=SplitConfig(train=10, val=10, test=10)), seed=0).name == "image-folder"


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "celeba"], "fairtune: error: dataset 'celeba' needs --data-dir DIR (see README, 'Image data')"),
    (["--dataset", "image-folder"], "fairtune: error: dataset 'image-folder' needs --csv FILE with columns path,label,sensitive"),
])
def test_cli_image_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["run", *args, "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip() == message


def test_cli_missing_lfw_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--dataset", "lfw", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"fairtune: error: file not found: {tmp_path / 'lfw_attributes.txt'}"


def test_cli_vision_flags_on_tabular_data_are_refused(tmp_path: Path, write_csv) -> None:
    csv = write_csv(n_rows=300)
    result = CliRunner().invoke(app, ["run", "--dataset", "csv", "--csv", str(csv), "--target", "label", "--sensitive", "group",
                                      "--positive", "yes", "--arch", "resnet18", "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("fairtune: error: --weights and --arch are for image data sets; 'csv' is tabular "
                                     "(its model is the MLP, see --hidden)")
