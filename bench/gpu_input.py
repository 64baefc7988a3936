"""Does the input pipeline keep a GPU busy? ResNet18 training img/s on one GPU: synthetic
batches already on the GPU (the ceiling), then the trainer's real loader on real photos with the
process held to 4 and 8 vCPUs (ml.g4dn.xlarge, ml.g5.2xlarge), without and with the input cache;
GPU utilisation sampled with nvidia-smi during each measurement (``gpu_serving.Utilisation``),
and the CPU time per image of the trainer's process and its loader workers.

    python bench/gpu_input.py [--photos build/photos] [--images 4096] [--batch-size 128] [--cpus 4 8]

The photos come from ``bench/input_pipeline.py`` (``make bench-input`` fetches them; carry
``build/photos`` to a machine without a network). ``--device cpu`` with small settings is the
smoke test that keeps this script working where no GPU is (tests/test_bench_scripts.py).
"""

from __future__ import annotations

import argparse
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
from input_pipeline import children, cpu_seconds, image_folder

import model_artifact
from train import cache, config, crops, data, loader, loop, precision

CLASSES = 257


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


def through_loader(step: loop.Step, batches, epochs: int) -> dict:
    """img/s of the last of ``epochs`` epochs through ``batches`` (the earlier ones warm up or fill the cache)."""
    for epoch in range(epochs):
        batches.sampler.set_epoch(epoch)
        measured = epoch == epochs - 1
        workers = sorted(children())  # started by the first epoch (persistent); nvidia-smi is not one
        with Utilisation() as gpu:
            start, cpu, seen = time.perf_counter(), cpu_seconds(workers), 0
            for images, labels, _ in batches:
                if images is not None:
                    loop.train_step(step, images, labels)
                    seen += len(images)
            synchronize(step.device)
            seconds, cpu = time.perf_counter() - start, cpu_seconds(workers) - cpu
        if measured:
            return {"img_per_s": seen / seconds, "gpu_util": gpu.mean, "cpu_ms_per_image": cpu / seen * 1000}
    raise ValueError("epochs must be 1 or more")


def child(args: argparse.Namespace) -> None:
    """One measurement with this process held to ``args.cpus`` CPUs: prints a JSON line."""
    cpus = args.cpus[0]
    os.sched_setaffinity(0, list(range(cpus)))
    device = torch.device(args.device)
    torch.set_num_threads(1)  # the main process feeds the GPU; workers decode
    step = build_step(device, args.image_size)
    photos = sorted(args.photos.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        samples = image_folder(photos, args.images, Path(tmp) / "images")
        pixels = None
        if args.cache:
            pixels = cache.PixelCache(Path(tmp) / "cache", 2 * args.image_size)
            pixels.folder.mkdir()
        workers = config.cpus_per_process(1)
        dataset = data.ImageDataset(samples, crops.TrainCrop(step.prep, cache=pixels))
        sampler = loader.EpochSampler(len(samples), 0, 1, seed=0)
        batches = loader.make_loader(dataset, sampler, args.batch_size, workers, True, args.image_size)
        result = through_loader(step, batches, epochs=2)
    print(json.dumps(result | {"cpus": cpus, "workers": workers, "cache": args.cache}), flush=True)


def run_child(args: argparse.Namespace, cpus: int, use_cache: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--cpus", str(cpus), "--device", args.device]
    command += ["--photos", str(args.photos), "--images", str(args.images), "--batch-size", str(args.batch_size)]
    command += ["--image-size", str(args.image_size)] + (["--cache"] if use_cache else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode:
        raise SystemExit(f"measurement failed ({cpus} CPUs, cache {use_cache}):\n{done.stderr[-3000:]}")
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
    parser.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
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
    print(f"synthetic (ceiling)          {describe(ceiling)}")
    for cpus in args.cpus:
        for use_cache in (False, True):
            result = run_child(args, cpus, use_cache)
            label = f"{cpus} vCPUs, {result['workers']} workers{', cached' if use_cache else ''}"
            share = result["img_per_s"] / ceiling["img_per_s"]
            print(f"{label:28s} {describe(result)}, {share:.0%} of the ceiling")


if __name__ == "__main__":
    main()
