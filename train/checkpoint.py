"""Checkpoints: written atomically every epoch and on SIGTERM, resumed on start.

SageMaker syncs ``/opt/ml/checkpoints`` to S3 (and back on a spot restart); StopTrainingJob
and spot interruptions send SIGTERM about 120 s before SIGKILL.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import torch

from model_artifact import atomic_write
from train.failure import TrainingError

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
# A checkpoint made with other values of these cannot be resumed.
IDENTITY_KEYS = ("model", "image_size", "class_names", "world_size")


class StopRequest:
    """Set by SIGTERM/SIGINT; the training loop checks it after every step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT from now on (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        log.warning("received %s: stopping after this step and saving a checkpoint", signal.Signals(signum).name)
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


def save(folder: Path, state: dict, name: str = CHECKPOINT_FILE) -> Path:
    """Write ``state`` to ``folder/name`` atomically (readers see the old or the new file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load(folder: Path, identity: dict, name: str = CHECKPOINT_FILE) -> dict | None:
    """The checkpoint in ``folder`` if there is one; refuses one from another configuration."""
    path = folder / name
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    for key in IDENTITY_KEYS:
        if key in identity and state.get("identity", {}).get(key) != identity[key]:
            raise TrainingError(
                f"checkpoint {path} was made with {key}={state.get('identity', {}).get(key)!r}, "
                f"this job has {key}={identity[key]!r}: use another checkpoint location or delete it"
            )
    return state
