"""Writing the model artifact that ``model_artifact`` reads: ``save`` at the end of training
(model.pt, model.onnx, artifact.json, then ``code/``), and the ``export-onnx`` command, which
adds model.onnx to artifacts written before ONNX export (folders and model.tar.gz files) and,
with ``--int8 VALIDATION_FOLDER``, model.int8.onnx checked on that folder (``train.quantize``).

The ONNX export is checked before it is kept (ONNX Runtime's probabilities against PyTorch's,
within ``model_artifact.ONNX_TOLERANCE``) and kept quiet: the exporter's progress on stdout
and its passes' INFO log lines stay out of the job's log. Serving never imports this module
(the serving images have no ONNX exporter; the CPU one has no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

import model_artifact
from common.images import IMAGE_EXTENSIONS
from common.metrics import int8_line
from model_artifact import ONNX_FILE, ArtifactError, Metadata, Preprocessing, atomic_write, file_sha256
from serve.portable_code import write_code

# The loggers of torch's ONNX exporter and of the onnxscript/onnx_ir passes it runs: a dozen INFO lines an export
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def library_versions() -> dict[str, str]:
    """Versions that matter to reproduce or load the artifact."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": Image.__version__,
    }


def save(model_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: Metadata, onnx: bool = True) -> Path:
    """Write weights, ``model.onnx`` (unless ``onnx`` is false), then metadata with their
    checksums, then ``code/`` into ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / model_artifact.WEIGHTS_FILE
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(weights, lambda f: torch.save(cpu_state, f))
    meta.weights_sha256 = file_sha256(weights)
    meta.onnx_sha256 = ""
    (model_dir / ONNX_FILE).unlink(missing_ok=True)
    if onnx:
        model = model_artifact.build_model(meta.architecture, meta.num_classes)
        model.load_state_dict(cpu_state)
        meta.onnx_sha256 = export_onnx(model.eval(), meta.preprocessing, model_dir / ONNX_FILE)
    meta.versions = meta.versions or library_versions()
    write_metadata(model_dir, meta)
    write_code(model_dir)
    return model_dir


def write_metadata(model_dir: str | os.PathLike, meta: Metadata) -> None:
    """Write ``artifact.json`` atomically."""
    text = json.dumps(asdict(meta), indent=2, sort_keys=True)
    atomic_write(Path(model_dir) / model_artifact.METADATA_FILE, lambda f: f.write(text.encode()))


def export_onnx(model: torch.nn.Module, prep: Preprocessing, path: Path) -> str:
    """Export ``model`` followed by a softmax to ONNX at ``path`` (batch size free); returns its SHA-256.

    The file is checked before it is kept: loaded by ONNX Runtime (where installed), its
    probabilities for two inputs must equal PyTorch's within ``ONNX_TOLERANCE``."""
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
    return file_sha256(path)


def _torch_onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export-based ONNX export (the legacy TorchScript exporter is deprecated), batch size free."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad(), quiet(EXPORTER_LOGGERS):
        torch.onnx.export(
            model, (example,), str(path), input_names=[model_artifact.ONNX_INPUT],
            output_names=[model_artifact.ONNX_OUTPUT], dynamic_shapes=({0: batch},), dynamo=True,
            external_data=False, optimize=True, verbose=False,
        )  # fmt: skip


@contextlib.contextmanager
def quiet(loggers: tuple[str, ...], level: int = logging.WARNING):
    """Keep a tool's printed progress and its ``loggers``' lines below ``level`` out of the job's
    log (the exporter prints its progress and its passes log at INFO); what it printed is shown
    if it fails."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), _loggers_at_least(level, loggers):
            yield
    except Exception:
        sys.stdout.write(out.getvalue())
        raise


@contextlib.contextmanager
def _loggers_at_least(level: int, names: tuple[str, ...]):
    """Hold the loggers ``names`` (and their children that set no level) at ``level`` or above;
    their own levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(level, logger.level))
        yield
    finally:
        for logger, saved in zip(loggers, levels, strict=True):
            logger.setLevel(saved)


def _check_onnx(path: Path, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Refuse an exported file whose answers differ from PyTorch's (skipped without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run([model_artifact.ONNX_OUTPUT], {model_artifact.ONNX_INPUT: example.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    tolerance = model_artifact.ONNX_TOLERANCE
    if difference > tolerance:
        raise ArtifactError(f"the ONNX export differs from PyTorch by {difference:.2g} (> {tolerance}): not kept")


@dataclass(frozen=True)
class Int8Images:
    """Where ``export-onnx --int8`` finds its images: a validation folder laid out as the
    training channel (a folder per class of the artifact) and, optionally, calibration images."""

    validation: Path
    calibration: Path | None = None

    def labelled(self, class_names: list[str]) -> list[tuple[Path, int]]:
        """(image, class index) of every image of the validation folder."""
        if not self.validation.is_dir():
            raise ArtifactError(f"--int8 {self.validation}: not a folder")
        folders = sorted(p.name for p in self.validation.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise ArtifactError(f"--int8 {self.validation}: folders that are not the model's classes: {unknown[:5]}")
        index = {name: i for i, name in enumerate(class_names)}
        found = [(path, index[name]) for name in folders for path in sorted((self.validation / name).iterdir())]
        samples = [(path, label) for path, label in found if path.suffix.lower() in IMAGE_EXTENSIONS]
        if not samples:
            raise ArtifactError(f"--int8 {self.validation}: no images in class folders")
        return samples

    def calibration_files(self, validation: list[tuple[Path, int]]) -> tuple[list[Path], str]:
        """The calibration images and where they come from (the validation images without a calibration folder)."""
        if self.calibration is None:
            return [path for path, _ in validation], "validation"
        files = sorted(p for p in self.calibration.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ArtifactError(f"--calibration {self.calibration}: no images")
        return files, "calibration-folder"


def add_onnx(model_dir: str | os.PathLike, int8: Int8Images | None = None) -> Metadata:
    """Export ``model.onnx`` into an artifact written without one (or replace it), and record
    its checksum in artifact.json; the weights are verified first and left as they are. With
    ``int8``, also write ``model.int8.onnx`` checked on its validation folder."""
    model, meta = model_artifact.load(model_dir)
    meta.onnx_sha256 = export_onnx(model, meta.preprocessing, Path(model_dir) / ONNX_FILE)
    if int8 is not None:
        from train import quantize  # it imports this module

        validation = int8.labelled(meta.class_names)
        files, source = int8.calibration_files(validation)
        calibration = quantize.calibration_sample(files, seed=0)
        quantize.add_int8(Path(model_dir), meta, calibration, validation, source=source)
    write_metadata(model_dir, meta)
    write_code(model_dir)
    return meta


def add_onnx_to_tarball(tarball: Path, int8: Int8Images | None = None) -> Metadata:
    """``add_onnx`` for a ``model.tar.gz``: unpacked into a temporary folder, repacked in place."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(tarball) as archive:
                archive.extractall(tmp, filter="data")  # no links out, no devices, no absolute paths
        except tarfile.ReadError as exc:
            raise ArtifactError("neither a model folder nor a readable tar archive (model.tar.gz)") from exc
        except tarfile.TarError as exc:  # tarfile.FilterError: a link out, an absolute path, a device
            raise ArtifactError(f"refused to unpack: {exc}") from exc
        if not (Path(tmp) / model_artifact.METADATA_FILE).is_file():
            raise ArtifactError(
                f"{model_artifact.METADATA_FILE} not found in {tarball.name}: is it a model trained by this project?"
            )
        meta = add_onnx(tmp, int8)
        atomic_write(tarball, lambda f: _pack(Path(tmp), f))
    return meta


def _pack(folder: Path, out) -> None:
    """``folder``'s contents at the top of a gzipped tar written to the file ``out``, as SageMaker packs a model."""
    # weights hardly compress: gzip level 1 is 0.3% larger than level 9, in half the time
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as archive:
        for item in sorted(folder.iterdir()):
            archive.add(item, arcname=item.name)


def main(argv: list[str] | None = None) -> int:
    """``export-onnx MODEL ... [--int8 VALIDATION_FOLDER]``: add model.onnx (and model.int8.onnx)
    to model folders or model.tar.gz files written before."""
    parser = argparse.ArgumentParser(prog="export-onnx", description=main.__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="a model folder (with artifact.json) or a model.tar.gz")
    parser.add_argument("--int8", type=Path, metavar="VALIDATION_FOLDER",
                        help="also write model.int8.onnx, checked on this folder (a folder per class)")  # fmt: skip
    parser.add_argument("--calibration", type=Path, metavar="FOLDER",
                        help="with --int8: calibrate on 64 of its images (default: validation images)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.calibration and not args.int8:
        parser.error("--calibration needs --int8")
    int8 = Int8Images(args.int8, args.calibration) if args.int8 else None
    status = 0
    for path in args.models:
        try:
            meta = add_onnx_to_tarball(path, int8) if path.is_file() else add_onnx(path, int8)
            summary = f"{meta.architecture}, {meta.num_classes} classes, sha256 {meta.onnx_sha256[:12]}"
            print(f"{path}: {ONNX_FILE} written ({summary})")
            if int8 is not None and meta.int8 is not None:
                print(f"{path}: {int8_line(meta.int8)}")
        except (ArtifactError, OSError, EOFError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
