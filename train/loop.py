"""The epoch loop: one training epoch (resumable mid-epoch), its step, and one evaluation pass."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

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


def to_device(images: torch.Tensor, labels: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch on the step's device, in its memory format."""
    fmt = torch.channels_last if step.channels_last else torch.contiguous_format
    images = images.to(step.device, non_blocking=True, memory_format=fmt)
    return images, labels.to(step.device, non_blocking=True)


def train_step(step: Step, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """One optimizer step on a batch; its mean loss and number of correct predictions."""
    images, labels = to_device(images, labels, step)
    with autocast(step.device, step.amp_dtype):
        outputs = step.model(images)
        loss = step.criterion(outputs, labels)
    step.optimizer.zero_grad(set_to_none=True)
    step.scaler.scale(loss).backward()
    step.scaler.step(step.optimizer)
    step.scaler.update()
    return loss.item(), int((outputs.argmax(1) == labels).sum())


def train_one_epoch(step: Step, loader: Iterable, bad: BadFiles, stop: StopRequest, logger: MetricLogger) -> bool:
    """Train until the loader ends (True) or all ranks agree to stop (False); ``logger.meter`` adds up."""
    step.model.train()
    meter = logger.meter
    for images, labels, bad_indices in logger.log_every(loader):
        bad.add(bad_indices)
        if images is not None:  # None: every image of the batch was unreadable
            loss, correct = train_step(step, images, labels)
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} in epoch {logger.epoch}: lower lr or use amp=off")
            meter.add(loss, correct, len(labels))
        logger.step_done()
        if stop.vote(meter.batches, logger.total):
            return False
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
    loss, correct, seen = distributed.all_sum([meter.loss_sum, meter.correct, meter.seen])
    return {"loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1), "count": int(seen)}
