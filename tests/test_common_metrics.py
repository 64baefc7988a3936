"""``common.metrics``: the metric-line contract, importable without torch and shared by the trainer."""

from __future__ import annotations

import re
import subprocess
import sys

from common import metrics
from tests.conftest import REPO


def test_the_trainer_re_exports_the_contract():
    from train import metrics as train_metrics

    for name in ("EPOCH_KEYS", "METRIC_DEFINITIONS", "OBJECTIVE_METRIC", "epoch_line", "final_line"):
        assert getattr(train_metrics, name) is getattr(metrics, name)


def test_the_objective_is_one_of_the_definitions_and_reads_an_epoch_line():
    regex = next(d["Regex"] for d in metrics.METRIC_DEFINITIONS if d["Name"] == metrics.OBJECTIVE_METRIC)
    line = metrics.epoch_line({"epoch": 2, "val_accuracy": 0.75, "val_loss": 0.5})
    assert float(re.search(regex, line).group(1)) == 0.75
    assert metrics.final_line({"best_epoch": 2}) == "final best_epoch=2"


def test_common_imports_only_the_standard_library():
    """The CPU serving image and .venv-sdk3 have no torch: ``common`` must import without it."""
    code = (
        "import sys; import common.cpus, common.images, common.metrics; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', 'PIL', 'train', 'serve'}); "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
