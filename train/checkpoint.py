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
from train.config import OPERATIONAL
from train.failure import TrainingError

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


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


def identity(hyperparameters: dict, class_names: list[str], world_size: int) -> dict:
    """What a checkpoint must match to be resumed: the hyperparameters that shape the result, classes, processes."""
    kept = {k: str(v) for k, v in hyperparameters.items() if k not in OPERATIONAL}
    return {"hyperparameters": kept, "class_names": class_names, "world_size": world_size}


def differences(saved: dict, current: dict) -> list[str]:
    """``lr 0.1 → 0.01``-style descriptions of where two identities differ."""
    saved_hps, current_hps = saved.get("hyperparameters", {}), current.get("hyperparameters", {})
    changed = [f"{k} {saved_hps.get(k)} → {v}" for k, v in sorted(current_hps.items()) if saved_hps.get(k) != v]
    for key in ("class_names", "world_size"):
        if saved.get(key) != current.get(key):
            changed.append(key if key == "class_names" else f"{key} {saved.get(key)} → {current.get(key)}")
    return changed


def load(folder: Path, identity: dict, name: str = CHECKPOINT_FILE) -> dict | None:
    """The checkpoint in ``folder`` if this job wrote it; None (start fresh) if none or another job's.

    A reused checkpoint location (the same ``checkpoint_s3_uri`` for trials of a tuning job)
    holds the state of other hyperparameters: resuming it would train something nobody asked for.
    """
    path = folder / name
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    changed = differences(state.get("identity", {}), identity)
    if changed:
        log.warning(
            "checkpoint %s was written by another configuration (%s): starting fresh; it will be overwritten",
            path, "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else ""),
        )  # fmt: skip
        return None
    return state
