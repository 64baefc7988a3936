"""int8 against fp32 in the CPU serving image, through the real server: issue 23's speed criteria.

    python bench/serve_int8.py [--requests 120] [--clients 8] [--starts 1] [--threads 2]
                               [--image IMAGE] [--photos build/photos] [--host]

Builds a seeded ResNet18 (224 px, 257 classes) with ``train.artifact.save`` and adds
``model.int8.onnx`` with ``train.quantize.add_int8``, as training does (calibrated on real
photos: Debian's ``opencv-doc`` examples, fetched once into ``--photos``). Serves that one
artifact from the CPU serving image twice, under ``--cpus`` ``--threads``: with
``SERVE_PRECISION=fp32`` (what the image served before int8: model.onnx) and ``int8``. Then,
with ``bench/serve_runtimes.py``'s measurements, in rounds that take turns: p50/p99 of one
client over HTTP and the same work in a process inside each container (decode, preprocess,
forward, encode), images/s with ``--clients`` concurrent clients, and the forward pass alone
in this process (``serve.runtimes.OnnxModel`` with ``--threads`` threads): p50 of a batch of 1
and images/s of a batch of 8. Prints a table and the int8/fp32 ratios of this same run
against the targets (p50 <= 0.6x, throughput >= 1.8x), PASS or MISS; never asserts.
``--host``: this venv's ``serve`` instead of containers.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from input_pipeline import fetch_photos  # bench/, this script's folder
from serve_runtimes import (
    cold_starts,
    cpu_model,
    image_size,
    in_blocks,
    in_container,
    in_process,
    latency,
    make_artifact,
    photo,
    throughput,
    timed,
    verdict,
)

import model_artifact
from serve import runtimes
from train import quantize
from train.artifact import write_metadata

IMAGE = "byoc-classifier-serving-cpu:latest"
PRECISIONS = ("fp32", "int8")


def add_int8(model: Path, photos: list[Path]) -> model_artifact.Int8Check:
    """The trainer's int8 step on ``model``: calibrated on the photos; the photos (labelled 0:
    an untrained model has no accuracy to keep) also stand in for the validation split."""
    meta = model_artifact.load_metadata(model)
    check = quantize.add_int8(model, meta, photos[: quantize.CALIBRATION_IMAGES], [(p, 0) for p in photos])
    write_metadata(model, meta)
    (model / model_artifact.INT8_FILE).chmod(0o644)  # the container serves as an unprivileged user
    return check


def forward_passes(model: Path, body: bytes, threads: int) -> dict[tuple[str, str], Callable[[], float]]:
    """The forward pass alone of each precision, batch 1 and batch 8, as functions that return their ms."""
    meta = model_artifact.load_metadata(model)
    transform = model_artifact.ArrayTransform(meta.preprocessing)
    one = transform(model_artifact.decode_image(io.BytesIO(body), meta.preprocessing.resize_size))[None]
    eight = np.repeat(one, 8, axis=0)
    calls = {}
    for precision in PRECISIONS:
        session = runtimes.OnnxModel(str(model), meta, threads, precision)
        calls[precision, "b1"] = timed(lambda s=session: s.predict(one))
        calls[precision, "b8"] = timed(lambda s=session: s.predict(eight))
    return calls


def report(rows: list[dict], forward: dict, check: model_artifact.Int8Check, model: Path, args) -> None:
    print(f"\n{'precision':9s} {'served by':48s} {'start s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{f'img/s@{args.clients}':>9s} {'in-proc p50':>11s} {'fwd b1 p50':>10s} {'fwd b8 img/s':>12s}")  # fmt: skip
    for r in rows:
        b1, b8 = forward[r["precision"], "b1"], forward[r["precision"], "b8"]
        print(f"{r['precision']:9s} {r['target']:48s} {r['start']:7.2f} {r['p50']:7.1f} {r['p99']:7.1f} "
              f"{r['ips']:9.1f} {r['inproc']:11.1f} {b1:10.2f} {b8:12.1f}")  # fmt: skip
    fp32, int8 = rows
    p50, speed = int8["p50"] / fp32["p50"], int8["ips"] / fp32["ips"]
    print(f"\np50 at 1 client, int8 / fp32: {p50:.2f}x (target <= 0.6x) {verdict(p50, 0.6)}")
    target = f"(target >= 1.8x) {verdict(speed, 1.8, True)}"
    print(f"throughput at {args.clients} clients, int8 / fp32: {speed:.2f}x {target}")
    print(f"in process (decode, preprocess, forward, encode), p50 int8 / fp32: {int8['inproc'] / fp32['inproc']:.2f}x")
    b1 = forward["int8", "b1"] / forward["fp32", "b1"]
    b8 = forward["int8", "b8"] / forward["fp32", "b8"]
    print(f"forward pass alone, {args.threads} threads: batch 1 p50 {b1:.2f}x, batch 8 img/s {b8:.2f}x")
    for r in rows:
        print(f"served on {r['served_on']}")
    sizes = {name: (model / name).stat().st_size / 1e6 for name in (model_artifact.ONNX_FILE, model_artifact.INT8_FILE)}
    print("file sizes: " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes.items()))
    print(f"int8 method: {check.method}; agreement with fp32 on the {check.images} photos: {check.agreement:.3f}")
    print(f"image size {args.image}: {image_size(args.image)}")


def measure(rows: list[dict], model: Path, body: bytes, args) -> dict:
    """Start both servers, then latency, throughput and the forward pass in turns; the forward pass' figures."""
    for row in rows:
        cold_starts(row, model, body, args)
        if args.host:
            os.environ["SERVE_PRECISION"] = row["precision"]
            row["once"] = in_process(model, "onnx", body, args)
        else:
            row["once"] = in_container(row, body)
    latency(rows, body, args)
    throughput(rows, body, args)
    times = in_blocks(forward_passes(model, body, args.threads), args.requests)
    return {key: statistics.median(ms) if key[1] == "b1" else 8000 / statistics.median(ms) for key, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="1-client requests per server (and concurrent ones)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--starts", type=int, default=1, help="cold starts per server (the median is printed)")
    parser.add_argument("--threads", type=int, default=2, help="--cpus of the containers and SERVE_THREADS")
    parser.add_argument("--workers", type=int, default=0, help="SAGEMAKER_MODEL_SERVER_WORKERS (default: serve's)")
    parser.add_argument("--image", default=IMAGE, help="the CPU serving image")
    parser.add_argument("--photos", type=Path, default=Path("build/photos"), help="calibration photos (fetched once)")
    parser.add_argument("--host", action="store_true", help="serve of this venv instead of containers")
    args = parser.parse_args()
    if not args.host and image_size(args.image) == "absent":
        raise SystemExit(f"{args.image}: not built; run `make images`, or use --host")
    print(cpu_model())
    body = photo()
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        model = make_artifact(Path(tmp))
        check = add_int8(model, fetch_photos(args.photos))
        launch = "onnx" if args.host else args.image
        rows = [
            {"target": f"{'host serve' if args.host else args.image} SERVE_PRECISION={p}", "launch": launch,
             "precision": p, "env": {"SERVE_PRECISION": p}}
            for p in PRECISIONS
        ]  # fmt: skip
        try:
            forward = measure(rows, model, body, args)
        finally:
            for row in rows:
                row.get("stop", lambda: None)()
        report(rows, forward, check, model, args)


if __name__ == "__main__":
    sys.exit(main())
