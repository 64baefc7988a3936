"""Channel layouts, image decoding, unreadable files, splits and the resumable sampler."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import model_artifact
from train import data
from train.failure import TrainingError


def args(**kw) -> SimpleNamespace:
    return SimpleNamespace(**({"drop_clutter": True, "val_split": 0.2, "test_split": 0.0, "seed": 0} | kw))


def image_folder(root: Path, classes: dict[str, int], ext: str = ".jpg") -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (20, 16), (i * 20 % 255, 80, 120)).save(root / name / f"{name}_{i:04d}{ext}")
    return root


def test_one_image_folder_per_channel(tmp_path):
    channels = {s: image_folder(tmp_path / s, {"cat": 3, "dog": 2}) for s in ("training", "validation", "test")}
    splits = data.resolve_splits(channels, args())
    assert splits.class_names == ["cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 5, 5)
    assert splits.layout.startswith("one ImageFolder per channel")


@pytest.mark.parametrize("val_name", ["valid", "val", "validation"])
def test_course_layout_train_valid_test_subfolders(tmp_path, val_name):
    root = tmp_path / "training"
    image_folder(root / "train", {"001.Affenpinscher": 4, "002.Afghan_hound": 4})
    image_folder(root / val_name, {"001.Affenpinscher": 1, "002.Afghan_hound": 2})
    image_folder(root / "test", {"001.Affenpinscher": 2, "002.Afghan_hound": 2})
    splits = data.resolve_splits({"training": root}, args())
    assert splits.class_names == ["Affenpinscher", "Afghan hound"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 3, 4)
    assert splits.layout.startswith("course")


def test_flat_folder_is_split_by_class_deterministically(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 10, "b": 20, "c": 5})
    first = data.resolve_splits({"training": root}, args(val_split=0.2, test_split=0.2))
    again = data.resolve_splits({"training": root}, args(val_split=0.2, test_split=0.2))
    other_seed = data.resolve_splits({"training": root}, args(val_split=0.2, test_split=0.2, seed=1))
    assert first.val == again.val and first.test == again.test
    assert first.val != other_seed.val
    per_class = {label: sum(1 for _, y in first.val if y == label) for label in range(3)}
    assert per_class == {0: 2, 1: 4, 2: 1}  # stratified: 20% of each class
    assert not set(first.train) & set(first.val) and not set(first.val) & set(first.test)
    assert len(first.train) + len(first.val) + len(first.test) == 35


def test_validation_channel_wins_over_splitting(tmp_path):
    train = image_folder(tmp_path / "training", {"a": 10, "b": 10})
    val = image_folder(tmp_path / "validation", {"a": 1, "b": 1})
    splits = data.resolve_splits({"training": train, "validation": val}, args())
    assert (len(splits.train), len(splits.val)) == (20, 2)


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("drop_clutter", [True, False])
def test_raw_caltech256_layout(tmp_path, wrapped, drop_clutter):
    root = tmp_path / "training"
    classes = {"001.ak47": 5, "063.electric-guitar-101": 5, "145.motorbikes-101": 5, "257.clutter": 5}
    image_folder(root / "256_ObjectCategories" if wrapped else root, classes)
    (root / ("256_ObjectCategories" if wrapped else "") / "198.spider").mkdir()
    (root / ("256_ObjectCategories" if wrapped else "") / "198.spider" / "RENAME2").write_text("x")
    image_folder(root / ("256_ObjectCategories" if wrapped else "") / "198.spider", {"": 0})
    Image.new("RGB", (8, 8)).save(root / ("256_ObjectCategories" if wrapped else "") / "198.spider" / "198_0001.jpg")
    splits = data.resolve_splits({"training": root}, args(drop_clutter=drop_clutter))
    expected = ["ak47", "electric guitar", "motorbikes", "spider"] + ([] if drop_clutter else ["clutter"])
    assert splits.class_names == expected
    assert all(p.suffix == ".jpg" for p, _ in splits.train + splits.val)  # RENAME2 is not an image


def test_hidden_files_are_not_images(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 2, "b": 2})
    (root / "a" / "._a_0000.jpg").write_bytes(b"macOS resource fork")
    assert len(data.scan(root, ["a", "b"], "training")) == 4


def test_display_names():
    assert data.display_name("001.ak47") == "ak47"
    assert data.display_name("063.electric-guitar-101") == "electric guitar"
    assert data.display_name("plain_name") == "plain name"


@pytest.mark.parametrize(
    "layout,message",
    [
        ({"training": {"a": 2, "b": 0}}, "class folder 'b' in training has no images"),
        ({"training": {"only": 3}}, "single class ('only')"),
        ({"training": {}}, "training has no class folders"),
        ({"training": {"a": 2, "b": 2}, "validation": {"a": 1, "c": 1}}, "missing ['b'], extra ['c']"),
        ({"validation": {"a": 1, "b": 1}}, "no 'training' channel"),
    ],
)
def test_bad_layouts_fail_with_a_reason(tmp_path, layout, message):
    channels = {}
    for name, classes in layout.items():
        (tmp_path / name).mkdir()
        channels[name] = image_folder(tmp_path / name, classes)
    with pytest.raises(TrainingError) as err:
        data.resolve_splits(channels, args())
    assert message in str(err.value)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [("RGB", "JPEG"), ("RGB", "PNG"), ("RGB", "WEBP"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG")],
)
def test_every_image_kind_decodes_to_rgb(mode, fmt):
    image = Image.new("RGB", (40, 30), (200, 30, 30)).convert(mode)
    decoded = model_artifact.decode_image(_encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_transparency_becomes_white_and_exif_orientation_is_applied():
    clear = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert model_artifact.decode_image(_encode(clear, "PNG")).getpixel((5, 5)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    tall = model_artifact.decode_image(_encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    assert tall.size == (20, 40)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 6, "b": 6})
    (root / "a" / "a_0000.jpg").write_bytes(b"not an image")
    full = (root / "b" / "b_0000.jpg").read_bytes()
    (root / "b" / "b_0000.jpg").write_bytes(full[: len(full) // 2])  # truncated JPEG
    samples = data.scan(root, ["a", "b"], "training")
    prep = model_artifact.Preprocessing.for_image_size(16)
    dataset = data.ImageDataset(samples, model_artifact.eval_transform(prep), prep.resize_size)
    images, labels, bad = data.collate([dataset[i] for i in range(len(dataset))])
    assert images.shape == (10, 3, 16, 16) and len(labels) == 10
    assert sorted(samples[i][0].name for i in bad) == ["a_0000.jpg", "b_0000.jpg"]
    tolerant = data.BadFiles(samples, 0.2, "training")
    tolerant.add(bad)
    assert len(tolerant.indices) == 2
    with pytest.raises(TrainingError, match="2 of 12 training images are unreadable"):
        data.BadFiles(samples, 0.1, "training").add(bad)


def test_all_unreadable_batch_collates_to_none():
    assert data.collate([(None, 0, 3), (None, 1, 4)]) == (None, None, [3, 4])


def test_sampler_shards_evenly_and_resumes_where_it_stopped():
    ranks = [data.EpochSampler(10, r, 3, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded so every rank runs the same steps
    assert {i for shard in shards for i in shard} == set(range(10))
    full = list(ranks[0])
    ranks[0].set_epoch(2, skip=2)
    assert list(ranks[0]) == full[2:] and len(ranks[0]) == 2
    ranks[0].set_epoch(3)
    assert list(ranks[0]) != full


def test_evaluation_shards_cover_each_sample_once():
    shards = [list(data.EpochSampler(10, r, 3, seed=0, shuffle=False)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_loader_yields_batches_from_a_worker(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 5, "b": 5})
    prep = model_artifact.Preprocessing.for_image_size(16)
    samples = data.scan(root, ["a", "b"], "training")
    sampler = data.EpochSampler(len(samples), 0, 1, seed=0)
    loader = data.make_loader(
        data.ImageDataset(samples, data.train_transform(prep), prep.resize_size), sampler, 4, 1, True, False
    )
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4]  # the size-2 remainder is dropped for BatchNorm
    assert batches[0][0].dtype == torch.float32
