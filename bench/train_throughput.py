"""Training-step throughput (img/s) on this machine: fp32 vs bf16 autocast, and the loader.

    python bench/train_throughput.py [--model resnet18] [--image-size 224] [--batch-size 32]

Prints one line per measurement and the bf16/fp32 ratio; never asserts (see ``make bench``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import model_artifact
from train import crops, data, loader, loop, precision, sample_data


def step_throughput(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, dtype, steps: int) -> float:
    """Images per second of training's own step (``train.loop.train_step``: forward, backward,
    SGD step) on the CPU, channels_last as training's default, after one warm-up step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    prep = model_artifact.Preprocessing.for_image_size(batch.shape[-1])
    step = loop.Step(model, model, nn.CrossEntropyLoss(), optimizer, scaler, torch.device("cpu"), dtype, True, prep)
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loop.train_step(step, batch, labels)
        timings.append(time.perf_counter() - start)
    return batch.shape[0] / (sum(timings[1:]) / steps)


def loader_throughput(workers: int, image_size: int, batch_size: int) -> float:
    """Images per second the training loader delivers (decode + augment) from the sample data."""
    with tempfile.TemporaryDirectory() as tmp:
        sample_data.generate(Path(tmp), per_split={"training": 64})
        folders = sorted(p.name for p in (Path(tmp) / "training").iterdir())
        samples = data.scan(Path(tmp) / "training", folders, "training")
        prep = model_artifact.Preprocessing.for_image_size(image_size)
        dataset = data.ImageDataset(samples, crops.TrainCrop(prep))
        sampler = loader.EpochSampler(len(samples), 0, 1, seed=0)
        batches = loader.make_loader(dataset, sampler, batch_size, workers, True, image_size)
        next(iter(batches))  # start the workers
        start, seen = time.perf_counter(), 0
        for images, _, _ in batches:
            seen += len(images)
        return seen / (time.perf_counter() - start)


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = model_artifact.build_model(args.model, 257).to(memory_format=torch.channels_last)
    batch = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8)
    batch = batch.contiguous(memory_format=torch.channels_last)  # as the loader delivers it: uint8
    labels = torch.randint(0, 257, (args.batch_size,))
    print(
        f"cpu: {torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {precision.cpu_has_native_bf16()}"
    )
    fp32 = step_throughput(model, batch, labels, None, args.steps)
    print(f"train step {args.model} {args.image_size}px batch {args.batch_size} fp32: {fp32:.1f} img/s")
    bf16 = step_throughput(model, batch, labels, torch.bfloat16, max(1, args.steps // 2))
    print(f"train step {args.model} {args.image_size}px batch {args.batch_size} bf16 autocast: {bf16:.1f} img/s")
    print(f"ratio bf16/fp32: {bf16 / fp32:.2f}")
    for workers in (0, 1, 2):
        rate = loader_throughput(workers, args.image_size, args.batch_size)
        print(f"loader {args.image_size}px, {workers} workers: {rate:.0f} img/s")


if __name__ == "__main__":
    main_cli()
