"""Metrics: the per-epoch lines and the tuner's regexes (``common.metrics``), JSON and a PNG.

The line format and ``METRIC_DEFINITIONS`` live in ``common.metrics``, which the SDK side
(estimators, the tuner, the local search) imports without torch; they are re-exported here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.metrics import EPOCH_KEYS, METRIC_DEFINITIONS, OBJECTIVE_METRIC, epoch_line, final_line, int8_line

__all__ = [
    "EPOCH_KEYS", "METRIC_DEFINITIONS", "OBJECTIVE_METRIC", "epoch_line", "final_line", "int8_line", "write_report",
]  # fmt: skip
log = logging.getLogger(__name__)


def write_report(folder: Path, history: list[dict], final: dict) -> None:
    """``metrics.json`` and ``training_curve.png`` in the output data folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"history": history, "final": final}, indent=2))
    try:
        _plot(folder / "training_curve.png", history)
    except Exception:  # a plot must never fail a finished training job
        log.exception("could not draw the training curve")


def _plot(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "--o")):
        loss_ax.plot(epochs, [r.get(f"{split}_loss") for r in history], style, label=split)
        acc_ax.plot(epochs, [r.get(f"{split}_accuracy") for r in history], style, label=split)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
