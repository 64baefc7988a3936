"""One training process: channels → loaders → model → epochs → checkpoint → artifact."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import model_artifact
from train import (
    artifact,
    cache,
    checkpoint,
    config,
    crops,
    data,
    distributed,
    loop,
    metrics,
    precision,
    profile_report,
    profiler,
    quantize,
    schedule,
)
from train import model as model_lib
from train.failure import Stopped, TrainingError, reported
from train.loader import BatchLoader, EpochSampler, make_loader
from train.progress import Meter, MetricLogger, clock
from train.stop import StopRequest

log = logging.getLogger("train")
FOLLOWER_LINGER_SECONDS = 5


@dataclass
class Split:
    """One split of the data: its SageMaker channel, loader, sampler and unreadable files."""

    name: str  # train, val or test
    channel: str  # training, validation or test
    samples: list[data.Sample]
    loader: BatchLoader
    sampler: EpochSampler
    bad: data.BadFiles
    cache: cache.PixelCache | None = None  # its input cache, when on


@dataclass
class Job:
    """Everything the epoch loop needs, built once."""

    args: object
    paths: config.Paths
    ctx: distributed.Context
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    prep: model_artifact.Preprocessing
    step: loop.Step
    stop: StopRequest
    record: checkpoint.Record = field(default_factory=checkpoint.Record)
    profiler: profiler.Profiler | None = None  # only with profile=true
    cache_reported: bool = False  # the input cache's size is logged once, after this run's first epoch

    @property
    def identity(self) -> dict:
        """What a checkpoint must match to be resumed by this job."""
        return checkpoint.identity(vars(self.args), self.class_names, self.ctx.world_size)


def build_data(args, paths: config.Paths, ctx: distributed.Context, prep) -> tuple[data.Splits, dict[str, Split]]:
    """The resolved splits, and a Split (loader, sampler, bad-file tracker) each for train, val and test."""
    splits = data.resolve_splits(paths.channels, args)
    workers = config.cpus_per_process(ctx.local_world_size) if args.num_workers is None else args.num_workers
    built, (training_cache, evaluation_cache) = {}, input_caches(args, paths, ctx)
    for name, channel in (("train", "training"), ("val", "validation"), ("test", "test")):
        samples, training = getattr(splits, name), name == "train"
        if training:
            load = crops.TrainCrop(prep, args.crop_min_scale, args.max_image_pixels, training_cache)
        else:
            load = crops.EvalCrop(prep, args.max_image_pixels, evaluation_cache if name == "val" else None)
        dataset = data.ImageDataset(samples, load)
        sampler = EpochSampler(len(samples), ctx.rank, ctx.world_size, args.seed, shuffle=training)
        batches = make_loader(dataset, sampler, args.batch_size, workers, training, prep.image_size)
        bad = data.BadFiles(samples, args.max_bad_fraction, channel)
        built[name] = Split(name, channel, samples, batches, sampler, bad, load.cache)
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
    return splits, built


def input_caches(args, paths: config.Paths, ctx: distributed.Context) -> tuple[cache.PixelCache | None, ...]:
    """The training and evaluation input caches, when ``input-cache`` is on (auto: 2+ epochs)."""
    if args.input_cache == "off" or (args.input_cache == "auto" and args.epochs < cache.MIN_EPOCHS):
        return None, None
    folder = args.input_cache_dir or config.scratch_dir(paths.base_dir) / "input-cache"
    caches = cache.open_caches(folder, args.input_cache_size or 2 * args.image_size, ctx.local_rank == 0)
    distributed.barrier()  # the host's first process has emptied the folders before anyone fills them
    return caches


def build_step(args, ctx: distributed.Context, num_classes: int, paths: config.Paths, prep) -> loop.Step:
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
    dtype = precision.amp_dtype(args.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    return loop.Step(wrapped, net, criterion, optimizer, scaler, ctx.device, dtype, args.channels_last, prep)


def save_checkpoint(job: Job, epoch: int, meter: Meter) -> None:
    """Rank 0 keeps the resumable state: ``epoch`` is the next to (continue to) train."""
    if job.ctx.is_main:
        checkpoint.save_resumable(job.args.checkpoint_dir, job.identity, epoch, meter, job.step, job.record)


def restore(job: Job) -> tuple[int, Meter]:
    """Resume from the checkpoint if there is one: the epoch to (continue to) train and its meter."""
    resumed = checkpoint.resume(job.args.checkpoint_dir, job.identity, job.step, job.ctx.is_main)
    if resumed is None:
        return 0, Meter()
    epoch, meter, job.record = resumed
    if epoch >= job.args.epochs:
        # Stopped (or restarted) after the last epoch: the tuner still needs the objective's lines.
        log.info("resumed from checkpoint: all %d epochs were done; their metric lines again:", job.args.epochs)
        if job.ctx.is_main:
            for record in job.record.history:
                print(metrics.epoch_line(record), flush=True)
    else:
        log.info("resumed from checkpoint: epoch %d, %d batches done", epoch + 1, meter.batches)
    return epoch, meter


def epoch_record(job: Job, epoch: int, meter: Meter, started: float) -> dict:
    """Training metrics of the epoch plus a validation pass, as one history record."""
    train = meter.summary(job.ctx.world_size)
    val = loop.evaluate(job.step, job.val.loader, job.val.bad) if job.val.samples else {}
    record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"]}
    record |= {f"val_{k}": val[k] for k in ("loss", "accuracy") if k in val}
    return record | {
        "lr": schedule.lr_at(job.args, epoch),
        "img_per_sec": train["img_per_sec"],
        "data_wait": train["data_wait"],
        "epoch_time": time.perf_counter() - started,  # training and validation
    }


def train_epoch(job: Job, epoch: int, meter: Meter) -> bool:
    """Train (or finish) epoch ``epoch``; False when the ranks agreed to stop."""
    schedule.set_lr(job.step.optimizer, schedule.lr_at(job.args, epoch))
    job.train.sampler.set_epoch(epoch, skip=meter.batches * job.args.batch_size)
    if job.profiler:
        job.profiler.begin_epoch(epoch + 1)
    interval = job.args.log_interval if job.ctx.is_main else 0
    logger = MetricLogger(meter, epoch + 1, interval, job.profiler.step if job.profiler else None)
    return loop.train_one_epoch(job.step, job.train.loader, job.train.bad, job.stop, logger)


def run_epoch(job: Job, epoch: int, meter: Meter) -> None:
    """Train (or finish) one epoch, validate, record, checkpoint; raise Stopped on SIGTERM."""
    args, started = job.args, time.perf_counter()
    if not train_epoch(job, epoch, meter):
        save_checkpoint(job, epoch, meter)
        raise Stopped(
            f"stopped by signal in epoch {epoch + 1} after {meter.batches} batches; "
            f"checkpoint saved in {args.checkpoint_dir}: rerun the job with it to resume"
        )
    record = epoch_record(job, epoch, meter, started)
    if job.train.cache and not job.cache_reported and job.ctx.local_rank == 0:
        log_cache(job, epoch, time.perf_counter() - started)
    job.record.history.append(record)
    if job.ctx.is_main:
        print(metrics.epoch_line(record), flush=True)
        left = args.epochs - epoch - 1
        if left:
            log.info("epoch %d/%d done; about %s left", epoch + 1, args.epochs, clock(left * record["epoch_time"]))
    score = record.get("val_accuracy", float(epoch))  # without validation: the last epoch
    if score > job.record.best["score"] and job.ctx.is_main:
        job.record.best = {"epoch": epoch + 1, "score": score}
        checkpoint.save_best(args.checkpoint_dir, job.step.net)
    save_checkpoint(job, epoch + 1, Meter())
    if job.stop.agreed():  # a signal during validation or the checkpoint write
        raise Stopped(f"stopped by signal after epoch {epoch + 1}; checkpoint saved in {args.checkpoint_dir}")


def log_cache(job: Job, epoch: int, seconds: float) -> None:
    """What the input cache holds after the first epoch of this run (a resumed job's too)."""
    used = [split.cache.usage() for split in (job.train, job.val) if split.cache]
    entries, size = sum(u[0] for u in used), sum(u[1] for u in used)
    log.info(
        "input cache after epoch %d (%.0f s with validation): %d images, %.2f GB",
        epoch + 1,
        seconds,
        entries,
        size / 1e9,
    )
    job.cache_reported = True


def finish(job: Job) -> None:
    """Best weights → test evaluation → artifact, metrics.json and curve (rank 0 writes)."""
    checkpoint.load_best(job.args.checkpoint_dir, job.step.net, job.ctx.is_main)
    best = job.record.best
    final = {"best_epoch": best["epoch"]}
    if job.val.samples:
        final["best_val_accuracy"] = best["score"]
    if job.test.samples:
        test = loop.evaluate(job.step, job.test.loader, job.test.bad)
        final |= {"test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    final["unreadable_images"] = sum(len(split.bad.indices) for split in (job.train, job.val, job.test))
    if job.ctx.is_main:
        print(metrics.final_line(final), flush=True)
        write_artifacts(job, final)


def write_artifacts(job: Job, final: dict) -> None:
    """The model artifact (model.pt, model.onnx, artifact.json, code/), metrics.json and the training curve."""
    hps = {k: str(v) if isinstance(v, Path) else v for k, v in vars(job.args).items()}
    meta = model_artifact.Metadata(
        architecture=job.args.model,
        class_names=job.class_names,
        preprocessing=job.prep,
        metrics={k: v for k, v in final.items() if v is not None},
        hyperparameters=hps,
    )
    started = time.perf_counter()
    artifact.save(job.paths.model_dir, job.step.net.state_dict(), meta)
    metrics.write_report(job.paths.output_data_dir, job.record.history, final)
    log.info("model artifact written to %s in %.1f s", job.paths.model_dir, time.perf_counter() - started)
    if job.args.int8:
        write_int8(job, meta)


def write_int8(job: Job, meta: model_artifact.Metadata) -> None:
    """``model.int8.onnx``, calibrated on training images and checked on the validation split,
    recorded in artifact.json and a metric line. Without a validation split there is nothing
    to check it on, so none is written; a failure leaves the fp32 artifact as it is, with a warning."""
    if not job.val.samples:
        log.warning("no validation split: %s not written (its accuracy could not be checked)", model_artifact.INT8_FILE)
        return
    calibration = quantize.calibration_sample([path for path, _ in job.train.samples], job.args.seed)
    try:
        check = quantize.add_int8(job.paths.model_dir, meta, calibration, job.val.samples, job.args.max_image_pixels)
    except Exception as exc:  # the fp32 model is trained and written: an int8 failure must not lose it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s not written, the CPU image serves model.onnx: %s", model_artifact.INT8_FILE, reason)
        return
    artifact.write_metadata(job.paths.model_dir, meta)
    print(metrics.int8_line(check), flush=True)


def setup(args, paths: config.Paths, stop: StopRequest) -> Job:
    """Join the group, seed, build data and model, log the resolved configuration."""
    config.check_input_modes(paths.base_dir)
    ctx = distributed.init()
    torch.manual_seed(args.seed + ctx.rank)
    random.seed(args.seed + ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.checkpoint_dir = args.checkpoint_dir or paths.checkpoint_dir
    prep = model_artifact.Preprocessing.for_image_size(args.image_size)
    splits, built = build_data(args, paths, ctx, prep)
    step = build_step(args, ctx, len(splits.class_names), paths, prep)
    if ctx.is_main:
        resolved = {k: str(v) for k, v in vars(args).items()} | {
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "amp_dtype": str(step.amp_dtype),
            "channels": {k: str(v) for k, v in paths.channels.items()},
            "model_dir": str(paths.model_dir),
        }
        log.info("resolved configuration: %s", json.dumps(resolved, sort_keys=True))
    return Job(args, paths, ctx, splits.class_names, built["train"], built["val"], built["test"], prep, step, stop)


def start_profiler(job: Job) -> profiler.Profiler:
    """The opt-in profiler: step timings, a trace and (rank 0) a report in output data/profile."""
    workload = profiler.Workload(
        world_size=job.ctx.world_size,
        available_cpus=config.available_cpus(),
        cpus_per_process=config.cpus_per_process(job.ctx.local_world_size),
        workers=job.train.loader.num_workers,
        batch_size=job.args.batch_size,
        image_size=job.args.image_size,
    )
    folder = job.paths.output_data_dir / "profile"
    return profiler.Profiler(folder, job.ctx.device, job.ctx.rank, job.args.profile_steps, workload).start()


def train(args, paths: config.Paths) -> None:
    """The whole job for this process."""
    stop = StopRequest().install()
    job = setup(args, paths, stop)
    try:
        start, meter = restore(job)
        job.profiler = start_profiler(job) if args.profile else None
        for epoch in range(start, args.epochs):
            run_epoch(job, epoch, meter)
            meter = Meter()
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
    if not job.ctx.on_first_host:
        # SDK local mode runs hosts with `docker-compose up --abort-on-container-exit`: the
        # first container to exit stops the others. Let host 0 (the model's writer) go first.
        time.sleep(FOLLOWER_LINGER_SECONDS)


def main(argv: list[str] | None = None) -> None:
    """``python -m train --key value ...``: parse, train, report failures."""
    line_format = f"%(asctime)s %(levelname)s [rank {distributed.env_rank()}] %(name)s: %(message)s"
    logging.basicConfig(level=config.log_level(), stream=sys.stdout, format=line_format)
    paths = config.resolve_paths()
    with reported(paths.output_dir):
        try:
            args = config.parse_hyperparameters(sys.argv[1:] if argv is None else argv)
            train(args, paths)
        except torch.OutOfMemoryError as exc:
            raise TrainingError(f"out of memory: lower batch-size or image-size ({str(exc).splitlines()[0]})") from exc
