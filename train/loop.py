"""The epoch loop: one training epoch (resumable mid-epoch) and one evaluation pass."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from train import distributed
from train.data import BadFiles
from train.failure import TrainingError

log = logging.getLogger(__name__)


@dataclass
class Meter:
    """Running sums of one epoch; saved in checkpoints so a resumed epoch adds up."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    batches: int = 0
    data_time: float = 0.0
    total_time: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self, world_size: int) -> dict:
        """Global loss/accuracy (summed over ranks), throughput and data-wait share."""
        sums = distributed.all_sum([self.loss_sum, self.correct, self.seen])
        loss, correct, seen = sums
        return {
            "loss": loss / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "img_per_sec": self.seen * world_size / max(self.total_time, 1e-9),
            "data_wait": self.data_time / max(self.total_time, 1e-9),
        }


@dataclass
class Step:
    """What one step needs besides the batch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision when ``dtype`` is set, otherwise a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def clock(seconds: float) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _to_device(images: torch.Tensor, labels: torch.Tensor, step: Step):
    fmt = torch.channels_last if step.channels_last else torch.contiguous_format
    images = images.to(step.device, non_blocking=True, memory_format=fmt)
    return images, labels.to(step.device, non_blocking=True)


def train_one_epoch(
    step: Step,
    loader,
    meter: Meter,
    bad: BadFiles,
    stop,
    epoch: int,
    log_interval: int,
    on_step: Callable[[float, float], None] | None = None,
) -> bool:
    """Train until the loader ends (True) or a stop is agreed by all ranks (False).

    ``on_step(waited, elapsed)``, if given, hears each step's data wait and wall time.
    """
    step.model.train()
    total = meter.batches + len(loader)
    tick = time.perf_counter()
    for images, labels, bad_indices in loader:
        waited = time.perf_counter() - tick
        bad.add(bad_indices)
        if images is not None:
            images, labels = _to_device(images, labels, step)
            with autocast(step.device, step.amp_dtype):
                outputs = step.model(images)
                loss = step.criterion(outputs, labels)
            step.optimizer.zero_grad(set_to_none=True)
            step.scaler.scale(loss).backward()
            step.scaler.step(step.optimizer)
            step.scaler.update()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(f"the loss became {loss_value} in epoch {epoch}: lower lr or use amp=off")
            meter.loss_sum += loss_value * len(labels)
            meter.correct += int((outputs.argmax(1) == labels).sum())
            meter.seen += len(labels)
        meter.batches += 1
        meter.data_time += waited
        elapsed = time.perf_counter() - tick
        meter.total_time += elapsed
        if on_step is not None:
            on_step(waited, elapsed)
        if log_interval and meter.batches % log_interval == 0:
            log.info(
                "epoch %d step %d/%d loss %.4f %.1f img/s data wait %.0f%% eta %s",
                epoch,
                meter.batches,
                total,
                meter.loss_sum / max(meter.seen, 1),
                meter.seen / max(meter.total_time, 1e-9),
                100 * meter.data_time / max(meter.total_time, 1e-9),
                clock((total - meter.batches) * meter.total_time / meter.batches),
            )
        if distributed.any_true(stop.requested):
            return False
        tick = time.perf_counter()
    return True


@torch.no_grad()
def evaluate(step: Step, loader, bad: BadFiles) -> dict:
    """Loss and accuracy over the whole loader (all ranks' shards summed)."""
    step.model.eval()
    meter = Meter()
    criterion = nn.CrossEntropyLoss()  # no label smoothing: report the true loss
    for images, labels, bad_indices in loader:
        bad.add(bad_indices)
        if images is None:
            continue
        images, labels = _to_device(images, labels, step)
        with autocast(step.device, step.amp_dtype):
            outputs = step.model(images)
        meter.loss_sum += criterion(outputs.float(), labels).item() * len(labels)
        meter.correct += int((outputs.argmax(1) == labels).sum())
        meter.seen += len(labels)
    loss, correct, seen = distributed.all_sum([meter.loss_sum, meter.correct, meter.seen])
    return {"loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1), "count": int(seen)}
