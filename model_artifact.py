"""The model artifact: the one format that training writes and serving reads.

A model directory (SageMaker's ``/opt/ml/model``, tarred to model.tar.gz) holds:

- ``model.pt``: the weights, a plain ``state_dict`` saved with ``torch.save`` and loaded
  with ``torch.load(weights_only=True)`` (no pickled code);
- ``model.onnx``: the same network with a softmax, for ONNX Runtime (the CPU serving image
  has no PyTorch);
- ``model.int8.onnx`` (optional): ``model.onnx`` quantized to int8, with the accuracy it
  kept on the validation split (``Int8Check``); the CPU image serves it when the drop is small;
- ``artifact.json``: format version, architecture, class names in index order,
  preprocessing, final metrics, library versions and the SHA-256 of ``model.pt``,
  ``model.onnx`` and ``model.int8.onnx``;
- ``code/``: ``inference.py`` for AWS's PyTorch inference container, with a copy of this module.

This module is the run-time side that serving, training and ``code/`` import: the format, the
checked loader, image decoding, the evaluation transform (torchvision's for training,
``ArrayTransform`` without torch for serving, equal bit for bit, so that the pixels a served
image becomes are exactly the pixels training evaluated) and the request limits they share.
Training writes the artifact (``train/artifact.py``: weights, ONNX export, ``export-onnx``) and
``serve/portable_code.py`` writes ``code/``. It imports nothing from training code, and torch
only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
METADATA_FILE = "artifact.json"
ARTIFACT_FILES = (METADATA_FILE, WEIGHTS_FILE)  # all that a model folder needs; serving copies nothing else
OPTIONAL_FILES = (ONNX_FILE, INT8_FILE)  # copied too where present (the CPU serving image runs them)
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ONNX_TOLERANCE = 1e-4  # largest difference of a probability between model.onnx and model.pt (checked at export)

# What one request may carry: the defaults of serving's settings (serve/settings.py) and of
# code/inference.py; training refuses images over the same pixel cap (train/config.py).
MAX_IMAGES = 64  # images per request (SERVE_MAX_IMAGES)
MAX_IMAGE_PIXELS = 40_000_000  # pixels per image, checked before decoding (SERVE_MAX_PIXELS; max-image-pixels)
MAX_REQUEST_PIXELS = 100_000_000  # pixels of all images of a request together (SERVE_MAX_REQUEST_PIXELS)
DEFAULT_TOP_K = 5  # labels per image unless the request asks otherwise (SERVE_TOP_K)


class ArtifactError(Exception):
    """The model directory is missing, incomplete, corrupt or of an unknown format."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor at evaluation time."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_image_size(cls, image_size: int) -> Preprocessing:
        """The torchvision convention: resize the short side to size/0.875, center-crop."""
        return cls(image_size=image_size, resize_size=round(image_size / 0.875))


@dataclass(frozen=True)
class Int8Check:
    """``model.int8.onnx``: its checksum, how it was made, and what it keeps of ``model.onnx``'s
    answers on the validation split (accuracies are fractions, as in ``metrics``)."""

    sha256: str
    method: str
    images: int  # validation images both models answered
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float  # fraction of those images where both give the same top-1 class

    @property
    def accuracy_drop(self) -> float:
        """Points of top-1 accuracy lost: 100 * (fp32 - int8); negative where int8 did better."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @classmethod
    def from_json(cls, raw: dict) -> Int8Check:
        """Read and validate the ``int8`` object of artifact.json."""
        check = cls(**raw)
        fractions = (check.fp32_accuracy, check.int8_accuracy, check.agreement)
        if not all(isinstance(x, int | float) and 0 <= x <= 1 for x in fractions):
            raise ValueError("int8: accuracies and agreement must be fractions between 0 and 1")
        if not isinstance(check.images, int) or check.images < 1 or not isinstance(check.sha256, str):
            raise ValueError("int8: images must be a positive integer and sha256 a string")
        return check


@dataclass
class Metadata:
    """Everything about the model except its weights."""

    architecture: str
    class_names: list[str]
    preprocessing: Preprocessing
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    weights_sha256: str = ""
    onnx_sha256: str = ""  # empty: no model.onnx (an artifact written before, or save(onnx=False))
    int8: Int8Check | None = None  # None: no model.int8.onnx
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def display_name(label: str) -> str:
    """A class folder's name for people: ``001.ak47`` → ``ak47``; ``063.electric-guitar-101`` → ``electric guitar``.

    Predictions carry the folder name itself as ``label`` (a client maps it back exactly) and
    this as ``name``.
    """
    name = re.sub(r"^\d+\.", "", label)
    name = re.sub(r"-101$", "", name)
    return name.replace("_", " ").replace("-", " ").strip() or label


def build_model(architecture: str, num_classes: int) -> torch.nn.Module:
    """An untrained torchvision classifier with ``num_classes`` outputs."""
    import torchvision

    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise ArtifactError(f"unknown architecture {architecture!r}: {exc}") from exc


def load_metadata(model_dir: str | os.PathLike) -> Metadata:
    """Read and validate ``artifact.json``."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: is this a model trained by this project?")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"artifact format {raw.get('format_version')!r} is not supported "
                f"(this code reads format {FORMAT_VERSION})"
            )
        prep = raw.pop("preprocessing")
        prep = Preprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})
        int8 = raw.pop("int8", None)
        meta = Metadata(preprocessing=prep, int8=Int8Check.from_json(int8) if int8 is not None else None, **raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{path} is malformed: {exc}") from exc
    if not meta.class_names:
        raise ArtifactError(f"{path} lists no class names")
    return meta


def verified_file(model_dir: str | os.PathLike, name: str, sha256: str) -> Path:
    """``model_dir/name`` after checking it against its checksum in artifact.json."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path} not found")
    if file_sha256(path) != sha256:
        raise ArtifactError(f"{path} does not match the checksum in {METADATA_FILE}")
    return path


def onnx_path(model_dir: str | os.PathLike, meta: Metadata) -> Path:
    """The verified ``model.onnx``; an artifact without one gets a reason that says what to do."""
    if not meta.onnx_sha256:
        raise ArtifactError(
            f"{Path(model_dir)} has no {ONNX_FILE} (written before ONNX export): run `export-onnx` on it, "
            "or serve it with the PyTorch image (byoc-classifier-serving-gpu)"
        )
    return verified_file(model_dir, ONNX_FILE, meta.onnx_sha256)


def int8_path(model_dir: str | os.PathLike, meta: Metadata) -> Path:
    """The verified ``model.int8.onnx`` (the artifact must carry one: ``meta.int8``)."""
    if meta.int8 is None:
        raise ArtifactError(f"{Path(model_dir)} has no {INT8_FILE}: run `export-onnx --int8 VALIDATION_FOLDER` on it")
    return verified_file(model_dir, INT8_FILE, meta.int8.sha256)


def load(model_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load (model in eval mode, metadata); verifies the checksum, never unpickles code."""
    meta = load_metadata(model_dir)
    return load_network(model_dir, meta, device), meta


def load_network(model_dir: str | os.PathLike, meta: Metadata, device: str | torch.device = "cpu"):
    """The network of an artifact whose metadata is ``meta``, in eval mode on ``device``."""
    import torch

    weights = verified_file(model_dir, WEIGHTS_FILE, meta.weights_sha256)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(meta.architecture, meta.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"weights do not fit {meta.architecture}: {reason}") from exc
    return model.to(device).eval()


def copy_files(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy only the artifact's files (``ARTIFACT_FILES``, and ``OPTIONAL_FILES`` that exist)
    from ``source`` into a new folder ``target``.

    Whatever else a model folder holds (code, ``MAR-INF/``, links) stays behind, so serving
    never imports or reads it. A file that is a symbolic link or not a regular file is refused.
    """
    source, target = Path(source), Path(target)
    target.mkdir(parents=True)
    optional = [name for name in OPTIONAL_FILES if os.path.lexists(source / name)]
    for name in (*ARTIFACT_FILES, *optional):
        try:
            fd = os.open(source / name, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ArtifactError(f"{source / name} not found: is this a model trained by this project?") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArtifactError(f"{source / name} is a symbolic link: refused") from None
            raise ArtifactError(f"cannot read {source / name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise ArtifactError(f"{source / name} is not a regular file")
            with open(target / name, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return target


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied, transparency composited on white.

    An upright RGB image is returned as it is: exif_transpose and convert would each copy it
    (about 1 ms of a served photo's 20)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # what exif_transpose looks at
        image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("F").point(lambda v: v / 256).convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(
    source: bytes | str | os.PathLike, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image file or bytes to upright RGB.

    ``draft_size`` lets JPEG decode at a reduced scale that still covers it (much faster
    for large photos); training evaluation and serving pass the same value, the resize size.
    ``max_pixels`` refuses larger images before decoding them (decompression bombs), and
    images so elongated that resizing their short side to ``draft_size`` would exceed it.
    Raises ``PIL.UnidentifiedImageError``/``OSError``/``Image.DecompressionBombError``.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(stream) as image:
        check_size(image, max_pixels, draft_size)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(image)


def check_size(image: Image.Image, max_pixels: int | None, short_side: int | None = None) -> None:
    """Refuse an opened (not yet decoded) image over ``max_pixels``, or one so elongated that
    resizing its short side to ``short_side`` would exceed it; raises ``DecompressionBombError``."""
    if max_pixels and image.width * image.height > max_pixels:
        raise Image.DecompressionBombError(
            f"image of {image.width}x{image.height} pixels exceeds the limit of {max_pixels} pixels"
        )
    if max_pixels and short_side and _resized_pixels(image.size, short_side) > max_pixels:
        # a 200-byte 40000x1 PNG passes the cap above, but would resize to 2.6 billion pixels
        raise Image.DecompressionBombError(
            f"image of {image.width}x{image.height} pixels is too elongated: resized to {short_side} pixels "
            f"on its short side it would exceed the limit of {max_pixels} pixels"
        )


def _resized_pixels(size: tuple[int, int], short_side: int) -> int:
    """Pixels of an image of ``size`` once its short side is resized to ``short_side``."""
    short, long = max(min(size), 1), max(size)
    return short_side * round(long * short_side / short)


def eval_pixels(prep: Preprocessing) -> v2.Compose:
    """RGB PIL image → uint8 tensor (3, size, size): resize the short side, center-crop."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(prep.resize_size, antialias=True), v2.CenterCrop(prep.image_size), v2.PILToTensor()])


def normalize(pixels: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 pixels (..., 3, H, W) → the model's float32 input, on the pixels' device; the
    same operations as ``v2.ToDtype(scale=True)`` + ``v2.Normalize``, so equal bit for bit on the CPU."""
    import torch
    from torchvision.transforms.v2 import functional

    scaled = functional.to_dtype(pixels, torch.float32, scale=True)
    return functional.normalize(scaled, mean=list(prep.mean), std=list(prep.std))


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """RGB PIL image → normalized float tensor, exactly as evaluated in training."""
    from torchvision.transforms import v2

    return v2.Compose([eval_pixels(prep), v2.Lambda(lambda pixels: normalize(pixels, prep))])


class ArrayTransform:
    """``eval_transform`` without torch: RGB PIL image → float32 array (3, size, size), equal bit
    for bit (tests/test_preprocess_parity.py checks it on real photos of many sizes and modes).

    - ``v2.Resize`` of a PIL image resizes the short side to ``resize_size`` and the long side
      to ``int(resize_size * long / short)`` (truncated) with PIL's BILINEAR (which
      antialiases), and leaves an image of that size untouched;
    - ``v2.CenterCrop`` starts at ``round((h - crop) / 2)``, Python's round (half to even);
    - ``ToDtype(scale=True)`` + ``Normalize`` compute ``(v * float32(1/255) - mean) / std`` in
      float32: one value per byte and channel, so a (3, 256) table built with the same float32
      operations gives the same result, and the per-pixel work is a lookup.
    """

    def __init__(self, prep: Preprocessing):
        self.resize_size, self.image_size = prep.resize_size, prep.image_size
        values = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
        mean = np.asarray(prep.mean, dtype=np.float32)[:, None]
        std = np.asarray(prep.std, dtype=np.float32)[:, None]
        self.table = ((values[None, :] - mean) / std).astype(np.float32)

    def resize(self, image: Image.Image) -> Image.Image:
        """The short side to ``resize_size``, as torchvision resizes a PIL image."""
        (width, height), size = image.size, self.resize_size
        short, long = min(width, height), max(width, height)
        target = (size, int(size * long / short)) if width <= height else (int(size * long / short), size)
        return image if target == image.size else image.resize(target, resample=Image.BILINEAR)

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """Center crop of (H, W, 3) uint8 pixels, zero-padded first where smaller than the crop."""
        crop, (height, width) = self.image_size, pixels.shape[:2]
        if crop > height or crop > width:
            pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
            pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
            height, width = pixels.shape[:2]
        top, left = round((height - crop) / 2.0), round((width - crop) / 2.0)
        return pixels[top : top + crop, left : left + crop]

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image if image.mode == "RGB" else image.convert("RGB")
        pixels = self.crop(np.asarray(self.resize(image)))
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return out


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, as artifact.json records it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it. On any failure
    (``write`` raising included) the temporary file is removed and ``path`` is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
