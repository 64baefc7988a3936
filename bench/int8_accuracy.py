"""What int8 costs in accuracy, measured as training measures it, and why this quantization method.

    python bench/int8_accuracy.py [--photos build/photos] [--out build/int8-accuracy] [--no-isa]

1. **Sample data**: the trainer (``python -m train``, int8 on by default) with the demo's
   hyperparameters on the embedded sample dataset; prints the check that artifact.json records
   (validation split) and the same comparison on the test split.
2. **Real photos**: the example photos of Debian's ``opencv-doc`` package (fetched once into
   ``--photos``) as a labelled task: each photo is a class, its training images are 10 random
   crops of it and its validation images 4 others ("which photo is this crop from"), so the
   activations the int8 model must represent are those of real photos. Trained at 128 px.
3. **Methods**: on both models, each candidate recipe of ``train.quantize`` (calibration
   MinMax, Percentile or Entropy; weights per channel or per tensor, 7 or 8 bits) quantized
   from the same 64 training images and compared on the validation split, with the batch-1
   forward pass (2 threads) of each file.
4. **Another CPU**: with QEMU user mode (``apt-get install qemu-user``), the same files run
   on an emulated Haswell (AVX2, no AVX-512, no VNNI: ONNX Runtime takes its other int8
   kernels) and their answers on ``--isa-images`` validation images are compared with this
   CPU's. Skipped without ``qemu-x86_64``.

Prints; never asserts.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from input_pipeline import fetch_photos  # bench/, this script's folder
from PIL import Image
from serve_runtimes import cpu_model

import model_artifact
from train import quantize, sample_data

ROOT = Path(__file__).resolve().parents[1]
DEMO = {
    "epochs": "16", "batch-size": "16", "lr": "0.005", "lr-warmup-epochs": "1", "momentum": "0.9",
    "image-size": "64", "crop-min-scale": "0.4", "pretrained": "false", "log-interval": "0",
}  # fmt: skip  # local_mode/demo.py's
PHOTOS = DEMO | {"image-size": "128", "epochs": "12", "crop-min-scale": "0.5"}
RECIPES = {
    "MinMax, per-channel, 7-bit (chosen)": quantize.Recipe(),
    "MinMax, per-channel, 8-bit": quantize.Recipe(reduce_range=False),
    "MinMax, per-tensor, 7-bit": quantize.Recipe(per_channel=False),
    "Percentile, per-channel, 7-bit": quantize.Recipe(calibration="Percentile"),
    "Entropy, per-channel, 7-bit": quantize.Recipe(calibration="Entropy"),
}
ISA_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
inputs = np.load(sys.argv[1])
out = {}
for name in sys.argv[3:]:
    options = ort.SessionOptions(); options.intra_op_num_threads = 1
    session = ort.InferenceSession(name, options, providers=["CPUExecutionProvider"])
    x = inputs["x"]
    out[name] = np.concatenate([session.run(None, {"images": x[i:i + 8]})[0] for i in range(0, len(x), 8)])
np.savez(sys.argv[2], **{str(i): out[name] for i, name in enumerate(sys.argv[3:])})
"""


def crops_dataset(photos: list[Path], root: Path, train: int = 10, val: int = 4) -> Path:
    """``root/{training,validation}/<photo>/`` with random crops (25-80% of the area) of each photo."""
    rng = random.Random(0)
    for photo in photos:
        with Image.open(photo) as image:
            image = image.convert("RGB")
            for split, count in (("training", train), ("validation", val)):
                folder = root / split / photo.stem
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    crop = _random_crop(image, rng)
                    crop.thumbnail((320, 320))
                    crop.save(folder / f"{i:02d}.jpg", quality=90)
    return root


def _random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    width, height = image.size
    area = rng.uniform(0.25, 0.8) * width * height
    ratio = rng.uniform(3 / 4, 4 / 3)
    w = min(width, round((area * ratio) ** 0.5))
    h = min(height, round((area / ratio) ** 0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return image.crop((left, top, left + w, top + h))


def train(data: Path, base: Path, hyperparameters: dict) -> Path:
    """The trainer on ``data``'s channels in a job folder ``base``; returns its model folder."""
    shutil.rmtree(base, ignore_errors=True)
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    for split in ("training", "validation", "test"):
        if (data / split).is_dir():
            (channels / split).symlink_to((data / split).resolve())
    argv = [f"--{k}={v}" for k, v in hyperparameters.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env |= {"SAGEMAKER_BASE_DIR": str(base), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "train", *argv], env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    line = next((x for x in result.stdout.splitlines() if x.startswith("int8 ")), "(no int8 line)")
    print(f"  trained in {time.perf_counter() - started:.0f} s; the job's metric line: {line}")
    return base / "model"


def labelled(folder: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    return [(p, i) for i, name in enumerate(class_names) for p in sorted((folder / name).iterdir())]


def show(name: str, check) -> None:
    print(f"  {name}: fp32 {check.fp32_accuracy:.4f}, int8 {check.int8_accuracy:.4f} "
          f"(drop {100 * (check.fp32_accuracy - check.int8_accuracy):+.2f} points), "
          f"top-1 agreement {check.agreement:.4f}, {check.images} images")  # fmt: skip


def compare(model: Path, int8: Path, samples: list[tuple[Path, int]]) -> quantize.Comparison:
    meta = model_artifact.load_metadata(model)
    arrays = quantize.pixels([p for p, _ in samples], meta.preprocessing, None)
    images = zip(arrays, [label for _, label in samples], strict=True)
    return quantize.compare(model / model_artifact.ONNX_FILE, int8, images, 2)


def forward_ms(path: Path, size: int) -> float:
    session = quantize.session(path, 2)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    for _ in range(5):
        session.run(None, {"images": x})
    times = []
    for _ in range(40):
        started = time.perf_counter()
        session.run(None, {"images": x})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def recipes(model: Path, data: Path, out: Path) -> dict[str, Path]:
    """Each recipe's file for ``model``, calibrated as the trainer does; prints a row each."""
    meta = model_artifact.load_metadata(model)
    training = [p for p, _ in labelled(data / "training", meta.class_names)]
    calibration = list(quantize.pixels(quantize.calibration_sample(training, seed=42), meta.preprocessing, None))
    validation = labelled(data / "validation", meta.class_names)
    size = meta.preprocessing.image_size
    print(f"  {'recipe':36s} {'int8 acc':>8s} {'drop':>6s} {'agree':>6s} {'b1 ms':>6s}   (fp32 b1 "
          f"{forward_ms(model / model_artifact.ONNX_FILE, size):.2f} ms at {size} px)")  # fmt: skip
    files = {}
    for name, recipe in RECIPES.items():
        path = out / f"{name.split(' (')[0].replace(', ', '-').replace(' ', '')}.onnx"
        quantize.quantize(model / model_artifact.ONNX_FILE, calibration, path, recipe)
        result = compare(model, path, validation)
        drop = 100 * (result.fp32_accuracy - result.int8_accuracy)
        print(f"  {name:36s} {result.int8_accuracy:8.4f} {drop:+6.2f} {result.agreement:6.3f} "
              f"{forward_ms(path, size):6.2f}")  # fmt: skip
        files[name] = path
    return files


def other_cpu(model: Path, files: dict[str, Path], samples: list[tuple[Path, int]], out: Path) -> None:
    """Each file's answers on an emulated AVX2-only CPU against this CPU's."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("  skipped: no qemu-x86_64 (apt-get install qemu-user)")
        return
    meta = model_artifact.load_metadata(model)
    x = np.stack([a for a in quantize.pixels([p for p, _ in samples], meta.preprocessing, None) if a is not None])
    np.savez(out / "inputs.npz", x=x)
    names = [str(model / model_artifact.ONNX_FILE), *(str(f) for f in files.values())]
    (out / "run.py").write_text(ISA_SCRIPT)
    runs = {}
    for where, prefix in (("here", []), ("Haswell", [qemu, "-cpu", "Haswell"])):
        command = [*prefix, sys.executable, str(out / "run.py"), str(out / "inputs.npz"), str(out / f"{where}.npz")]
        subprocess.run([*command, *names], check=True, capture_output=True, timeout=3600)
        runs[where] = np.load(out / f"{where}.npz")
    labels = ["fp32 model.onnx", *files]
    print(f"  {len(x)} images; {'file':36s} {'max |p here - p Haswell|':>24s} {'same top-1':>10s}")
    for i, label in enumerate(labels):
        here, there = runs["here"][str(i)], runs["Haswell"][str(i)]
        same = int(np.sum(here.argmax(1) == there.argmax(1)))
        print(f"  {'':{len(str(len(x))) + 8}s}{label:36s} {np.abs(here - there).max():24.3g} {same:6d}/{len(x)}")


def section(title: str, data: Path, base: Path, hyperparameters: dict, args) -> None:
    print(f"\n{title}")
    model = train(data, base / "job", hyperparameters)
    meta = model_artifact.load_metadata(model)
    show("recorded in artifact.json (validation)", meta.int8)
    if (data / "test").is_dir():
        show("the same two files on the test split", compare(model, model / model_artifact.INT8_FILE,
                                                               labelled(data / "test", meta.class_names)))  # fmt: skip
    (base / "recipes").mkdir(exist_ok=True)
    files = recipes(model, data, base / "recipes")
    if not args.no_isa:
        print("  on another CPU:")
        samples = labelled(data / "validation", meta.class_names)
        other_cpu(model, files, random.Random(0).sample(samples, min(args.isa_images, len(samples))), base / "recipes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=ROOT / "build/photos", help="fetched once")
    parser.add_argument("--out", type=Path, default=ROOT / "build/int8-accuracy", help="datasets, jobs, files")
    parser.add_argument("--no-isa", action="store_true", help="skip the emulated AVX2-only CPU")
    parser.add_argument("--isa-images", type=int, default=32, help="validation images run under emulation (slow)")
    args = parser.parse_args()
    print(cpu_model())
    shutil.rmtree(args.out, ignore_errors=True)
    sample = args.out / "sample-data"
    sample_data.generate(sample)
    section("1. sample data (4 classes; the demo's hyperparameters)", sample, args.out / "sample", DEMO, args)
    photos = crops_dataset(fetch_photos(args.photos), args.out / "photo-crops")
    classes = len(list((photos / "training").iterdir()))
    title = f"2. real photos (opencv-doc: {classes} photos as classes, crops; 128 px)"
    section(title, photos, args.out / "photos", PHOTOS, args)


if __name__ == "__main__":
    main()
