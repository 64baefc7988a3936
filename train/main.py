"""One training process: channels → loaders → model → epochs → checkpoint → artifact."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import model_artifact
from train import checkpoint, config, data, distributed, loop, metrics, profile_report, profiler
from train import model as model_lib
from train.failure import Stopped, TrainingError, reported

log = logging.getLogger("train")
CHANNEL_NAMES = {"train": "training", "val": "validation", "test": "test"}
FOLLOWER_LINGER_SECONDS = 5


@dataclass
class Job:
    """Everything the epoch loop needs, built once."""

    args: object
    paths: config.Paths
    ctx: distributed.Context
    splits: data.Splits
    prep: model_artifact.Preprocessing
    step: loop.Step
    net: nn.Module  # the bare model (``step.model`` may be its DDP wrapper)
    loaders: dict
    samplers: dict
    bad: dict
    stop: checkpoint.StopRequest
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "score": -1.0})
    profiler: profiler.Profiler | None = None  # only with profile=true


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: CPU bf16 autocast only pays with these (20x slower without)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on this device (None: full precision)."""
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise config.ConfigError("hyperparameter amp: fp16 needs a GPU; use bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" or cpu_has_native_bf16() else None


def lr_at(args, epoch: int) -> float:
    """Learning rate of ``epoch``: linear warmup, then cosine, step or constant."""
    if epoch < args.lr_warmup_epochs:
        return args.lr * (epoch + 1) / (args.lr_warmup_epochs + 1)
    done, span = epoch - args.lr_warmup_epochs, max(args.epochs - args.lr_warmup_epochs, 1)
    if args.lr_scheduler == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * done / span))
    if args.lr_scheduler == "step":
        return args.lr * args.lr_gamma ** (done // args.lr_step_size)
    return args.lr


def build_data(args, paths: config.Paths, ctx: distributed.Context, prep):
    """Splits, samplers, loaders and bad-file trackers for train/val/test."""
    splits = data.resolve_splits(paths.channels, args)
    workers = args.num_workers
    if workers is None:
        workers = config.cpus_per_process()
    pin = ctx.device.type == "cuda"
    transforms = {"train": data.train_transform(prep, args.crop_min_scale), "val": model_artifact.eval_transform(prep)}
    loaders, samplers, bad = {}, {}, {}
    for name, samples in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        training = name == "train"
        transform = transforms["train" if training else "val"]
        dataset = data.ImageDataset(samples, transform, prep.resize_size, args.max_image_pixels)
        samplers[name] = data.EpochSampler(len(samples), ctx.rank, ctx.world_size, args.seed, shuffle=training)
        loaders[name] = data.make_loader(dataset, samplers[name], args.batch_size, workers, training, pin)
        bad[name] = data.BadFiles(samples, args.max_bad_fraction, CHANNEL_NAMES[name])
    if len(splits.train) < ctx.world_size:
        raise TrainingError(f"{len(splits.train)} training images cannot feed {ctx.world_size} processes")
    log.info(
        "data: layout %s; %d classes; train %d, validation %d, test %d images; %d loader workers",
        splits.layout,
        len(splits.class_names),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        workers,
    )
    return splits, loaders, samplers, bad


def build_step(args, ctx: distributed.Context, num_classes: int, paths: config.Paths):
    """Model (DDP-wrapped when several processes), loss, optimizer and scaler."""
    net = model_lib.build(args, num_classes, paths.channels.get("pretrained"))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(ctx.device, memory_format=fmt)
    wrapped = net
    if ctx.world_size > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    dtype = amp_dtype(args.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    step = loop.Step(wrapped, criterion, optimizer, scaler, ctx.device, dtype, args.channels_last)
    return step, net


def identity(job: Job) -> dict:
    """What a checkpoint must match to be resumed by this job."""
    return checkpoint.identity(vars(job.args), job.splits.class_names, job.ctx.world_size)


def save_checkpoint(job: Job, epoch: int, meter: loop.Meter) -> None:
    """Rank 0 writes the resumable state: ``epoch`` is the next to (continue to) train."""
    if not job.ctx.is_main:
        return
    state = {
        "identity": identity(job),
        "epoch": epoch,
        "meter": meter.as_dict(),
        "model": job.net.state_dict(),
        "optimizer": job.step.optimizer.state_dict(),
        "scaler": job.step.scaler.state_dict(),
        "history": job.history,
        "best": job.best,
    }
    path = checkpoint.save(job.args.checkpoint_dir, state)
    log.info("checkpoint saved: %s (epoch %d, %d batches into it)", path, epoch + 1, meter.batches)


def restore(job: Job) -> tuple[int, loop.Meter]:
    """Resume from the checkpoint (rank 0's, broadcast) if there is one."""
    state = checkpoint.load(job.args.checkpoint_dir, identity(job)) if job.ctx.is_main else None
    state = distributed.broadcast(state)
    if state is None:
        return 0, loop.Meter()
    job.net.load_state_dict(state["model"])
    job.step.optimizer.load_state_dict(state["optimizer"])
    job.step.scaler.load_state_dict(state["scaler"])
    job.history, job.best = state["history"], state["best"]
    meter = loop.Meter(**state["meter"])
    if state["epoch"] >= job.args.epochs:
        # Stopped (or restarted) after the last epoch: the tuner still needs the objective's lines.
        log.info("resumed from checkpoint: all %d epochs were done; their metric lines again:", job.args.epochs)
        if job.ctx.is_main:
            for record in job.history:
                print(metrics.epoch_line(record), flush=True)
    else:
        log.info("resumed from checkpoint: epoch %d, %d batches done", state["epoch"] + 1, meter.batches)
    return state["epoch"], meter


def epoch_record(job: Job, epoch: int, meter: loop.Meter, started: float) -> dict:
    """Training metrics of the epoch plus a validation pass, as one history record."""
    train = meter.summary(job.ctx.world_size)
    val = loop.evaluate(job.step, job.loaders["val"], job.bad["val"]) if job.splits.val else {}
    record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"]}
    record |= {f"val_{k}": val[k] for k in ("loss", "accuracy") if k in val}
    return record | {
        "lr": lr_at(job.args, epoch),
        "img_per_sec": train["img_per_sec"],
        "data_wait": train["data_wait"],
        "epoch_time": time.perf_counter() - started,  # training and validation
    }


def run_epoch(job: Job, epoch: int, meter: loop.Meter) -> None:
    """Train (or finish) one epoch, validate, record, checkpoint; raise Stopped on SIGTERM."""
    args = job.args
    for group in job.step.optimizer.param_groups:
        group["lr"] = lr_at(args, epoch)
    job.samplers["train"].set_epoch(epoch, skip=meter.batches * args.batch_size)
    started = time.perf_counter()
    log_interval = args.log_interval if job.ctx.is_main else 0
    if job.profiler:
        job.profiler.begin_epoch(epoch + 1)
    finished = loop.train_one_epoch(
        job.step,
        job.loaders["train"],
        meter,
        job.bad["train"],
        job.stop,
        epoch + 1,
        log_interval,
        job.profiler.step if job.profiler else None,
    )
    if not finished:
        save_checkpoint(job, epoch, meter)
        raise Stopped(
            f"stopped by signal in epoch {epoch + 1} after {meter.batches} batches; "
            f"checkpoint saved in {args.checkpoint_dir}: rerun the job with it to resume"
        )
    record = epoch_record(job, epoch, meter, started)
    job.history.append(record)
    if job.ctx.is_main:
        print(metrics.epoch_line(record), flush=True)
        left = args.epochs - epoch - 1
        if left:
            log.info("epoch %d/%d done; about %s left", epoch + 1, args.epochs, loop.clock(left * record["epoch_time"]))
    score = record.get("val_accuracy", float(epoch))  # without validation: the last epoch
    if score > job.best["score"] and job.ctx.is_main:
        job.best = {"epoch": epoch + 1, "score": score}
        checkpoint.save(args.checkpoint_dir, job.net.state_dict(), checkpoint.BEST_FILE)
    save_checkpoint(job, epoch + 1, loop.Meter())
    if distributed.any_true(job.stop.requested):
        raise Stopped(f"stopped by signal after epoch {epoch + 1}; checkpoint saved in {args.checkpoint_dir}")


def finish(job: Job) -> None:
    """Best weights → test evaluation → artifact, metrics.json and curve (rank 0 writes)."""
    best_path = job.args.checkpoint_dir / checkpoint.BEST_FILE
    state = torch.load(best_path, map_location="cpu", weights_only=True) if job.ctx.is_main else None
    job.net.load_state_dict(distributed.broadcast(state))
    final = {"best_epoch": job.best["epoch"]}
    if job.splits.val:
        final["best_val_accuracy"] = job.best["score"]
    if job.splits.test:
        test = loop.evaluate(job.step, job.loaders["test"], job.bad["test"])
        final |= {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    final["unreadable_images"] = sum(len(b.indices) for b in job.bad.values())
    if not job.ctx.is_main:
        return
    print(metrics.final_line(final), flush=True)
    hps = {k: str(v) if isinstance(v, Path) else v for k, v in vars(job.args).items()}
    meta = model_artifact.Metadata(
        architecture=job.args.model,
        class_names=job.splits.class_names,
        preprocessing=job.prep,
        metrics={k: v for k, v in final.items() if v is not None},
        hyperparameters=hps,
    )
    started = time.perf_counter()
    model_artifact.save(job.paths.model_dir, job.net.state_dict(), meta)  # model.pt, model.onnx, artifact.json
    metrics.write_report(job.paths.output_data_dir, job.history, final)
    log.info("model artifact written to %s in %.1f s", job.paths.model_dir, time.perf_counter() - started)


def setup(args, paths: config.Paths, stop: checkpoint.StopRequest) -> Job:
    """Join the group, seed, build data and model, log the resolved configuration."""
    ctx = distributed.init()
    torch.manual_seed(args.seed + ctx.rank)
    random.seed(args.seed + ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.checkpoint_dir = args.checkpoint_dir or paths.checkpoint_dir
    prep = model_artifact.Preprocessing.for_image_size(args.image_size)
    splits, loaders, samplers, bad = build_data(args, paths, ctx, prep)
    step, net = build_step(args, ctx, len(splits.class_names), paths)
    if ctx.is_main:
        resolved = {k: str(v) for k, v in vars(args).items()} | {
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "amp_dtype": str(step.amp_dtype),
            "channels": {k: str(v) for k, v in paths.channels.items()},
            "model_dir": str(paths.model_dir),
        }
        log.info("resolved configuration: %s", json.dumps(resolved, sort_keys=True))
    return Job(args, paths, ctx, splits, prep, step, net, loaders, samplers, bad, stop)


def start_profiler(job: Job) -> profiler.Profiler:
    """The opt-in profiler: step timings, a trace and (rank 0) a report in output data/profile."""
    context = {
        "world_size": job.ctx.world_size,
        "available_cpus": config.available_cpus(),
        "cpus_per_process": config.cpus_per_process(),
        "workers": job.loaders["train"].num_workers,
        "batch_size": job.args.batch_size,
        "image_size": job.args.image_size,
    }
    folder = job.paths.output_data_dir / "profile"
    return profiler.Profiler(folder, job.ctx.device, job.ctx.rank, job.args.profile_steps, context).start()


def train(args, paths: config.Paths) -> None:
    """The whole job for this process."""
    stop = checkpoint.StopRequest().install()
    job = setup(args, paths, stop)
    try:
        start, meter = restore(job)
        job.profiler = start_profiler(job) if args.profile else None
        for epoch in range(start, args.epochs):
            run_epoch(job, epoch, meter)
            meter = loop.Meter()
        if job.profiler:
            job.profiler.stop_trace()
        finish(job)
        if job.profiler and job.ctx.is_main:
            profile_report.write(job.profiler.folder, job.profiler.summary())
        distributed.barrier()  # rank 0 has written the model: nobody leaves before that
    finally:
        if job.profiler:
            job.profiler.stop_trace()
        distributed.shutdown()
    if job.ctx.rank >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        # SDK local mode runs hosts with `docker-compose up --abort-on-container-exit`: the
        # first container to exit stops the others. Let host 0 (the model's writer) go first.
        time.sleep(FOLLOWER_LINGER_SECONDS)


def main(argv: list[str] | None = None) -> None:
    """``python -m train --key value ...``: parse, train, report failures."""
    rank = os.environ.get("RANK", "0")
    line_format = f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"
    logging.basicConfig(level=config.log_level(), stream=sys.stdout, format=line_format)
    paths = config.resolve_paths()
    with reported(paths.output_dir):
        try:
            args = config.parse_hyperparameters(sys.argv[1:] if argv is None else argv)
            train(args, paths)
        except torch.OutOfMemoryError as exc:
            raise TrainingError(f"out of memory: lower batch-size or image-size ({str(exc).splitlines()[0]})") from exc
