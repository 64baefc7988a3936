"""Metrics: one stable ``key=value`` line per epoch, the tuner's regexes, JSON and a PNG.

The regexes below are the only place that knows the log format besides ``epoch_line``;
pass ``METRIC_DEFINITIONS`` to ``Estimator(metric_definitions=...)`` or the tuner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
_NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"
EPOCH_KEYS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "img_per_sec",
    "data_wait",
    "epoch_time",
)
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"\btrain_loss={_NUMBER}"},
    {"Name": "train:accuracy", "Regex": rf"\btrain_accuracy={_NUMBER}"},
    {"Name": "validation:loss", "Regex": rf"\bval_loss={_NUMBER}"},
    {"Name": "validation:accuracy", "Regex": rf"\bval_accuracy={_NUMBER}"},
    {"Name": "train:throughput", "Regex": rf"\bimg_per_sec={_NUMBER}"},
    {"Name": "train:data_wait", "Regex": rf"\bdata_wait={_NUMBER}"},
    {"Name": "test:loss", "Regex": rf"\btest_loss={_NUMBER}"},
    {"Name": "test:accuracy", "Regex": rf"\btest_accuracy={_NUMBER}"},
]
OBJECTIVE_METRIC = "validation:accuracy"


def _format(record: dict) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


def epoch_line(record: dict) -> str:
    """``epoch=3 train_loss=0.41 ... epoch_time=12.3`` (values rounded to 6 significant digits)."""
    return _format({"epoch": record["epoch"]} | {k: record[k] for k in EPOCH_KEYS if k in record})


def final_line(final: dict) -> str:
    """``final best_epoch=4 best_val_accuracy=0.91 test_loss=... test_accuracy=...``."""
    return "final " + _format(final)


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
