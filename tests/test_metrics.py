"""The metric lines and the tuner's regexes, checked against real training output."""

from __future__ import annotations

import json
import re

import pytest

from train import metrics


def test_epoch_line_format_is_stable():
    line = metrics.epoch_line({"epoch": 3, "train_loss": 0.123456789, "val_accuracy": 0.5, "img_per_sec": 1234.5})
    assert line == "epoch=3 train_loss=0.123457 val_accuracy=0.5 img_per_sec=1234.5"


def test_regexes_do_not_confuse_similar_names():
    line = metrics.epoch_line(
        {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.1, "val_loss": 0.7, "val_accuracy": 0.3}
    )
    found = {d["Name"]: re.search(d["Regex"], line) for d in metrics.METRIC_DEFINITIONS}
    assert float(found["train:loss"].group(1)) == 0.9 and float(found["validation:loss"].group(1)) == 0.7
    assert float(found["validation:accuracy"].group(1)) == 0.3 and found["test:loss"] is None


def test_small_numbers_in_exponent_form_match():
    line = metrics.epoch_line({"epoch": 9, "lr": 1e-05, "train_loss": 1.5e-07})
    regex = next(d["Regex"] for d in metrics.METRIC_DEFINITIONS if d["Name"] == "train:loss")
    assert float(re.search(regex, line).group(1)) == 1.5e-07


@pytest.mark.slow
def test_every_regex_matches_real_training_output(trained_job):
    base, result = trained_job
    report = json.loads((base / "output" / "data" / "metrics.json").read_text())
    keys = {
        "train:loss": "train_loss",
        "train:accuracy": "train_accuracy",
        "validation:loss": "val_loss",
        "validation:accuracy": "val_accuracy",
        "train:throughput": "img_per_sec",
        "train:data_wait": "data_wait",
    }
    int8 = json.loads((base / "model" / "artifact.json").read_text())["int8"]
    int8_keys = {"int8:accuracy": "int8_accuracy", "int8:fp32_accuracy": "fp32_accuracy", "int8:agreement": "agreement"}
    for definition in metrics.METRIC_DEFINITIONS:
        values = [float(v) for v in re.findall(definition["Regex"], result.stdout)]
        if definition["Name"].startswith("int8:"):
            assert values == pytest.approx([int8[int8_keys[definition["Name"]]]], rel=1e-5)
        elif definition["Name"].startswith("test:"):
            assert values == pytest.approx([report["final"][definition["Name"].replace(":", "_")]], rel=1e-5)
        else:
            expected = [r[keys[definition["Name"]]] for r in report["history"]]
            assert values == pytest.approx(expected, rel=1e-5), definition["Name"]
    assert metrics.OBJECTIVE_METRIC in {d["Name"] for d in metrics.METRIC_DEFINITIONS}
