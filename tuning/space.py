"""The search space (the course's by default) and the best-hyperparameters file.

One ``Space`` feeds both searches: ``sagemaker_ranges()`` for SageMaker's tuner and
``suggest()`` for an Optuna trial. The best-hyperparameters file is what both write and
what ``python -m local_mode.fit --hyperparameters-file`` reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from common.images import IMAGE_EXTENSIONS
from common.metrics import OBJECTIVE_METRIC


@dataclass(frozen=True)
class Space:
    """lr and momentum ranges (inclusive) and the batch sizes to choose from."""

    lr: tuple[float, float] = (0.001, 0.1)
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    momentum: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self):
        for name, (low, high) in (("lr", self.lr), ("momentum", self.momentum)):
            if not 0 < low <= high:
                raise ValueError(f"{name} range {low}..{high}: need 0 < low <= high")
        if self.momentum[1] >= 1:
            raise ValueError(f"momentum range ends at {self.momentum[1]}: SGD momentum must stay below 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes {list(self.batch_sizes)}: need at least one, each >= 1")

    def __str__(self) -> str:
        return (
            f"lr {self.lr[0]:g}-{self.lr[1]:g}, batch-size {list(self.batch_sizes)}, "
            f"momentum {self.momentum[0]:g}-{self.momentum[1]:g}"
        )

    def contains(self, hyperparameters: dict) -> bool:
        """Whether tuned values (strings or numbers) lie in this space."""
        lr, momentum = float(hyperparameters["lr"]), float(hyperparameters["momentum"])
        return (
            self.lr[0] <= lr <= self.lr[1]
            and self.momentum[0] <= momentum <= self.momentum[1]
            and int(hyperparameters["batch-size"]) in self.batch_sizes
        )


COURSE_SPACE = Space()  # the course's tuner: lr 0.001-0.1, batch size 32-512, momentum 0.5-0.9
TUNED = ("lr", "batch-size", "momentum")


def sagemaker_ranges(space: Space, sdk: int = 2) -> dict:
    """SageMaker's parameter ranges (scaling "Auto", as the course's tuner), as SDK ``sdk``'s classes."""
    if sdk >= 3:
        from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter
    else:
        from sagemaker.tuner import CategoricalParameter, ContinuousParameter

    return {
        "lr": ContinuousParameter(*space.lr),
        "batch-size": CategoricalParameter(list(space.batch_sizes)),
        "momentum": ContinuousParameter(*space.momentum),
    }


def suggest(trial, space: Space) -> dict[str, str]:
    """One trial's tuned hyperparameters; lr log-uniform (it spans decades), as strings."""
    return {
        "lr": f"{trial.suggest_float('lr', *space.lr, log=True):.6g}",
        "batch-size": str(trial.suggest_categorical("batch-size", list(space.batch_sizes))),
        "momentum": f"{trial.suggest_float('momentum', *space.momentum):.6g}",
    }


def training_images(data: str) -> int | None:
    """Images in a local data folder's training channel (None for S3 or no folder)."""
    root = Path(data) / "training"
    if data.startswith("s3://") or not root.is_dir():
        return None
    if (root / "train").is_dir():  # the course layout: training/{train,valid,test}
        root = root / "train"
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def fit_to_data(space: Space, n_train: int | None) -> tuple[Space, str | None]:
    """Drop batch sizes above the training set's size: such a batch is the whole epoch in
    one step, so it would measure the step count, not the batch size. Returns a note."""
    if not n_train:
        return space, None
    kept = tuple(b for b in space.batch_sizes if b <= n_train)
    if kept == space.batch_sizes:
        return space, None
    dropped = sorted(set(space.batch_sizes) - set(kept))
    if not kept:
        raise ValueError(f"every batch size in {list(space.batch_sizes)} exceeds the {n_train} training images")
    return replace(space, batch_sizes=kept), f"batch sizes {dropped} exceed the {n_train} training images: dropped"


def write_best(path: Path, hyperparameters: dict, value: float, source: dict) -> None:
    """``best-hyperparameters.json``: all hyperparameters of the best trial, as strings."""
    best = {
        "hyperparameters": {k: str(v) for k, v in hyperparameters.items()},
        "tuned": list(TUNED),
        "objective": {"metric": OBJECTIVE_METRIC, "type": "Maximize", "value": value},
        "source": source,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(best, indent=2) + "\n")


def read_hyperparameters(path: Path) -> dict[str, str]:
    """Hyperparameters from a best-hyperparameters file, or from a flat JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read hyperparameters from {path}: {exc}") from None
    hps = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(hps, dict) or any(isinstance(v, dict | list) for v in hps.values()):
        raise ValueError(f"{path}: expected {{'hyperparameters': {{key: value}}}} or a flat {{key: value}} object")
    return {str(k): str(v) for k, v in hps.items()}
