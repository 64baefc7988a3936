"""The model artifact: the one format that training writes and serving reads.

A model directory (SageMaker's ``/opt/ml/model``, tarred to model.tar.gz) holds:

- ``model.pt``: the weights, a plain ``state_dict`` saved with ``torch.save`` and loaded
  with ``torch.load(weights_only=True)`` (no pickled code);
- ``model.onnx``: the same network with a softmax, exported for ONNX Runtime (the CPU
  serving image has no PyTorch); ``export-onnx`` adds it to artifacts written before;
- ``artifact.json``: format version, architecture, class names in index order,
  preprocessing, final metrics, library versions and the SHA-256 of ``model.pt`` and
  ``model.onnx``.

This module also owns image decoding and the evaluation transform (torchvision's for
training, ``ArrayTransform`` without torch for serving, equal bit for bit), so that the
pixels a served image becomes are exactly the pixels training evaluated. It imports nothing
from training code, and torch only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
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
METADATA_FILE = "artifact.json"
ARTIFACT_FILES = (METADATA_FILE, WEIGHTS_FILE)  # all that a model folder needs; serving copies nothing else
OPTIONAL_FILES = (ONNX_FILE,)  # copied too where present (the CPU serving image needs it)
ONNX_INPUT, ONNX_OUTPUT = "images", "probabilities"
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
    onnx_sha256: str = ""  # empty: no model.onnx (an artifact written before, or save(onnx=False))
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def library_versions() -> dict[str, str]:
    """Versions that matter to reproduce or load the artifact."""
    import torch
    import torchvision

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
    import torchvision

    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise ArtifactError(f"unknown architecture {architecture!r}: {exc}") from exc


def save(model_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: Metadata, onnx: bool = True) -> Path:
    """Write weights, ``model.onnx`` (unless ``onnx`` is false), then metadata with their
    checksums into ``model_dir``."""
    import torch

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(weights, lambda f: torch.save(cpu_state, f))
    meta.weights_sha256 = _sha256(weights)
    meta.onnx_sha256 = ""
    (model_dir / ONNX_FILE).unlink(missing_ok=True)
    if onnx:
        model = build_model(meta.architecture, meta.num_classes)
        model.load_state_dict(cpu_state)
        meta.onnx_sha256 = export_onnx(model.eval(), meta.preprocessing, model_dir / ONNX_FILE)
    meta.versions = meta.versions or library_versions()
    write_metadata(model_dir, meta)
    write_code(model_dir)
    return model_dir


def write_metadata(model_dir: str | os.PathLike, meta: Metadata) -> None:
    """Write ``artifact.json`` atomically."""
    text = json.dumps(asdict(meta), indent=2, sort_keys=True)
    atomic_write(Path(model_dir) / METADATA_FILE, lambda f: f.write(text.encode()))


def export_onnx(model: torch.nn.Module, prep: Preprocessing, path: Path) -> str:
    """Export ``model`` followed by a softmax to ONNX at ``path`` (batch size free); returns its SHA-256.

    The file is checked before it is kept: loaded by ONNX Runtime (where installed), its
    probabilities for two inputs must equal PyTorch's within ``ONNX_TOLERANCE``."""
    import torch

    wrapped = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    example = torch.randn(2, 3, prep.image_size, prep.image_size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _torch_onnx_export(wrapped, example, tmp)
        _check_onnx(tmp, wrapped, example)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _sha256(path)


OPTIMIZE = False
ONNX_TOLERANCE = 1e-4  # largest difference of a probability between PyTorch and ONNX Runtime


def _torch_onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export-based ONNX export (the legacy TorchScript exporter is deprecated), batch size free."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            model, (example,), str(path), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: batch},), dynamo=True, external_data=False, optimize=True, verbose=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints its progress to stdout: keep it out of the job's log unless it fails."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    except Exception:
        sys.stdout.write(out.getvalue())
        raise


def _check_onnx(path: Path, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Refuse an exported file whose answers differ from PyTorch's (skipped without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: example.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if difference > ONNX_TOLERANCE:
        raise ArtifactError(f"the ONNX export differs from PyTorch by {difference:.2g} (> {ONNX_TOLERANCE}): not kept")


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


def verified_file(model_dir: str | os.PathLike, name: str, sha256: str) -> Path:
    """``model_dir/name`` after checking it against its checksum in artifact.json."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path} not found")
    if _sha256(path) != sha256:
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
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(prep.resize_size, antialias=True),
            v2.CenterCrop(prep.image_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
        ]
    )


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


def add_onnx(model_dir: str | os.PathLike) -> Metadata:
    """Export ``model.onnx`` into an artifact written without one (or replace it), and record
    its checksum in artifact.json; the weights are verified first and left as they are."""
    model, meta = load(model_dir)
    meta.onnx_sha256 = export_onnx(model, meta.preprocessing, Path(model_dir) / ONNX_FILE)
    write_metadata(model_dir, meta)
    write_code(model_dir)
    return meta


def add_onnx_to_tarball(tarball: Path) -> Metadata:
    """``add_onnx`` for a ``model.tar.gz``: unpacked into a temporary folder, repacked in place."""
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(tarball) as archive:
                archive.extractall(tmp, filter="data")  # no links out, no devices, no absolute paths
        except tarfile.ReadError as exc:
            raise ArtifactError("neither a model folder nor a readable tar archive (model.tar.gz)") from exc
        except tarfile.TarError as exc:  # tarfile.FilterError: a link out, an absolute path, a device
            raise ArtifactError(f"refused to unpack: {exc}") from exc
        if not (Path(tmp) / METADATA_FILE).is_file():
            raise ArtifactError(f"{METADATA_FILE} not found in {tarball.name}: is it a model trained by this project?")
        meta = add_onnx(tmp)
        repacked = tarball.with_name(f".{tarball.name}.tmp-{os.getpid()}")
        # weights hardly compress: gzip level 1 is 0.3% larger than level 9, in half the time
        with tarfile.open(repacked, "w:gz", compresslevel=1) as archive:
            for item in sorted(Path(tmp).iterdir()):
                archive.add(item, arcname=item.name)
        os.replace(repacked, tarball)
    return meta


def main(argv: list[str] | None = None) -> int:
    """``export-onnx MODEL ...``: add model.onnx to model folders or model.tar.gz files written before."""
    import argparse

    parser = argparse.ArgumentParser(prog="export-onnx", description=main.__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="a model folder (with artifact.json) or a model.tar.gz")
    status = 0
    for path in parser.parse_args(argv).models:
        try:
            meta = add_onnx_to_tarball(path) if path.is_file() else add_onnx(path)
            summary = f"{meta.architecture}, {meta.num_classes} classes, sha256 {meta.onnx_sha256[:12]}"
            print(f"{path}: {ONNX_FILE} written ({summary})")
        except (ArtifactError, OSError, EOFError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
