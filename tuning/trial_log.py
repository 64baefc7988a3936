"""A trial's streamed output: routed per thread, written to its log, read for the objective.

The SDK prints a local job's output (docker-compose's, prefixed with the container name) on
``sys.stdout``. During a search, ``Router`` is ``sys.stdout`` and sends each trial thread's
lines to that trial's ``Monitor``, which reads every epoch's ``val_accuracy`` with the regex
the tuner uses, reports it to Optuna and stops the job when the pruner says so.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Callable, Iterator

from common.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC

_OBJECTIVE = re.compile(next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == OBJECTIVE_METRIC))
_EPOCH = re.compile(r"\bepoch=([0-9]+)\b")  # not best_epoch=: `_` is a word character


def epoch_objective(line: str) -> tuple[int, float] | None:
    """``(epoch, val_accuracy)`` from a per-epoch metric line, else None."""
    epoch, value = _EPOCH.search(line), _OBJECTIVE.search(line)
    return (int(epoch.group(1)), float(value.group(1))) if epoch and value else None


class Monitor:
    """One trial's streamed output: written to its log, epochs reported, pruning decided."""

    def __init__(self, trial, log: io.TextIOBase, last_epoch: int, stop: Callable[[], None], say=print):
        self.trial, self.log, self.last_epoch, self.stop, self.say = trial, log, last_epoch, stop, say
        self.history: list[float] = []
        self.pruned_at: int | None = None
        self._partial = ""

    def write(self, text: str) -> None:
        self.log.write(text)
        self.log.flush()
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        found = epoch_objective(line)
        if found is None or self.pruned_at is not None:
            return
        epoch, value = found
        self.history.append(value)
        self.trial.report(value, epoch)
        self.say(f"trial {self.trial.number}: epoch {epoch}/{self.last_epoch} val_accuracy={value:.4g}")
        if epoch < self.last_epoch and self.trial.should_prune():
            self.pruned_at = epoch
            self.say(f"trial {self.trial.number}: pruned after epoch {epoch}, stopping its container")
            self.stop()


class Router(io.TextIOBase):
    """``sys.stdout`` during a search: each trial thread's writes go to that trial's sink."""

    def __init__(self, default):
        self.default, self.sinks, self.lock = default, {}, threading.Lock()

    def write(self, text: str) -> int:
        sink = self.sinks.get(threading.get_ident())
        if sink:
            sink(text)
        else:
            with self.lock:
                self.default.write(text)
        return len(text)

    def flush(self) -> None:
        self.default.flush()

    def say(self, text: str) -> None:
        """One progress line on the real stdout, from any thread."""
        with self.lock:
            self.default.write(text + "\n")
            self.default.flush()

    @contextlib.contextmanager
    def routing(self, sink: Callable[[str], None]) -> Iterator[None]:
        ident = threading.get_ident()
        self.sinks[ident] = sink
        try:
            yield
        finally:
            self.sinks.pop(ident, None)
