"""Progress of a training epoch: its running sums (``Meter``) and the step log line (``MetricLogger``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from train import distributed

log = logging.getLogger("train.loop")  # the name the step lines have always carried


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

    def add(self, loss: float, correct: int, count: int) -> None:
        """One batch of ``count`` images: its mean loss and correct predictions."""
        self.loss_sum += loss * count
        self.correct += correct
        self.seen += count

    def summary(self, world_size: int) -> dict:
        """Global loss/accuracy (summed over ranks), throughput and data-wait share."""
        loss, correct, seen = distributed.all_sum([self.loss_sum, self.correct, self.seen])
        return {
            "loss": loss / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "img_per_sec": self.seen * world_size / max(self.total_time, 1e-9),
            "data_wait": self.data_time / max(self.total_time, 1e-9),
        }


def clock(seconds: float) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class MetricLogger:
    """Times the steps of one training epoch into ``meter`` and logs a line every ``interval`` steps.

    ``on_step(waited, elapsed)``, if given, hears each step's data wait and wall time.
    """

    def __init__(self, meter: Meter, epoch: int, interval: int, on_step: Callable[[float, float], None] | None = None):
        self.meter, self.epoch, self.interval, self.on_step = meter, epoch, interval, on_step
        self.total = 0  # set by log_every: the epoch's batches, a resumed epoch's earlier ones included
        self._started = self._waited = 0.0

    def log_every(self, loader: Iterable) -> Iterator:
        """The loader's batches, each one's wait timed; call ``step_done`` after each step."""
        self.total = self.meter.batches + len(loader)
        tick = time.perf_counter()
        for batch in loader:
            self._started, self._waited = tick, time.perf_counter() - tick
            yield batch
            tick = time.perf_counter()

    def step_done(self) -> None:
        """Count the step just taken: its times into the meter and ``on_step``, and the line when due."""
        elapsed = time.perf_counter() - self._started
        self.meter.batches += 1
        self.meter.data_time += self._waited
        self.meter.total_time += elapsed
        if self.on_step is not None:
            self.on_step(self._waited, elapsed)
        if self.interval and self.meter.batches % self.interval == 0:
            self.log_line()

    def log_line(self) -> None:
        """``epoch 2 step 40/150 loss 1.2345 210.3 img/s data wait 3% eta 0:52``."""
        m = self.meter
        log.info(
            "epoch %d step %d/%d loss %.4f %.1f img/s data wait %.0f%% eta %s",
            self.epoch,
            m.batches,
            self.total,
            m.loss_sum / max(m.seen, 1),
            m.seen / max(m.total_time, 1e-9),
            100 * m.data_time / max(m.total_time, 1e-9),
            clock((self.total - m.batches) * m.total_time / m.batches),
        )
