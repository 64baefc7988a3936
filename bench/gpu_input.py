"""Does the input pipeline keep a GPU busy? ResNet18 training img/s on one GPU: synthetic
batches already on the GPU (the ceiling), then real photos through the course's stock loader and
through the trainer's (without and with the input cache), with the process held to 4 and 8 vCPUs
(ml.g4dn.xlarge, ml.g5.2xlarge) and as many loader workers as the trainer starts there; GPU
utilisation sampled with nvidia-smi during each measurement (``gpu_serving.Utilisation``), and
the CPU time per image of the training process and its loader workers.

    python bench/gpu_input.py [--photos build/photos] [--images 4096] [--batch-size 128] [--cpus 4 8]

The photos come from ``bench/input_pipeline.py`` (``make bench-input`` fetches them; carry
``build/photos`` to a machine without a network). ``--device cpu`` with small settings is the
smoke test that keeps this script working where no GPU is (tests/test_bench_scripts.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_serving import Utilisation  # bench/, this script's folder
from input_pipeline import image_folder, steady_pass, stock_loader

import model_artifact
from train import cache, config, crops, data, loader, loop, precision

CLASSES = 257
PIPELINES = ("stock", "ours", "cached")  # the course's loader; ours without and with the input cache


def build_step(device: torch.device, image_size: int) -> loop.Step:
    """ResNet18 as the trainer builds it: channels_last, SGD, AMP where the device has it."""
    net = model_artifact.build_model("resnet18", CLASSES).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dtype = precision.amp_dtype("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    prep = model_artifact.Preprocessing.for_image_size(image_size)
    return loop.Step(net, net, nn.CrossEntropyLoss(), optimizer, scaler, device, dtype, True, prep)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(step: loop.Step, batch_size: int, image_size: int, steps: int) -> dict:
    """img/s of training steps on a uint8 batch already on the device: what the GPU can do."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=step.device)
    labels = torch.randint(0, CLASSES, (batch_size,), device=step.device)
    for _ in range(5):
        loop.train_step(step, images, labels)
    synchronize(step.device)
    with Utilisation() as gpu:
        start = time.perf_counter()
        for _ in range(steps):
            loop.train_step(step, images, labels)
        synchronize(step.device)
        seconds = time.perf_counter() - start
    return {"img_per_s": steps * batch_size / seconds, "gpu_util": gpu.mean}


def stock_step(step: loop.Step, images: torch.Tensor, labels: torch.Tensor) -> None:
    """A training step on the course's float32 batch, normalized on the CPU already."""
    fmt = torch.channels_last if step.channels_last else torch.contiguous_format
    loop.optimize(step, images.to(step.device, memory_format=fmt), labels.to(step.device))


def through_loader(step: loop.Step, batches, epochs: int, train=loop.train_step) -> dict:
    """img/s, GPU busy and CPU ms per image (this process and its loader workers) in the last of
    ``epochs`` epochs through ``batches`` (the earlier ones warm up or fill the cache), in steady
    state (``input_pipeline.steady_pass``; each step ends in ``loss.item()``: the GPU is done)."""
    for epoch in range(epochs):
        if hasattr(batches.sampler, "set_epoch"):
            batches.sampler.set_epoch(epoch)
        gpu = Utilisation()
        seen, seconds, cpu = steady_pass(batches, functools.partial(train, step), during=gpu)
    return {"img_per_s": seen / seconds, "gpu_util": gpu.mean, "cpu_ms_per_image": cpu / seen * 1000}


def child(args: argparse.Namespace) -> None:
    """One measurement with this process held to ``args.cpus`` CPUs: prints a JSON line."""
    cpus = args.cpus[0]
    os.sched_setaffinity(0, list(range(cpus)))
    device = torch.device(args.device)
    torch.set_num_threads(1)  # the main process feeds the GPU; workers decode
    step = build_step(device, args.image_size)
    photos = sorted(args.photos.glob("*.jpg"))
    workers = config.cpus_per_process(1)
    with tempfile.TemporaryDirectory() as tmp:
        samples = image_folder(photos, args.images, Path(tmp) / "images")
        if args.pipeline == "stock":
            stock = stock_loader(Path(tmp) / "images", args.batch_size, workers, args.image_size)
            result = through_loader(step, stock, epochs=2, train=stock_step)
        else:
            pixels = None
            if args.pipeline == "cached":
                pixels = cache.PixelCache(Path(tmp) / "cache", 2 * args.image_size)
                pixels.folder.mkdir()
            dataset = data.ImageDataset(samples, crops.TrainCrop(step.prep, cache=pixels))
            sampler = loader.EpochSampler(len(samples), 0, 1, seed=0)
            batches = loader.make_loader(dataset, sampler, args.batch_size, workers, True, args.image_size)
            result = through_loader(step, batches, epochs=2)
    print(json.dumps(result | {"cpus": cpus, "workers": workers}), flush=True)


def run_child(args: argparse.Namespace, cpus: int, pipeline: str) -> dict:
    command = [sys.executable, __file__, "--child", "--cpus", str(cpus), "--device", args.device]
    command += ["--photos", str(args.photos), "--images", str(args.images), "--batch-size", str(args.batch_size)]
    command += ["--image-size", str(args.image_size), "--pipeline", pipeline]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode:
        raise SystemExit(f"measurement failed ({cpus} CPUs, {pipeline}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(result: dict) -> str:
    util = "n/a" if math.isnan(result["gpu_util"]) else f"{result['gpu_util']:.0f}%"
    cpu = f", {result['cpu_ms_per_image']:.2f} CPU ms/image (all processes)" if "cpu_ms_per_image" in result else ""
    return f"{result['img_per_s']:7.0f} img/s, GPU busy {util}{cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("build/photos"))
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="synthetic steps")
    parser.add_argument("--cpus", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", choices=PIPELINES, default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not any(args.photos.glob("*.jpg")):
        raise SystemExit(f"no photos in {args.photos}: run `make bench-input` first (it fetches them)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; {os.cpu_count()} CPUs; batch {args.batch_size}, {args.image_size} px, {args.images} photos")
    ceiling = synthetic(build_step(device, args.image_size), args.batch_size, args.image_size, args.steps)
    print(f"{'synthetic (ceiling)':30s} {describe(ceiling)}")
    for cpus in args.cpus:
        for pipeline in PIPELINES:
            result = run_child(args, cpus, pipeline)
            label = f"{cpus} vCPUs, {result['workers']} workers, {pipeline}"
            share = result["img_per_s"] / ceiling["img_per_s"]
            print(f"{label:30s} {describe(result)}, {share:.0%} of the ceiling")


if __name__ == "__main__":
    main()
