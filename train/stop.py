"""Stopping on SIGTERM: the signal sets a flag; the ranks vote on it so they all stop at the same step.

SageMaker's StopTrainingJob and spot interruptions send SIGTERM about 120 s before SIGKILL;
the job stops, keeps a checkpoint and exits well inside that.
"""

from __future__ import annotations

import logging
import signal

from train import distributed

log = logging.getLogger(__name__)
# On GPUs (NCCL) the vote is an all-reduce that synchronises the GPU, so it is held every
# VOTE_EVERY steps and at an epoch's last step (20 GPU steps take seconds, inside SageMaker's
# 120 s). On CPUs (gloo) a step can take seconds and the vote costs little next to it: every
# step. A single process has nobody to agree with: it stops after the step in progress.
VOTE_EVERY = 20


class StopRequest:
    """Set by SIGTERM/SIGINT; the training loop votes on it every few steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT from now on (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s: stopping and saving a checkpoint", name)
        self.signal = signum

    @property
    def requested(self) -> bool:
        """This process got the signal."""
        return self.signal is not None

    def agreed(self) -> bool:
        """True on every rank if any rank got the signal (a collective: all ranks call it together)."""
        return distributed.any_true(self.requested)

    def vote(self, step: int, last: int) -> bool:
        """After training step ``step`` of ``last``: whether all ranks stop now (votes only when due)."""
        if not distributed.is_active():
            return self.requested
        due = step % VOTE_EVERY == 0 or step == last or not distributed.on_gpus()
        return due and self.agreed()
