"""The model artifact: the one format that training writes and serving reads.

A model directory (SageMaker's ``/opt/ml/model``, tarred to model.tar.gz) holds:

- ``model.pt``: the weights, a plain ``state_dict`` saved with ``torch.save`` and loaded
  with ``torch.load(weights_only=True)`` (no pickled code);
- ``artifact.json``: format version, architecture, class names in index order,
  preprocessing, final metrics, library versions and the SHA-256 of ``model.pt``.

This module also owns image decoding and the evaluation transform, so that the pixels a
served image becomes are exactly the pixels training evaluated. It imports nothing from
training code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.transforms import v2

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
METADATA_FILE = "artifact.json"
ARTIFACT_FILES = (METADATA_FILE, WEIGHTS_FILE)  # all that a model folder needs; serving copies nothing else
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def library_versions() -> dict[str, str]:
    """Versions that matter to reproduce or load the artifact."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": Image.__version__,
    }


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
    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise ArtifactError(f"unknown architecture {architecture!r}: {exc}") from exc


def save(model_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: Metadata) -> Path:
    """Write weights then metadata (with the weights' checksum) into ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(weights, lambda f: torch.save(cpu_state, f))
    meta.weights_sha256 = _sha256(weights)
    meta.versions = meta.versions or library_versions()
    text = json.dumps(asdict(meta), indent=2, sort_keys=True)
    atomic_write(model_dir / METADATA_FILE, lambda f: f.write(text.encode()))
    write_code(model_dir)
    return model_dir


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
        meta = Metadata(preprocessing=prep, **raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{path} is malformed: {exc}") from exc
    if not meta.class_names:
        raise ArtifactError(f"{path} lists no class names")
    return meta


def load(model_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load (model in eval mode, metadata); verifies the checksum, never unpickles code."""
    meta = load_metadata(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} not found")
    if _sha256(weights) != meta.weights_sha256:
        raise ArtifactError(f"{weights} does not match the checksum in {METADATA_FILE}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(meta.architecture, meta.num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise ArtifactError(f"weights do not fit {meta.architecture}: {first_line}") from exc
    return model.to(device).eval(), meta


def copy_files(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy only the artifact's two files from ``source`` into a new folder ``target``.

    Whatever else a model folder holds (code, ``MAR-INF/``, links) stays behind, so serving
    never imports or reads it. A file that is a symbolic link or not a regular file is refused.
    """
    source, target = Path(source), Path(target)
    target.mkdir(parents=True)
    for name in ARTIFACT_FILES:
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
    """Upright RGB: EXIF orientation applied, transparency composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("F").point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


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
        if max_pixels and image.width * image.height > max_pixels:
            raise Image.DecompressionBombError(
                f"image of {image.width}x{image.height} pixels exceeds the limit of {max_pixels} pixels"
            )
        if max_pixels and draft_size and _resized_pixels(image.size, draft_size) > max_pixels:
            # a 200-byte 40000x1 PNG passes the cap above, but would resize to 2.6 billion pixels
            raise Image.DecompressionBombError(
                f"image of {image.width}x{image.height} pixels is too elongated: resized to {draft_size} pixels "
                f"on its short side it would exceed the limit of {max_pixels} pixels"
            )
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(image)


def _resized_pixels(size: tuple[int, int], short_side: int) -> int:
    """Pixels of an image of ``size`` once its short side is resized to ``short_side``."""
    short, long = max(min(size), 1), max(size)
    return short_side * round(long * short_side / short)


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """RGB PIL image → normalized float tensor, exactly as evaluated in training."""
    return v2.Compose(
        [
            v2.Resize(prep.resize_size, antialias=True),
            v2.CenterCrop(prep.image_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
        ]
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


CODE_DIR = "code"  # what AWS's inference containers import: code/inference.py and its modules
# code/ file -> (package holding the source or None for this module's folder, source file name)
CODE_FILES = {
    "inference.py": ("serve", "portable_inference.py"),
    "byoc_codecs.py": ("serve", "codecs.py"),
    "model_artifact.py": (None, "model_artifact.py"),
}


def write_code(model_dir: str | os.PathLike) -> Path:
    """Write ``code/`` so that the artifact serves unchanged on AWS's PyTorch inference
    container: its ``inference.py`` and copies of the two modules it imports (no training
    code). Our own image ignores the folder unless the deployer sets ``SAGEMAKER_PROGRAM``."""
    import importlib.util

    code = Path(model_dir) / CODE_DIR
    code.mkdir(exist_ok=True)
    spec = importlib.util.find_spec("serve")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("the serve package is not installed: cannot write code/inference.py")
    folders = {"serve": Path(next(iter(spec.submodule_search_locations))), None: Path(__file__).resolve().parent}
    for name, (package, source) in CODE_FILES.items():
        data = (folders[package] / source).read_bytes()
        atomic_write(code / name, lambda f, data=data: f.write(data))
    return code
