"""The metric-line contract: one stable ``key=value`` line per epoch and the regexes that read it.

The trainer prints ``epoch_line`` every epoch and ``final_line`` at the end; SageMaker reads
them with ``METRIC_DEFINITIONS`` (pass it to ``Estimator(metric_definitions=...)`` or the
tuner), and the local search reads the same lines with the same regexes. The demo's progress
bar (local_mode/demo.py) and the search's trial monitor (tuning/trial_log.py) also pick the
epoch number out of these lines.
"""

from __future__ import annotations

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
    {"Name": "int8:accuracy", "Regex": rf"\bint8_accuracy={_NUMBER}"},
    {"Name": "int8:fp32_accuracy", "Regex": rf"\bfp32_accuracy={_NUMBER}"},
    {"Name": "int8:agreement", "Regex": rf"\bint8_agreement={_NUMBER}"},
]
OBJECTIVE_METRIC = "validation:accuracy"


def _format(record: dict) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


def epoch_line(record: dict) -> str:
    """``epoch=3 train_loss=0.41 ... epoch_time=12.3`` (values rounded to 6 significant digits)."""
    return _format({"epoch": record["epoch"]} | {k: record[k] for k in EPOCH_KEYS if k in record})


def int8_line(check) -> str:
    """``int8 int8_accuracy=0.90 fp32_accuracy=0.91 int8_agreement=0.98 int8_accuracy_drop=1`` for a
    ``model_artifact.Int8Check`` (the drop in points; negative where int8 did better)."""
    return "int8 " + _format(
        {
            "int8_accuracy": check.int8_accuracy,
            "fp32_accuracy": check.fp32_accuracy,
            "int8_agreement": check.agreement,
            "int8_accuracy_drop": round(check.accuracy_drop, 4),
            "images": check.images,
        }
    )


def final_line(final: dict) -> str:
    """``final best_epoch=4 best_val_accuracy=0.91 test_loss=... test_accuracy=...``."""
    return "final " + _format(final)
