"""CPU time per training image before the device: the course's stock pipeline against ours.

    python bench/input_pipeline.py [--photos build/photos] [--images 512] [--rounds 5]

The photos are real JPEGs that a registry ships: the example images of Debian's ``opencv-doc``
package (RGB photos at least 150 pixels on the short side; fetched with ``apt-get download``
once into ``--photos``). Each pipeline loads the same images, repeated to ``--images``, through
a real DataLoader with one worker process, batch size 32; its CPU time is that of this process
(the loader's main side) and of the worker (read, decode, augment, collate), from the first
batch to the next-to-last (steady state), divided by the images delivered. Rounds alternate
between pipelines; each figure is the median.

- stock: the course's ``ImageFolder`` + ``RandomResizedCrop(224)``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize`` (float32 batches);
- ours: ``train.data`` and ``train.loader`` as the trainer builds them (``TrainCrop``:
  crop-aware reduced-scale JPEG decoding, crop and resize in one pass; uint8 batches in the
  worker's reused shared slots, normalized on the device);
- cached: ours with the input cache, in the epochs after the one that fills it.

Prints one line per pipeline, the cost of filling the cache, the average of a 10-epoch job
(the cache is on by default from 2 epochs), the cost of normalizing on the CPU (what CPU-only
training adds in its main process, where the device is the CPU), and last ``R = N.NNx``:
stock / ours without the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from PIL import Image
from serve_runtimes import cpu_model  # bench/, this script's folder
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import model_artifact
from train import cache, crops, data, loader, profiler

PACKAGE = "opencv-doc"
EXAMPLES = "usr/share/doc/opencv-doc/examples"
BATCH_SIZE, IMAGE_SIZE, CLASSES = 32, 224, 4
JOB_EPOCHS = 10  # the trainer's default epochs


def fetch_photos(folder: Path) -> list[Path]:
    """The package's RGB JPEG photos in ``folder``, downloaded and unpacked once."""
    if not any(folder.glob("*.jpg")):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            for path in sorted((Path(tmp) / EXAMPLES).rglob("*.jpg")):
                with Image.open(path) as image:
                    if image.mode == "RGB" and min(image.size) >= 150:
                        shutil.copy(path, folder / str(path.relative_to(Path(tmp) / EXAMPLES)).replace("/", "_"))
    return sorted(folder.glob("*.jpg"))


def image_folder(photos: list[Path], count: int, root: Path) -> list[data.Sample]:
    """``count`` images (the photos, repeated) in CLASSES class folders under ``root``."""
    samples = []
    for i in range(count):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:05d}.jpg"
        os.link(photos[i % len(photos)], target)  # a hard link: inside the channel, as data.scan requires
        samples.append((target, i % CLASSES))
    return samples


def stock_loader(root: Path, batch_size: int = BATCH_SIZE, workers: int = 1, size: int = IMAGE_SIZE) -> DataLoader:
    """The course's training loader (float32 batches, normalized in the worker)."""
    stock = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(model_artifact.IMAGENET_MEAN, model_artifact.IMAGENET_STD),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(str(root), transform=stock), batch_size=batch_size, shuffle=True, num_workers=workers
    )


def our_loader(samples: list[data.Sample], pixels: cache.PixelCache | None = None) -> loader.BatchLoader:
    """The trainer's training loader (``train.main.build_data``), with one worker."""
    dataset = data.ImageDataset(
        samples, crops.TrainCrop(model_artifact.Preprocessing.for_image_size(IMAGE_SIZE), cache=pixels)
    )
    sampler = loader.EpochSampler(len(samples), 0, 1, seed=0)
    return loader.make_loader(dataset, sampler, BATCH_SIZE, 1, train=True, image_size=IMAGE_SIZE)


def steady_pass(batches, step: Callable | None = None, during=None) -> tuple[int, float, float]:
    """One pass through ``batches`` measured in steady state, from its first batch (the workers
    started, their prefetch queues full) to its next-to-last (the workers still alive): the
    images, wall seconds and CPU seconds (this process and its children, the loader's workers)
    of that span. ``step`` takes each batch's images and labels. ``during`` is entered around
    the span's batches and left before the CPU time is read, so a child it starts and ends
    (nvidia-smi) is not counted."""
    iterator = iter(batches)
    first = next(iterator)
    if step is not None:
        step(*first[:2])
    me = psutil.Process()
    before = profiler.cpu_by_process(me)
    with during or contextlib.nullcontext():
        start, seen = time.perf_counter(), 0
        for _ in range(len(batches) - 2):
            images, labels = next(iterator)[:2]
            if images is not None:
                if step is not None:
                    step(images, labels)
                seen += len(images)
        seconds = time.perf_counter() - start
    cpu = profiler.cpu_delta(before, profiler.cpu_by_process(me))
    for _ in iterator:
        pass
    return seen, seconds, cpu


def cpu_ms_per_image(batches: DataLoader | loader.BatchLoader) -> float:
    """CPU ms per image of one pass through ``batches``, in steady state."""
    seen, _, cpu = steady_pass(batches)
    return cpu / seen * 1000


def normalize_ms_per_image() -> float:
    """``model_artifact.normalize`` of a uint8 batch on the CPU, per image."""
    prep = model_artifact.Preprocessing.for_image_size(IMAGE_SIZE)
    batch = torch.randint(0, 256, (BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    start = time.process_time()
    for _ in range(20):
        model_artifact.normalize(batch.contiguous(memory_format=torch.channels_last), prep)
    return (time.process_time() - start) / (20 * BATCH_SIZE) * 1000


def describe(photos: list[Path]) -> str:
    sizes = sorted(Image.open(p).size for p in photos)
    pixels = statistics.median(w * h for w, h in sizes)
    return f"{len(photos)} photos from Debian's {PACKAGE}, median {pixels / 1e3:.0f} kpixels ({sizes[len(sizes) // 2]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("build/photos"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = fetch_photos(args.photos)
    print(f"{cpu_model()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"images: {describe(photos)}, {args.images} per epoch, batch {BATCH_SIZE}, 1 worker")
    with tempfile.TemporaryDirectory() as tmp:
        samples = image_folder(photos, args.images, Path(tmp) / "images")
        pixels = cache.PixelCache(Path(tmp) / "cache", 2 * IMAGE_SIZE)
        pixels.folder.mkdir()
        build = cpu_ms_per_image(our_loader(samples, pixels))  # epoch 1 of a job with input-cache=true
        entries, size = pixels.usage()
        pipelines: dict[str, Callable[[], DataLoader]] = {
            "stock": lambda: stock_loader(Path(tmp) / "images"),
            "ours": lambda: our_loader(samples),
            "cached": lambda: our_loader(samples, pixels),
        }
        figures: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, make in pipelines.items():
                figures[name].append(cpu_ms_per_image(make()))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        rounds = ", ".join(f"{v:.2f}" for v in figures[name])
        print(f"{name:6s} {value:6.2f} CPU ms/image ({1000 / value:5.0f} img/s per core; rounds {rounds})")
    print(f"R with the input cache = {medians['stock'] / medians['cached']:.2f}x (epochs after the first)")
    each = size / entries / 1e3
    print(f"input cache: built in epoch 1 at {build:.2f} CPU ms/image; {entries} entries, {each:.0f} KB each")
    job = (build + (JOB_EPOCHS - 1) * medians["cached"]) / JOB_EPOCHS
    print(f"a {JOB_EPOCHS}-epoch job with the default input-cache=auto: {job:.2f} CPU ms/image on average, "
          f"R = {medians['stock'] / job:.2f}x")  # fmt: skip
    print(f"normalize on the CPU (CPU-only training, main process): {normalize_ms_per_image():.2f} ms/image")
    print(f"R = {medians['stock'] / medians['ours']:.2f}x")


if __name__ == "__main__":
    main()
