"""Serving without torch equals training's evaluation: ``ArrayTransform`` against
``eval_transform`` bit for bit, and ONNX Runtime against PyTorch on the same photos."""

from __future__ import annotations

import importlib.util
import io
import random
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model_artifact
from model_artifact import Preprocessing
from train import artifact

MAX_PIXELS = model_artifact.MAX_IMAGE_PIXELS  # serving's SERVE_MAX_PIXELS default
IMAGE_SIZES = (224, 64)
PROBABILITY_TOLERANCE = 1e-3
SPLITS = ("training", "validation", "test")
CLASSES = ("ball", "box", "cone", "ring")  # train.sample_data.CLASSES


@cache
def _photo() -> Image.Image:
    """A real photograph (matplotlib's sample, a project dependency), else a photo-like generated one."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            with Image.open(path) as image:
                return image.convert("RGB")
    from train import sample_data

    return sample_data.make_image(random.Random(7), "ball").resize((512, 600), Image.LANCZOS)


def photo(size: tuple[int, int], noise: bool = False) -> Image.Image:
    """The photo resized to ``size`` (with sensor-like noise: no smooth upscaled areas)."""
    image = _photo().resize(size, Image.LANCZOS)
    if noise:
        image = Image.blend(image, Image.effect_noise(size, 40).convert("RGB"), 0.15)
    return image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def with_alpha(image: Image.Image) -> Image.Image:
    """RGBA: a horizontal alpha gradient, fully transparent on the left quarter."""
    alpha = Image.linear_gradient("L").rotate(90).resize(image.size)
    alpha.paste(0, (0, 0, image.width // 4, image.height))
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    image = photo(size).convert("P", palette=Image.ADAPTIVE, colors=64)
    image.info["transparency"] = image.getpixel((0, 0))
    return image


def sixteen_bit(size: tuple[int, int]) -> Image.Image:
    """I;16 with values over the whole 16-bit range, not only multiples of 256."""
    values = np.asarray(photo(size).convert("L"), dtype=np.uint16) * 257 + np.uint16(100)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return image


def with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {}))


def png(size, **kw):
    return lambda prep: encode(photo(size, **kw), "PNG")


def jpeg(size, **kw):
    return lambda prep: encode(photo(size, noise=True), "JPEG", quality=90, **kw)


# name -> (bytes for a Preprocessing, a JPEG that drafting reduces at every image size). Sizes that depend on
# the preprocessing: an image already at resize_size (no resize at all), odd margins whose center
# crop starts at x.5 (rounded half to even: down for 16.5, up for 17.5), one pixel off.
VARIANTS = {
    # sizes
    "1x1": (png((1, 1)), False),
    "2x1": (png((2, 1)), False),
    "1x2": (png((1, 2)), False),
    "5x5": (png((5, 5)), False),
    "3x700": (png((3, 700)), False),
    "700x3": (png((700, 3)), False),
    "1200x90": (png((1200, 90), noise=True), False),
    "short=resize, square": (lambda p: encode(photo((p.resize_size, p.resize_size), True), "PNG"), False),
    "short=resize, margin 16.5": (lambda p: encode(photo((p.resize_size, p.image_size + 33), True), "PNG"), False),
    "short=resize, margin 17.5": (lambda p: encode(photo((p.image_size + 35, p.resize_size), True), "PNG"), False),
    "short=resize-1": (lambda p: encode(photo((p.resize_size - 1, p.resize_size + 50), True), "PNG"), False),
    "short=resize+1": (lambda p: encode(photo((p.resize_size + 51, p.resize_size + 1), True), "PNG"), False),
    "odd 333x517": (png((333, 517), noise=True), False),
    "1001x1001 png": (png((1001, 1001), noise=True), False),
    "1500x1100 jpeg": (jpeg((1500, 1100)), True),
    "1100x1500 progressive": (jpeg((1100, 1500), progressive=True), True),
    "4000x3000 jpeg 4:4:4": (jpeg((4000, 3000), subsampling=0), True),
    "641x479 jpeg": (jpeg((641, 479)), False),
    # modes
    "L png": (lambda p: encode(photo((300, 200)).convert("L"), "PNG"), False),
    "L jpeg": (lambda p: encode(photo((1200, 900), True).convert("L"), "JPEG", quality=85), True),
    "LA png": (lambda p: encode(with_alpha(photo((300, 200))).convert("LA"), "PNG"), False),
    "RGBA png": (lambda p: encode(with_alpha(photo((300, 200))), "PNG"), False),
    "RGBA webp": (lambda p: encode(with_alpha(photo((300, 200))), "WEBP", quality=80), False),
    "P png": (lambda p: encode(photo((300, 200)).convert("P", palette=Image.ADAPTIVE), "PNG"), False),
    "P png transparency": (lambda p: encode(palette_with_transparency((300, 200)), "PNG"), False),
    "P gif": (lambda p: encode(photo((300, 200)).convert("P", palette=Image.ADAPTIVE), "GIF"), False),
    "P gif transparency": (lambda p: encode(palette_with_transparency((300, 200)), "GIF"), False),
    "CMYK jpeg": (lambda p: encode(photo((400, 300), True).convert("CMYK"), "JPEG", quality=90), False),
    "CMYK jpeg large": (lambda p: encode(photo((1600, 1200), True).convert("CMYK"), "JPEG", quality=90), True),
    "I;16 png": (lambda p: encode(sixteen_bit((300, 200)), "PNG"), False),
    "I;16 png large": (lambda p: encode(sixteen_bit((1100, 700)), "PNG"), False),
    "1-bit png": (lambda p: encode(photo((300, 200)).convert("1"), "PNG"), False),
    "1-bit tiff": (lambda p: encode(photo((300, 200)).convert("1"), "TIFF"), False),
    "F tiff": (lambda p: encode(photo((300, 200)).convert("F"), "TIFF"), False),
    "RGB tiff": (lambda p: encode(photo((300, 200)), "TIFF"), False),
    "RGB bmp": (lambda p: encode(photo((301, 199)), "BMP"), False),
    "RGB webp lossy": (lambda p: encode(photo((300, 200), True), "WEBP", quality=75), False),
    "RGB webp lossless": (lambda p: encode(photo((300, 200), True), "WEBP", lossless=True), False),
    # EXIF orientations (5-8 turn the image a quarter: the upright image is 200x300)
    **{f"jpeg orientation {o}": (lambda p, o=o: with_orientation(photo((300, 200)), o), False) for o in range(1, 9)},
    "jpeg orientation 6 large": (lambda p: with_orientation(photo((1600, 1000), True), 6), True),
    "png orientation 8": (lambda p: with_orientation(photo((300, 200)), 8, "PNG"), False),
}


def assert_equal_transforms(prep: Preprocessing, image: Image.Image, where: str) -> None:
    expected = model_artifact.eval_transform(prep)(image).numpy()
    got = model_artifact.ArrayTransform(prep)(image)
    assert got.dtype == np.float32 and got.shape == (3, prep.image_size, prep.image_size), where
    assert expected.shape == got.shape, where
    if not np.array_equal(got, expected):
        differ = np.count_nonzero(got != expected)
        worst = float(np.abs(got - expected).max())
        pytest.fail(f"{where}: {differ} values differ (largest by {worst:.3g}) for a {image.size} image")


@pytest.mark.parametrize("image_size", IMAGE_SIZES)
@pytest.mark.parametrize("name", VARIANTS)
def test_arraytransform_equals_eval_transform(name, image_size):
    """Every size, mode, format and orientation decodes as serving does and transforms equally."""
    prep = Preprocessing.for_image_size(image_size)
    make, drafted = VARIANTS[name]
    data = make(prep)
    with Image.open(io.BytesIO(data)) as original:
        turned = original.getexif().get(0x0112, 1) >= 5  # orientations 5-8 turn a quarter
        upright = original.size[::-1] if turned else original.size
    image = model_artifact.decode_image(data, draft_size=prep.resize_size, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    if data.startswith(b"\xff\xd8"):  # JPEG: may decode at a reduced scale that still covers the resize
        assert image.width <= upright[0] and image.height <= upright[1]
        assert min(image.size) >= min(prep.resize_size, *upright), (image.size, upright)
        assert image.width < upright[0] or not drafted  # large ones are reduced at either size
    else:
        assert image.size == upright
    assert_equal_transforms(prep, image, name)


def test_variants_are_what_they_say():
    """Each mode variant opens in that mode (Pillow could have saved another), transparency kept."""
    prep = Preprocessing.for_image_size(64)
    modes = {"L", "LA", "RGBA", "P", "CMYK", "I;16", "F", "RGB", "1-bit"}
    checked = 0
    for name, (make, _) in VARIANTS.items():
        if name.split()[0] not in modes:
            continue
        with Image.open(io.BytesIO(make(prep))) as image:
            assert image.mode == name.split()[0].replace("1-bit", "1"), name
            assert image.format == name.split()[1].upper(), name
            assert ("transparency" in image.info) == name.endswith("transparency"), name
        checked += 1
    assert checked == 20


@pytest.mark.parametrize("image_size", IMAGE_SIZES)
@pytest.mark.parametrize("split", SPLITS)
def test_arraytransform_equals_eval_transform_on_the_sample_data(sample_data, split, image_size):
    """Every photo of the sample dataset (JPEG and PNG of varied sizes), as serving decodes it."""
    prep = Preprocessing.for_image_size(image_size)
    paths = sorted((sample_data / split).glob("*/*"))
    assert len(paths) >= 15 * len(CLASSES)
    for path in paths:
        image = model_artifact.decode_image(path.read_bytes(), draft_size=prep.resize_size, max_pixels=MAX_PIXELS)
        assert_equal_transforms(prep, image, f"{split}/{path.parent.name}/{path.name}")


@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_odd_margin_variants_round_half_to_even(image_size):
    """The odd-margin variants' crops start at 16.5 and 17.5 pixels (else they test nothing): at 16 and 18."""
    prep = Preprocessing.for_image_size(image_size)
    transform = model_artifact.ArrayTransform(prep)
    for name, top in (("short=resize, margin 16.5", 16), ("short=resize, margin 17.5", 18)):
        image = model_artifact.decode_image(VARIANTS[name][0](prep), prep.resize_size, MAX_PIXELS)
        assert transform.resize(image) is image  # already at resize_size: not resized
        assert (max(image.size) - image_size) % 2 == 1
        rows, columns = np.indices(image.size[::-1], dtype=np.uint8)
        numbered = np.stack([rows, columns, rows], axis=2)  # each pixel holds its own position
        cropped = transform.crop(numbered)
        assert cropped[0, 0, 0 if image.height > image.width else 1] == top  # the long side's first index


# --- the model: PyTorch (training's path) against ONNX Runtime (the CPU serving image's) ---


def decoded(paths: list[Path], prep: Preprocessing) -> list[Image.Image]:
    return [model_artifact.decode_image(p.read_bytes(), prep.resize_size, MAX_PIXELS) for p in paths]


def torch_probabilities(model: torch.nn.Module, prep: Preprocessing, images: list[Image.Image]) -> np.ndarray:
    transform = model_artifact.eval_transform(prep)
    with torch.no_grad():
        return torch.softmax(model(torch.stack([transform(image) for image in images])), dim=1).numpy()


def onnx_probabilities(path: Path, prep: Preprocessing, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    transform = model_artifact.ArrayTransform(prep)
    arrays = np.stack([transform(image) for image in images])
    feeds = [arrays[i : i + batch] for i in range(0, len(arrays), batch)]
    return np.concatenate([session.run([model_artifact.ONNX_OUTPUT], {model_artifact.ONNX_INPUT: x})[0] for x in feeds])


def compare(model_dir: Path, images: list[Image.Image], batch: int = 64) -> tuple[float, np.ndarray]:
    """(largest probability difference, ONNX Runtime's probabilities); asserts equal top-1 labels."""
    model, meta = model_artifact.load(model_dir)
    expected = torch_probabilities(model, meta.preprocessing, images)
    got = onnx_probabilities(model_artifact.onnx_path(model_dir, meta), meta.preprocessing, images, batch)
    assert got.shape == expected.shape == (len(images), meta.num_classes)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all(), "a top-1 label differs"
    return float(np.abs(got - expected).max()), got


@pytest.mark.slow
def test_trained_model_answers_the_same_on_onnx_runtime(trained_job, sample_data):
    """The model that training wrote: every sample test photo gets the same label and probabilities."""
    model_dir = trained_job[0] / "model"
    meta = model_artifact.load_metadata(model_dir)
    paths = sorted((sample_data / "test").glob("*/*"))
    difference, got = compare(model_dir, decoded(paths, meta.preprocessing))
    print(f"trained model: largest probability difference {difference:.3g} over {len(paths)} photos")
    assert difference <= PROBABILITY_TOLERANCE
    labels = [meta.class_names[i] for i in got.argmax(axis=1)]
    accuracy = np.mean([label == p.parent.name for label, p in zip(labels, paths, strict=True)])
    assert accuracy > 1 / len(CLASSES)  # a trained model: its top-1 labels are not near ties


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """ResNet18 with seeded random weights, 4 classes at 64 px, saved with its model.onnx."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random64") / "model"
    net = model_artifact.build_model("resnet18", len(CLASSES))
    meta = model_artifact.Metadata("resnet18", list(CLASSES), Preprocessing.for_image_size(64))
    artifact.save(path, net.state_dict(), meta)
    return path


@pytest.mark.slow
def test_random_model_answers_the_same_on_onnx_runtime(random_model, sample_data):
    """Every sample test photo through both runtimes, each with its own preprocessing."""
    prep = model_artifact.load_metadata(random_model).preprocessing
    paths = sorted((sample_data / "test").glob("*/*"))
    difference, _ = compare(random_model, decoded(paths, prep), batch=7)  # batches of 7 and a rest of 4
    print(f"random 64 px model: largest probability difference {difference:.3g} over {len(paths)} photos")
    assert difference <= PROBABILITY_TOLERANCE


@pytest.mark.slow
def test_imagenet_sized_model_answers_the_same_on_onnx_runtime(tmp_path, sample_data):
    """224 px and 257 classes (Caltech-256's shape) with random weights, on a handful of photos."""
    torch.manual_seed(1)
    prep = Preprocessing.for_image_size(224)
    classes = [f"{i:03d}.class" for i in range(1, 258)]
    net = model_artifact.build_model("resnet18", len(classes))
    artifact.save(tmp_path, net.state_dict(), model_artifact.Metadata("resnet18", classes, prep))
    variants = ("1500x1100 jpeg", "CMYK jpeg", "RGBA png", "jpeg orientation 6", "3x700", "odd 333x517")
    data = [VARIANTS[name][0](prep) for name in variants]
    data += [p.read_bytes() for p in sorted((sample_data / "test").glob("*/*_00[03].*"))]
    images = [model_artifact.decode_image(d, prep.resize_size, MAX_PIXELS) for d in data]
    difference, got = compare(tmp_path, images, batch=5)
    one_by_one = onnx_probabilities(tmp_path / model_artifact.ONNX_FILE, prep, images, batch=1)
    print(f"random 224 px model, 257 classes: largest probability difference {difference:.3g}")
    assert difference <= PROBABILITY_TOLERANCE
    np.testing.assert_allclose(one_by_one, got, atol=1e-5)  # the batch size changes nothing
