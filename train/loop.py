"""The epoch loop: one training epoch (resumable mid-epoch), its step, and one evaluation pass."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

import model_artifact
from train import distributed
from train.data import BadFiles
from train.failure import TrainingError
from train.precision import autocast
from train.progress import Meter, MetricLogger
from train.stop import StopRequest


@dataclass
class Step:
    """What one step needs besides the batch."""

    model: nn.Module  # the DDP wrapper when several processes train; ``net`` is the bare model
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    prep: model_artifact.Preprocessing  # the batches are uint8: normalized on the device


def to_device(images: torch.Tensor, labels: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 batch copied to the step's device (4 times fewer bytes than float), in its
    memory format, and normalized there."""
    fmt = torch.channels_last if step.channels_last else torch.contiguous_format
    images = images.to(step.device, non_blocking=True, memory_format=fmt)
    return model_artifact.normalize(images, step.prep), labels.to(step.device, non_blocking=True)


def train_step(step: Step, images: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> tuple[float, int]:
    """One optimizer step on a uint8 batch (its loss scaled by ``weight``); the batch's mean loss
    and number of correct predictions."""
    return optimize(step, *to_device(images, labels, step), weight)


def optimize(step: Step, inputs: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> tuple[float, int]:
    """``train_step`` on model inputs already on the device and normalized."""
    with autocast(step.device, step.amp_dtype):
        outputs = step.model(inputs)
        loss = step.criterion(outputs, labels)
    step.optimizer.zero_grad(set_to_none=True)
    step.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
    step.scaler.step(step.optimizer)
    step.scaler.update()
    return loss.item(), int((outputs.argmax(1) == labels).sum())


def idle_step(step: Step) -> None:
    """This process's part of a step when its whole batch was unreadable: the others are in
    DDP's gradient all-reduce, so it backpropagates a zero loss on a blank image (BatchNorm in
    eval mode: the blank image changes no statistics), and steps with their gradients."""
    size = step.prep.image_size
    step.model.eval()
    try:
        train_step(step, torch.zeros(1, 3, size, size, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), 0.0)
    finally:
        step.model.train()


def train_one_epoch(step: Step, loader: Iterable, bad: BadFiles, stop: StopRequest, logger: MetricLogger) -> bool:
    """Train until the loader ends (True) or all ranks agree to stop (False); ``logger.meter`` adds up."""
    step.model.train()
    meter = logger.meter
    for images, labels, bad_indices in logger.log_every(loader):
        bad.add(bad_indices)
        if images is not None:
            loss, correct = train_step(step, images, labels)
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} in epoch {logger.epoch}: lower lr or use amp=off")
            meter.add(loss, correct, len(labels))
        elif distributed.is_active():  # every image of this process's batch was unreadable
            idle_step(step)
        logger.step_done()
        if stop.vote(meter.batches, logger.total):
            return False
    bad.merge()
    return True


@torch.no_grad()
def evaluate(step: Step, loader: Iterable, bad: BadFiles) -> dict:
    """Loss and accuracy over the whole loader (all ranks' shards summed)."""
    step.model.eval()
    meter = Meter()
    criterion = nn.CrossEntropyLoss()  # no label smoothing: report the true loss
    for images, labels, bad_indices in loader:
        bad.add(bad_indices)
        if images is None:
            continue
        images, labels = to_device(images, labels, step)
        with autocast(step.device, step.amp_dtype):
            outputs = step.model(images)
        meter.add(criterion(outputs.float(), labels).item(), int((outputs.argmax(1) == labels).sum()), len(labels))
    bad.merge()
    loss, correct, seen = distributed.all_sum([meter.loss_sum, meter.correct, meter.seen])
    return {"loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1), "count": int(seen)}
