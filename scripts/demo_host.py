"""``make demo`` on the host: train on the embedded sample dataset through ``train``, then classify.

Lays out ``build/demo`` like SageMaker's ``/opt/ml``, runs the training image's entry point
(the sagemaker-training toolkit with our launcher) against it, loads the artifact as the
serving side will, and prints predictions and accuracy for the held-out test images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import model_artifact
from local_mode.demo import HYPERPARAMETERS
from train import sample_data

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
JOB = REPO / "build" / "demo"


def lay_out_job() -> None:
    """``build/demo`` as ``/opt/ml``: config files and one folder per channel."""
    shutil.rmtree(JOB, ignore_errors=True)
    config = JOB / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(HYPERPARAMETERS))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text(json.dumps({c: {} for c in sample_data.SPLITS}))
    for channel in sample_data.SPLITS:
        shutil.copytree(SAMPLE / channel, JOB / "input" / "data" / channel)


def classify_test_images() -> float:
    """Predict every test image with the trained artifact; print a few, return accuracy."""
    model, meta = model_artifact.load(JOB / "model")
    transform = model_artifact.eval_transform(meta.preprocessing)
    files = sorted((SAMPLE / "test").rglob("*.*"))
    correct = 0
    for i, path in enumerate(files):
        image = model_artifact.decode_image(path, meta.preprocessing.resize_size)
        with torch.no_grad():
            probs = model(transform(image).unsqueeze(0)).softmax(1)[0]
        label = meta.class_names[int(probs.argmax())]
        correct += label == path.parent.name
        if i % 15 == 0:
            print(f"  {path.relative_to(SAMPLE)}: {label} ({probs.max():.0%})")
    return correct / len(files)


def main() -> None:
    if not SAMPLE.is_dir():
        counts = sample_data.generate(SAMPLE)
        print(f"generated the sample dataset in {SAMPLE}: {counts}")
    lay_out_job()
    start = time.monotonic()
    env = os.environ | {"SAGEMAKER_BASE_DIR": str(JOB), "PYTHONUNBUFFERED": "1"}
    code = subprocess.call([str(Path(sys.executable).parent / "train")], env=env)
    if code:
        print(f"training failed: {(JOB / 'output' / 'failure').read_text()}", file=sys.stderr)
        sys.exit(code)
    print(f"\ntrained in {time.monotonic() - start:.0f} s; artifact in {JOB / 'model'}; predictions:")
    accuracy = classify_test_images()
    print(f"test accuracy {accuracy:.0%} (chance {1 / len(sample_data.CLASSES):.0%})")
    print(f"metrics and training curve: {JOB / 'output' / 'data'}")


if __name__ == "__main__":
    main()
