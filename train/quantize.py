"""The int8 model: ``model.onnx`` quantized with ONNX Runtime, then checked on the validation split.

Static quantization (QDQ format) calibrated on training images, preprocessed as serving does
(``model_artifact.decode_image`` + ``ArrayTransform``): activations uint8 with MinMax ranges,
weights int8 per output channel in 7 bits (``reduce_range``). Seven-bit weights keep the
integer products of x86's non-VNNI int8 instruction (AVX2, AVX-512 without VNNI) from
saturating, so the accuracy checked here is what AVX2-only and VNNI CPUs serve alike (an
emulated Haswell gave the same probabilities); measured, they answer within one validation
image of 8-bit weights, at the same speed (``bench/int8_accuracy.py``). Both models then
answer the validation split and the result is recorded as ``model_artifact.Int8Check``.

The file is plain ONNX (protobuf, no pickle), recorded with its SHA-256 in artifact.json.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import model_artifact
from common.cpus import available_cpus
from model_artifact import INT8_FILE, ArtifactError, Int8Check, Metadata, Preprocessing
from train.artifact import quiet

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 64
BATCH = 32
# ONNX Runtime's quantizer logs through the root logger ("Please consider pre-processing":
# measured, pre-processing changes nothing for these exported graphs) and prints its progress
QUANTIZER_LOGGERS = ("",)
Labelled = tuple[Path, int]


@dataclass(frozen=True)
class Recipe:
    """How to quantize; the defaults are the chosen method (module docstring)."""

    per_channel: bool = True
    reduce_range: bool = True
    calibration: str = "MinMax"  # onnxruntime.quantization.CalibrationMethod: MinMax, Entropy, Percentile

    def describe(self, images: int, source: str) -> str:
        """One line for artifact.json's ``int8.method``."""
        weights = f"int8 {'per-channel' if self.per_channel else 'per-tensor'} weights"
        bits = " (7-bit)" if self.reduce_range else ""
        activations = f"uint8 activations ({self.calibration}, {images} {source} images)"
        return f"onnxruntime static QDQ: {activations}, {weights}{bits}"


def pixels(paths: Iterable[Path], prep: Preprocessing, max_pixels: int | None) -> Iterator[np.ndarray | None]:
    """Each image as serving's float32 input (3, size, size), in order; None where unreadable.
    Decoded by a few threads, ``BATCH`` at a time: a validation split is never all in memory."""
    transform = model_artifact.ArrayTransform(prep)

    def one(path: Path) -> np.ndarray | None:
        try:
            return transform(model_artifact.decode_image(path, prep.resize_size, max_pixels))
        except (OSError, ValueError, Image.DecompressionBombError):
            return None  # counted by training already; not this check's business

    paths = list(paths)
    with ThreadPoolExecutor(min(8, available_cpus())) as pool:
        for start in range(0, len(paths), BATCH):
            yield from pool.map(one, paths[start : start + BATCH])


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session of ``path``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize(fp32: Path, calibration: list[np.ndarray], out: Path, recipe: Recipe = Recipe()) -> str:
    """Write ``fp32`` quantized with ``recipe`` to ``out``, calibrated on the preprocessed images
    ``calibration``; returns the new file's SHA-256. ``out`` is replaced only once complete."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            batches = [np.stack(calibration[i : i + 8]) for i in range(0, len(calibration), 8)]
            self.batches = iter({model_artifact.ONNX_INPUT: batch} for batch in batches)

        def get_next(self):
            return next(self.batches, None)

    import onnx

    # the head and the softmax stay float (a 512x257 product: nothing to gain): quantized, the
    # probabilities clients get would be multiples of 1/255, and close logits equal (ties)
    nodes = onnx.load(str(fp32)).graph.node
    softmax = [node for node in nodes if node.op_type == "Softmax"]
    inputs = {name for node in softmax for name in node.input}
    head = [node.name for node in nodes if set(node.output) & inputs] + [node.name for node in softmax]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with quiet(QUANTIZER_LOGGERS, logging.ERROR):
            q.quantize_static(
                str(fp32), str(tmp), Reader(), quant_format=q.QuantFormat.QDQ,
                activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                calibrate_method=q.CalibrationMethod[recipe.calibration], nodes_to_exclude=head,
            )  # fmt: skip
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return model_artifact.file_sha256(out)


@dataclass(frozen=True)
class Comparison:
    """Top-1 answers of the fp32 and int8 models on the same labelled images."""

    images: int
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float


def compare(fp32: Path, int8: Path, images: Iterable[tuple[np.ndarray | None, int]], threads: int) -> Comparison:
    """Both models' top-1 accuracy on ``images`` ((pixels or None, label)) and how often they agree."""
    sessions = [session(fp32, threads), session(int8, threads)]
    answers: list[list[np.ndarray]] = [[], []]
    labels: list[int] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            inputs = {model_artifact.ONNX_INPUT: np.stack(batch)}
            for answer, model in zip(answers, sessions, strict=True):
                answer.append(model.run([model_artifact.ONNX_OUTPUT], inputs)[0].argmax(axis=1))
            batch.clear()

    for array, label in images:
        if array is not None:
            batch.append(array)
            labels.append(label)
            if len(batch) == BATCH:
                flush()
    flush()
    if not labels:
        raise ArtifactError("no readable validation image to check the int8 model on")
    truth = np.asarray(labels)
    fp32_top1, int8_top1 = (np.concatenate(answer) for answer in answers)
    return Comparison(
        images=len(labels),
        fp32_accuracy=float(np.mean(fp32_top1 == truth)),
        int8_accuracy=float(np.mean(int8_top1 == truth)),
        agreement=float(np.mean(fp32_top1 == int8_top1)),
    )


def calibration_sample(files: list[Path], seed: int, count: int = CALIBRATION_IMAGES) -> list[Path]:
    """``count`` of ``files`` drawn with ``seed`` (all of them when fewer), in a stable order."""
    return sorted(random.Random(seed).sample(sorted(files), min(count, len(files))))


def add_int8(
    model_dir: Path,
    meta: Metadata,
    calibration: list[Path],
    validation: list[Labelled],
    max_pixels: int | None = model_artifact.MAX_IMAGE_PIXELS,
    recipe: Recipe = Recipe(),
    source: str = "training",
) -> Int8Check:
    """Write ``model.int8.onnx`` from the artifact's verified ``model.onnx``, calibrated on the
    images ``calibration``, check it against fp32 on ``validation`` and set ``meta.int8``
    (artifact.json is the caller's to write). ``source`` names where the calibration images
    come from, for the record."""
    started = time.perf_counter()
    fp32, out, prep = model_artifact.onnx_path(model_dir, meta), Path(model_dir) / INT8_FILE, meta.preprocessing
    arrays = [array for array in pixels(calibration, prep, max_pixels) if array is not None]
    if not arrays:
        raise ArtifactError("no readable calibration image to quantize the model with")
    # a candidate beside it, until it is checked: a failure leaves the folder (and meta) as they were
    candidate = out.with_name(f".{out.name}.candidate-{os.getpid()}")
    try:
        sha256 = quantize(fp32, arrays, candidate, recipe)
        labels = [label for _, label in validation]
        images = zip(pixels([path for path, _ in validation], prep, max_pixels), labels, strict=True)
        result = compare(fp32, candidate, images, available_cpus())
        os.replace(candidate, out)
    finally:
        candidate.unlink(missing_ok=True)
    meta.int8 = Int8Check(sha256=sha256, method=recipe.describe(len(arrays), source), **vars(result))
    log.info(
        "%s written in %.1f s: validation accuracy %.4f (fp32 %.4f, %+.2f points), top-1 agreement %.4f on %d images",
        INT8_FILE, time.perf_counter() - started, result.int8_accuracy, result.fp32_accuracy,
        -meta.int8.accuracy_drop, result.agreement, result.images,
    )  # fmt: skip
    return meta.int8
