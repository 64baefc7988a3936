"""Channel layouts, image decoding, unreadable files and splits."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import model_artifact
from train import crops, data, loader
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
    assert splits.class_names == ["001.Affenpinscher", "002.Afghan_hound"]
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
    expected = ["001.ak47", "063.electric-guitar-101", "145.motorbikes-101", "198.spider"]
    expected += [] if drop_clutter else ["257.clutter"]
    assert splits.class_names == expected
    assert all(p.suffix == ".jpg" for p, _ in splits.train + splits.val)  # RENAME2 is not an image


def test_hidden_files_are_not_images(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 2, "b": 2})
    (root / "a" / "._a_0000.jpg").write_bytes(b"macOS resource fork")
    assert len(data.scan(root, ["a", "b"], "training")) == 4


def test_class_names_are_the_folder_names_exactly(tmp_path):
    """A prediction's label must map back to the folder: ``class_2`` stays ``class_2``."""
    image_folder(tmp_path / "training", {"class_2": 2, "063.electric-guitar-101": 2})
    splits = data.resolve_splits({"training": tmp_path / "training"}, args())
    assert splits.class_names == ["063.electric-guitar-101", "class_2"]


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
    dataset = data.ImageDataset(samples, crops.EvalCrop(prep))
    images, labels, bad = loader.collate([dataset[i] for i in range(len(dataset))])
    assert images.shape == (10, 3, 16, 16) and len(labels) == 10
    assert sorted(samples[i][0].name for i in bad) == ["a_0000.jpg", "b_0000.jpg"]
    tolerant = data.BadFiles(samples, 0.2, "training")
    tolerant.add(bad)
    assert len(tolerant.indices) == 2
    with pytest.raises(TrainingError, match="2 of 12 training images are unreadable"):
        data.BadFiles(samples, 0.1, "training").add(bad)


def _dataset(samples, **kw) -> data.ImageDataset:
    prep = model_artifact.Preprocessing.for_image_size(16)
    return data.ImageDataset(samples, crops.EvalCrop(prep, **kw))


def _one_line_warnings(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert all("\n" not in line for line in lines), lines
    return lines


def test_images_over_max_image_pixels_are_unreadable(tmp_path, caplog):
    root = image_folder(tmp_path / "training", {"a": 2, "b": 1})  # 20x16 = 320 pixels each
    Image.new("RGB", (4000, 1)).save(root / "b" / "wide.png")  # 4000 pixels, but 72000x18 once resized
    samples = data.scan(root, ["a", "b"], "training")
    assert _dataset(samples, max_pixels=1000)[0][0] is not None
    items = [_dataset(samples, max_pixels=319)[i] for i in range(len(samples))]
    assert all(image is None for image, _, _ in items)
    assert _dataset(samples, max_pixels=1_000_000)[3][0] is None  # the wide one: its resize is too large
    assert all(item[0] is not None for item in (_dataset(samples, max_pixels=1_000_000)[i] for i in range(3)))
    warnings = _one_line_warnings(caplog)
    assert any("wide.png" in w and "DecompressionBombError" in w for w in warnings)


def test_the_default_pixel_cap_is_servings(tmp_path):
    Image.new("1", (7000, 6000)).save(tmp_path / "bomb.png")  # 42M pixels in a few KB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    dataset = _dataset([(tmp_path / "bomb.png", 0)])
    assert dataset.load.max_pixels == crops.MAX_IMAGE_PIXELS == model_artifact.MAX_IMAGE_PIXELS == 40_000_000
    assert dataset[0] == (None, 0, 0)


def test_any_exception_of_one_file_counts_it_unreadable(tmp_path, monkeypatch, caplog):
    import struct

    root = image_folder(tmp_path / "training", {"a": 2, "b": 2})
    (root / "b" / "b_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    decode = model_artifact.decode_image

    def hostile(source, *args, **kwargs):
        if Path(source).name == "a_0000.jpg":
            raise struct.error("unpack requires a buffer of 4 bytes\nsecond line")
        if Path(source).name == "a_0001.jpg":
            raise MemoryError()
        return decode(source, *args, **kwargs)

    monkeypatch.setattr(model_artifact, "decode_image", hostile)
    samples = data.scan(root, ["a", "b"], "training")
    items = [_dataset(samples)[i] for i in range(len(samples))]
    assert [item[0] is None for item in items] == [True, True, False, True]
    warnings = _one_line_warnings(caplog)
    assert any("a_0000.jpg" in w and "struct.error: unpack requires a buffer of 4 bytes" in w for w in warnings)
    assert any(w.endswith("a_0001.jpg: MemoryError") for w in warnings)
    assert any("b_0001.jpg" in w for w in warnings)


def test_a_transform_failure_counts_the_file_unreadable(tmp_path, caplog):
    root = image_folder(tmp_path / "training", {"a": 1, "b": 1})

    def transform(path):
        raise ZeroDivisionError("division by zero")

    samples = data.scan(root, ["a", "b"], "training")
    dataset = data.ImageDataset(samples, transform)
    assert dataset[1] == (None, 1, 1)
    assert any("ZeroDivisionError: division by zero" in w for w in _one_line_warnings(caplog))


def test_links_out_of_a_channel_are_not_read(tmp_path, caplog):
    outside = image_folder(tmp_path / "outside", {"secret": 2})
    store = image_folder(tmp_path / "store" / "training", {"a": 3, "b": 3})
    (store / "secret").symlink_to(outside / "secret")  # a class folder out of the channel
    (store / "a" / "passwd.png").symlink_to(outside / "secret" / "secret_0000.jpg")  # a file out of it
    (store / "b" / "again.jpg").symlink_to(store / "a" / "a_0000.jpg")  # inside the channel: fine
    channel = tmp_path / "input" / "data" / "training"
    channel.parent.mkdir(parents=True)
    channel.symlink_to(store)  # the channel itself is a link (tests' make_job), resolved first
    splits = data.resolve_splits({"training": channel}, args(val_split=0.0))
    assert splits.class_names == ["a", "b"]
    names = sorted(p.name for p, _ in splits.train + splits.val + splits.test)
    assert names == ["a_0000.jpg", "a_0001.jpg", "a_0002.jpg", "again.jpg", "b_0000.jpg", "b_0001.jpg", "b_0002.jpg"]
    (warning,) = [w for w in _one_line_warnings(caplog) if "outside" in w]
    assert warning.startswith("training: ignored 2 link(s)") and warning.endswith("training/secret)")


def test_links_out_of_validation_and_test_channels_are_not_read(tmp_path, caplog):
    outside = image_folder(tmp_path / "outside", {"a": 1})
    channels = {s: image_folder(tmp_path / s, {"a": 2, "b": 2}) for s in ("training", "validation", "test")}
    (channels["validation"] / "a" / "x.jpg").symlink_to(outside / "a" / "a_0000.jpg")
    (channels["test"] / "b" / "y.jpg").symlink_to(outside / "a" / "a_0000.jpg")
    (channels["test"] / "b" / "z.jpg").symlink_to(outside / "a" / "a_0000.jpg")
    splits = data.resolve_splits(channels, args())
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 4)
    warnings = [w for w in _one_line_warnings(caplog) if "outside" in w]
    assert len(warnings) == 2
    assert any("validation" in w and "1 link(s)" in w and "x.jpg" in w for w in warnings)
    assert any("test" in w and "2 link(s)" in w and "y.jpg" in w for w in warnings)


def test_a_class_of_links_out_only_has_no_images_and_says_why(tmp_path, caplog):
    outside = image_folder(tmp_path / "outside", {"x": 2})
    root = image_folder(tmp_path / "training", {"a": 2})
    (root / "b").mkdir()
    for i in range(2):
        (root / "b" / f"{i}.jpg").symlink_to(outside / "x" / f"x_000{i}.jpg")
    with pytest.raises(TrainingError, match="class folder 'b' in training has no images"):
        data.resolve_splits({"training": root}, args())
    (warning,) = [w for w in _one_line_warnings(caplog) if "outside" in w]
    assert warning.startswith("training: ignored 2 link(s)") and warning.endswith("b/0.jpg)")


def test_a_loader_worker_survives_any_exception(tmp_path, monkeypatch):
    import struct

    root = image_folder(tmp_path / "training", {"a": 4, "b": 4})
    decode = model_artifact.decode_image

    def hostile(source, *args, **kwargs):
        if Path(source).name == "b_0002.jpg":
            raise struct.error("bad header")
        return decode(source, *args, **kwargs)

    monkeypatch.setattr(model_artifact, "decode_image", hostile)  # forked workers inherit it
    samples = data.scan(root, ["a", "b"], "training")
    sampler = loader.EpochSampler(8, 0, 1, seed=0, shuffle=False)
    batches = loader.make_loader(_dataset(samples), sampler, 4, 1, False, 16)
    batches = [(images.clone(), labels, bad) for images, labels, bad in batches]
    assert [len(b[1]) for b in batches] == [4, 3] and [b[2] for b in batches] == [[], [6]]
