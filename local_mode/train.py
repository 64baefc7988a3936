"""Train with the training image through the SageMaker Python SDK v2.

    python -m local_mode.train --image byoc-classifier-training:latest --data data/sample \\
        [--instance-type local|local_gpu|ml.g5.xlarge] [--instance-count 2] [--hp epochs=3 ...]

The same code trains in the cloud: pass an ECR image URI, ``s3://`` data, an ``ml.*``
instance type, ``--role`` and ``--output s3://...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from local_mode import session as local
from train.metrics import METRIC_DEFINITIONS

CHANNELS = ("training", "validation", "test")


def channels_of(data: str) -> dict[str, str]:
    """``{channel: uri}`` for the channel folders under a local folder or an S3 prefix."""
    if data.startswith("s3://"):
        return {c: f"{data.rstrip('/')}/{c}" for c in CHANNELS}
    root = Path(data).resolve()
    found = {c: f"file://{root / c}" for c in CHANNELS if (root / c).is_dir()}
    if "training" not in found:
        raise local.PreflightError(f"no training folder in {root}")
    return found


def fit(image_uri: str, data: str, hyperparameters: dict, instance_type: str = "local", instance_count: int = 1,
        role: str = local.DUMMY_ROLE, output_path: str | None = None, session=None) -> str:  # fmt: skip
    """Run a training job; returns the model artifact's URI (model.tar.gz)."""
    from sagemaker.estimator import Estimator

    is_local = instance_type.startswith("local")
    if is_local:
        local.preflight(instance_type)
    estimator = Estimator(
        image_uri=image_uri, role=role, instance_count=instance_count, instance_type=instance_type,
        hyperparameters=hyperparameters, metric_definitions=METRIC_DEFINITIONS, output_path=output_path,
        sagemaker_session=session or (local.local_session() if is_local else None),
    )  # fmt: skip
    estimator.fit(channels_of(data), wait=True, logs=True)
    return estimator.model_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--data", required=True, help="folder or s3:// prefix with training/ [validation/ test/]")
    parser.add_argument("--instance-type", default="local")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--role", default=local.DUMMY_ROLE)
    parser.add_argument("--output", help="file:// or s3:// folder for model.tar.gz")
    parser.add_argument("--hp", nargs="*", default=[], help="hyperparameters as key=value")
    args = parser.parse_args(argv)
    hps = dict(item.split("=", 1) for item in args.hp)
    try:
        print(fit(args.image, args.data, hps, args.instance_type, args.instance_count, args.role, args.output))
    except local.PreflightError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
