"""Train with the training image through the SageMaker Python SDK v3's ``ModelTrainer``, locally or in the cloud.

    .venv-sdk3/bin/python -m local_mode.fit_v3 --image byoc-classifier-training:latest --data data/sample \\
        [--instance-type local_cpu|local_gpu] [--instance-count 2] [--output DIR] [--hp epochs=3 ...] \\
        [--source-dir examples/script_mode --entry-script train_model.py [--requirements requirements.txt]]

In the cloud: an ECR image, ``--data s3://...``, an ``ml.*`` instance type, ``--role``, ``--output s3://...``,
and optionally ``--spot``, ``--max-run``, ``--max-wait``, ``--checkpoint-s3-uri`` (as ``local_mode.fit``);
it prints the S3 URI of model.tar.gz once the job has completed.

Runs from the repository root in ``.venv-sdk3`` (``make venv-sdk3``: SDK v3 conflicts with v2), which has
no torch. Without ``source_code`` v3 starts the image with its own entrypoint and no argument, through
docker-compose, and leaves the job's containers, the ``sagemaker-local`` network and its container root
behind: ``fit`` removes them and keeps model.tar.gz and output.tar.gz in ``output_dir``. No call to AWS:
telemetry is off and credentials are not looked up (an ECR image that is not pulled yet needs them for
the SDK's ECR login: pull it first, or set AWS_EC2_METADATA_DISABLED=false on EC2 with an instance role).
With ``--source-dir``/``--entry-script`` (``source_code=SourceCode(...)``) v3 replaces the image's entrypoint
with its own ``bash sm_train.sh``, which runs the script with its own drivers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common.metrics import METRIC_DEFINITIONS  # pure Python: imports no torch
from local_mode.fit import CloudLimits, TrainingFailed, channels_of, hyperparameters_of  # shared with SDK v2
from local_mode.session import PreflightError, offline, preflight, remove_jobs


def metric_definitions() -> list:
    """The training image's metric lines (common/metrics.py), as v3's ``MetricDefinition`` objects."""
    from sagemaker.core.training.configs import MetricDefinition

    return [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRIC_DEFINITIONS]


def _train(image_uri: str, channels: dict[str, str], hyperparameters: dict, compute: dict, root: Path,
           source: dict | None = None) -> None:  # fmt: skip
    """Build the ``ModelTrainer`` and run it to completion (the SDK raises when the container fails).

    ``source``: ``SourceCode``'s fields (script mode), else the image's built-in trainer.
    """
    from sagemaker.core.training.configs import Compute, InputData, SourceCode
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    trainer = ModelTrainer(
        training_image=image_uri, training_mode=Mode.LOCAL_CONTAINER, local_container_root=str(root),
        compute=Compute(**compute), hyperparameters=dict(hyperparameters),
        base_job_name="byoc-classifier", source_code=SourceCode(**source) if source else None,
    )  # fmt: skip
    if not source:  # a script's metric lines are its own
        trainer = trainer.with_metric_definitions(metric_definitions())
    inputs = [InputData(channel_name=name, data_source=path) for name, path in channels.items()]
    trainer.train(input_data_config=inputs, wait=True, logs=True)


def _failure(root: Path) -> str:
    """The failure file the job wrote to /opt/ml/output (the SDK collects it into ``artifacts/``), or ''."""
    failure = root / "artifacts" / "output" / "failure"
    return failure.read_text()[:1024] if failure.exists() else ""


def _collect(root: Path, output_dir: Path) -> str:
    """Copy the job's model.tar.gz and output.tar.gz to ``output_dir``; raise if the job wrote a failure."""
    if reason := _failure(root):
        raise TrainingFailed(reason)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.tar.gz", "output.tar.gz"):
        shutil.copyfile(root / "compressed_artifacts" / name, output_dir / name)
    return str((output_dir / "model.tar.gz").resolve())


def fit(image_uri: str, data: str, hyperparameters: dict, instance_count: int = 1,
        output_dir: str | Path = "build/train-v3", instance_type: str = "local_cpu",
        source: dict | None = None) -> str:  # fmt: skip
    """Run a local training job with the image; returns the path of its model.tar.gz in ``output_dir``."""
    preflight("local_gpu" if instance_type == "local_gpu" else "local", sdk=3)
    channels = {name: uri.removeprefix("file://") for name, uri in channels_of(data).items()}
    root = Path(tempfile.mkdtemp(prefix="sagemaker-v3-"))
    compute = {"instance_type": instance_type, "instance_count": instance_count}
    try:
        try:
            with offline():
                _train(image_uri, channels, hyperparameters, compute, root, source)
        except RuntimeError as exc:  # the SDK says only "Process exited with code: N"
            raise TrainingFailed(_failure(root) or str(exc)) from exc
        return _collect(root, Path(output_dir))
    finally:
        remove_jobs(root)


def cloud_trainer(image_uri: str, hyperparameters: dict, instance_type: str, instance_count: int, role: str,
                  output: str, limits: CloudLimits):  # fmt: skip
    """The ``ModelTrainer`` of a SageMaker training job with the image's built-in trainer (also what
    ``tuning.tune_v3`` tunes)."""
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    if not output.startswith("s3://"):
        raise ValueError("a cloud job writes --output to an s3:// folder")
    checkpoints = CheckpointConfig(s3_uri=limits.checkpoint_s3_uri, local_path="/opt/ml/checkpoints")
    return ModelTrainer(
        training_image=image_uri, training_mode=Mode.SAGEMAKER_TRAINING_JOB, role=role,
        compute=Compute(instance_type=instance_type, instance_count=instance_count,
                        enable_managed_spot_training=limits.spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=limits.max_run,
                                             max_wait_time_in_seconds=limits.wait),
        checkpoint_config=checkpoints if limits.checkpoint_s3_uri else None,
        output_data_config=OutputDataConfig(s3_output_path=output), hyperparameters=dict(hyperparameters),
        base_job_name="byoc-classifier",
    ).with_metric_definitions(metric_definitions())  # fmt: skip


def s3_inputs(data: str) -> list:
    """v3's ``InputData`` for the channel folders under an S3 prefix."""
    from sagemaker.core.training.configs import InputData

    if not data.startswith("s3://"):
        raise ValueError("a cloud job reads --data from an s3:// prefix (with training/ [validation/ test/])")
    return [InputData(channel_name=name, data_source=uri) for name, uri in channels_of(data).items()]


def fit_cloud(image_uri: str, data: str, hyperparameters: dict, instance_type: str, instance_count: int, role: str,
              output: str, limits: CloudLimits) -> str:  # fmt: skip
    """Run a SageMaker training job with the image on the channels under an S3 prefix, until it
    completes; returns its model.tar.gz URI (the SDK raises when the job fails)."""
    trainer = cloud_trainer(image_uri, hyperparameters, instance_type, instance_count, role, output, limits)
    trainer.train(input_data_config=s3_inputs(data), wait=True, logs=False)
    return trainer._latest_training_job.model_artifacts.s3_model_artifacts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--data", required=True, help="folder with training/ [validation/ test/]")
    parser.add_argument("--instance-type", default="local_cpu", help="local_cpu, local_gpu or ml.* (cloud)")
    parser.add_argument("--role", help="cloud: the SageMaker execution role ARN")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--output", help="local: folder for model.tar.gz and output.tar.gz (default build/train-v3);"
                        " cloud: s3:// folder")  # fmt: skip
    parser.add_argument("--hp", nargs="*", default=[], help="hyperparameters as key=value")
    parser.add_argument("--source-dir", help="script mode: the folder with the user's script")
    parser.add_argument("--entry-script", help="script mode: the script, relative to --source-dir")
    parser.add_argument("--requirements", help="script mode: a requirements file in --source-dir to install")
    CloudLimits.add_arguments(parser)
    args = parser.parse_args(argv)
    fields = {"source_dir": args.source_dir, "entry_script": args.entry_script, "requirements": args.requirements}
    source = {k: v for k, v in fields.items() if v} or None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        hps, limits = hyperparameters_of(None, args.hp), CloudLimits.of(args)
        if args.instance_type.startswith("local"):
            limits.check_local()
            output = args.output or "build/train-v3"
            print(fit(args.image, args.data, hps, args.instance_count, output, args.instance_type, source))
        elif source or not args.role:
            raise ValueError(
                "a cloud job here runs the built-in trainer and needs --role (script mode: local_mode.fit)"
            )
        else:
            print(fit_cloud(args.image, args.data, hps, args.instance_type, args.instance_count, args.role,
                            args.output or "", limits))  # fmt: skip
    except (PreflightError, TrainingFailed, ValueError, ClientError, BotoCoreError) as exc:
        sys.exit(f"error: {str(exc).strip().splitlines()[0][:300]}")


if __name__ == "__main__":
    main()
