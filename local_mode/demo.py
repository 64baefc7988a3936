"""``make demo``: the whole workflow in SageMaker local mode on the embedded sample dataset.

Trains with the training image through SDK v2's ``Estimator`` (``instance_type="local"``),
deploys model.tar.gz with the CPU serving image, classifies every held-out test image
through the endpoint, prints predictions and accuracy, and removes the endpoint, the
containers and the temporary folders. ``make demo`` builds the images first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from local_mode import deploy, train
from local_mode import session as local

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("ball", "box", "cone", "ring")
# ResNet18 from scratch at 64 px: learns the 4 sample classes in about a minute on 2 cores.
HYPERPARAMETERS = {
    "epochs": "12", "batch-size": "16", "lr": "0.005", "lr-warmup-epochs": "1", "momentum": "0.9",
    "image-size": "64", "crop-min-scale": "0.4", "pretrained": "false", "log-interval": "0",
}  # fmt: skip


def classify_all(predictor, test_dir: Path) -> tuple[float, list[str]]:
    """Send every test image to the endpoint; returns the accuracy and one line per class."""
    files = sorted(p for p in test_dir.rglob("*") if p.is_file())
    correct, shown = 0, []
    for path in files:
        prediction = deploy.classify(predictor, path, top_k=2)["predictions"][0]
        correct += prediction["label"] == path.parent.name
        if path.stem.endswith("_000"):
            top = ", ".join(f"{t['label']} {t['probability']:.0%}" for t in prediction["top_k"])
            shown.append(f"  {path.relative_to(test_dir)}: {prediction['label']} (top 2: {top})")
    return correct / len(files), shown


def run(data: Path, out: Path, training_image: str, serving_image: str) -> tuple[float, list[str]]:
    """Train, deploy, classify, tear down; returns the test accuracy and a few predictions."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # local mode needs a region, never calls it
    session = local.local_session(out / "container_root")
    try:
        started = time.monotonic()
        output = f"file://{out / 'artifacts'}"
        model_data = train.fit(training_image, str(data), HYPERPARAMETERS, output_path=output, session=session)
        print(f"\ntrained in local mode in {time.monotonic() - started:.0f} s: {model_data}", flush=True)
        started = time.monotonic()
        predictor = deploy.deploy(serving_image, model_data, session=session)
        print(f"endpoint up in {time.monotonic() - started:.0f} s; classifying the test images", flush=True)
        try:
            return classify_all(predictor, data / "test")
        finally:
            predictor.delete_endpoint()
    finally:
        local.cleanup(session)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "demo-local")
    parser.add_argument("--training-image", default="byoc-classifier-training:latest")
    parser.add_argument("--serving-image", default="byoc-classifier-serving-cpu:latest")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        from train import sample_data  # generating needs Pillow only; the training runs in the image

        print(f"generated the sample dataset in {args.data}: {sample_data.generate(args.data)}")
    started = time.monotonic()
    try:
        accuracy, shown = run(args.data.resolve(), args.out.resolve(), args.training_image, args.serving_image)
    except (local.PreflightError, train.TrainingFailed) as exc:
        sys.exit(f"error: {exc}")
    print("\npredictions through the local endpoint (one test image per class):", *shown, sep="\n")
    print(f"test accuracy {accuracy:.0%} (chance {1 / len(CLASSES):.0%}); demo took {time.monotonic() - started:.0f} s")
    print(f"model.tar.gz and output.tar.gz (metrics, training curve): {args.out / 'artifacts'}")


if __name__ == "__main__":
    main()
