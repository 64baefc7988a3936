"""Checkpoints: written atomically every epoch and on SIGTERM, resumed on start; the best weights.

SageMaker syncs ``/opt/ml/checkpoints`` to S3 (and back on a spot restart); StopTrainingJob
and spot interruptions send SIGTERM about 120 s before SIGKILL (``train.stop``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from model_artifact import atomic_write
from train import distributed
from train.config import OPERATIONAL
from train.failure import TrainingError
from train.loop import Step
from train.progress import Meter

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


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


@dataclass
class Record:
    """The job's record so far: one metrics record per finished epoch, and the best epoch."""

    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": None, "score": -1.0})


def save_resumable(folder: Path, identity: dict, epoch: int, meter: Meter, step: Step, record: Record) -> Path:
    """Write the resumable state (rank 0 only): ``epoch`` is the next to (continue to) train."""
    state = {
        "identity": identity,
        "epoch": epoch,
        "meter": meter.as_dict(),
        "model": step.net.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scaler": step.scaler.state_dict(),
        "history": record.history,
        "best": record.best,
    }
    path = save(folder, state)
    log.info("checkpoint saved: %s (epoch %d, %d batches into it)", path, epoch + 1, meter.batches)
    return path


def resume(folder: Path, identity: dict, step: Step, is_main: bool) -> tuple[int, Meter, Record] | None:
    """Rank 0's checkpoint, broadcast and loaded into ``step`` on every rank; None: start fresh.

    Returns the epoch to (continue to) train, its meter so far, and the record of the epochs before.
    """
    state = distributed.broadcast(load(folder, identity) if is_main else None)
    if state is None:
        return None
    step.net.load_state_dict(state["model"])
    step.optimizer.load_state_dict(state["optimizer"])
    step.scaler.load_state_dict(state["scaler"])
    return state["epoch"], Meter(**state["meter"]), Record(state["history"], state["best"])


def save_best(folder: Path, net: nn.Module) -> Path:
    """Keep ``net``'s weights as the best so far."""
    return save(folder, net.state_dict(), BEST_FILE)


def load_best(folder: Path, net: nn.Module, is_main: bool) -> None:
    """Load the best weights into ``net`` on every rank (rank 0 reads them)."""
    state = torch.load(folder / BEST_FILE, map_location="cpu", weights_only=True) if is_main else None
    net.load_state_dict(distributed.broadcast(state))
