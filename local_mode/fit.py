"""Train with the training image through the SageMaker Python SDK v2.

    python -m local_mode.fit --image byoc-classifier-training:latest --data data/sample \\
        [--instance-type local|local_gpu|ml.g5.xlarge] [--instance-count 2] [--hp epochs=3 ...] \\
        [--hyperparameters-file build/tune/best-hyperparameters.json] \\
        [--entry-point train_model.py --source-dir examples/script_mode [--torch-distributed]]

Cloud jobs take managed spot (``--spot``), ``--max-run``, ``--max-wait`` and ``--checkpoint-s3-uri``
(``CloudLimits``; docs/training.md#spot-and-time-limits).

With ``--entry-point`` the image runs that script from ``--source-dir`` (script mode) instead of
its built-in trainer; ``--torch-distributed`` starts it with torchrun on every instance.

The same code trains in the cloud: pass an ECR image URI, ``s3://`` data, an ``ml.*``
instance type, ``--role`` and ``--output s3://...``.

``--hyperparameters-file`` takes the ``best-hyperparameters.json`` that ``tuning.tune``
writes (or a flat JSON object of hyperparameters); ``--hp`` values override the file's.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from common.metrics import METRIC_DEFINITIONS
from local_mode import session as local

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
        role: str = local.DUMMY_ROLE, output_path: str | None = None, session=None,
        environment: dict | None = None, job_name: str | None = None, script: Script | None = None,
        limits: CloudLimits | None = None) -> str:  # fmt: skip
    """Run a training job; returns the model artifact's URI (model.tar.gz).

    ``hyperparameters`` is copied: the SDK adds its ``sagemaker_*`` keys to the dict it is given.
    """
    is_local, limits = instance_type.startswith("local"), limits or CloudLimits()
    if is_local:
        limits.check_local()
    if is_local and session is None:  # callers that pass a session checked before making it
        local.preflight(instance_type)
    estimator = (script or BUILT_IN).estimator(
        image_uri=image_uri, role=role, instance_count=instance_count, instance_type=instance_type,
        hyperparameters=dict(hyperparameters), output_path=output_path, environment=environment,
        sagemaker_session=session or (local.local_session() if is_local else None), **limits.estimator_kwargs(),
    )  # fmt: skip
    try:
        estimator.fit(channels_of(data), job_name=job_name, wait=True, logs=True)
    except RuntimeError as exc:  # local mode's "Failed to run: docker-compose ..."
        if not is_local:
            raise
        reason = failure_reason(output_path, Path(estimator.sagemaker_session.config["local"]["container_root"]))
        raise TrainingFailed(reason or str(exc)) from exc
    return estimator.model_data


@dataclass(frozen=True)
class Script:
    """What the job runs: the image's built-in trainer, or a user script (script mode)."""

    entry_point: str | None = None
    source_dir: str | None = None
    torch_distributed: bool = False
    metric_definitions: tuple[dict, ...] = ()

    def estimator(self, **kwargs):
        """SDK v2's ``Estimator``, or its ``PyTorch`` estimator (with our image) for torch_distributed."""
        from sagemaker.estimator import Estimator
        from sagemaker.pytorch import PyTorch

        if not self.entry_point:
            return Estimator(metric_definitions=METRIC_DEFINITIONS, **kwargs)
        kwargs |= {"entry_point": self.entry_point, "source_dir": self.source_dir}
        kwargs["metric_definitions"] = list(self.metric_definitions) or None
        if self.torch_distributed:  # the generic Estimator has no distribution; PyTorch's sets the hyperparameter
            return PyTorch(distribution={"torch_distributed": {"enabled": True}}, **kwargs)
        return Estimator(**kwargs)


BUILT_IN = Script()
DEFAULT_MAX_RUN = 86400  # SageMaker's own default, 24 hours (SDK v3's ModelTrainer would stop a job at 1 hour)


@dataclass(frozen=True)
class CloudLimits:
    """A cloud training job's managed spot, time limits and checkpoint upload (docs/training.md#spot).

    On a spot interruption SageMaker restarts the job, which resumes from the checkpoints it
    uploaded to ``checkpoint_s3_uri`` and downloaded back into /opt/ml/checkpoints.
    """

    spot: bool = False
    max_run: int = DEFAULT_MAX_RUN  # seconds of training before SageMaker stops the job
    max_wait: int | None = None  # spot: seconds of waiting for capacity plus training (default 2 x max_run)
    checkpoint_s3_uri: str | None = None

    def __post_init__(self) -> None:
        if self.max_run <= 0:
            raise ValueError(f"--max-run must be a positive number of seconds, not {self.max_run}")
        if self.max_wait is not None and not self.spot:
            raise ValueError("--max-wait applies to spot jobs only: add --spot")
        if self.max_wait is not None and self.max_wait < self.max_run:
            raise ValueError(f"--max-wait ({self.max_wait} s) must be at least --max-run ({self.max_run} s)")
        if self.checkpoint_s3_uri and not self.checkpoint_s3_uri.startswith("s3://"):
            raise ValueError(f"--checkpoint-s3-uri must be an s3:// URI, not {self.checkpoint_s3_uri!r}")

    @property
    def wait(self) -> int | None:
        """MaxWaitTimeInSeconds: spot only."""
        return (self.max_wait or 2 * self.max_run) if self.spot else None

    def check_local(self) -> None:
        """Local mode has no spot capacity and uploads no checkpoints: refuse what it would ignore."""
        if self.spot or self.checkpoint_s3_uri:
            raise ValueError("--spot and --checkpoint-s3-uri apply to cloud jobs (an ml.* instance type)")

    def estimator_kwargs(self) -> dict:
        """SDK v2 ``Estimator`` arguments."""
        return {"max_run": self.max_run, "use_spot_instances": self.spot, "max_wait": self.wait,
                "checkpoint_s3_uri": self.checkpoint_s3_uri}  # fmt: skip

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--spot", action="store_true", help="cloud: managed spot training (needs --checkpoint-s3-uri)"
        )
        parser.add_argument(
            "--max-run", type=int, default=DEFAULT_MAX_RUN, help="cloud: seconds before the job is stopped"
        )
        parser.add_argument(
            "--max-wait", type=int, help="cloud, spot: seconds of waiting plus running (default 2 x max-run)"
        )
        parser.add_argument("--checkpoint-s3-uri", help="cloud: s3:// folder that /opt/ml/checkpoints is synced to")

    @classmethod
    def of(cls, args: argparse.Namespace) -> CloudLimits:
        return cls(args.spot, args.max_run, args.max_wait, args.checkpoint_s3_uri)


# The metric line examples/script_mode/train_model.py prints, for SageMaker's metrics and tuner.
EXAMPLE_METRICS = ({"Name": "test:accuracy", "Regex": r"test_accuracy=([0-9\.]+)"},)


class TrainingFailed(Exception):
    """A local training job failed; the message is the container's failure reason."""


def failure_reason(output_path: str | None, container_root: Path) -> str | None:
    """The ``failure`` file from the newest output.tar.gz local mode wrote for a failed job."""
    if output_path and output_path.startswith("file://"):
        candidates = [Path(output_path.removeprefix("file://")) / "output.tar.gz"]
    else:  # no output path: local mode leaves the archives in the job's folder
        candidates = sorted(
            container_root.glob("*/compressed_artifacts/output.tar.gz"), key=lambda p: p.stat().st_mtime
        )
    for archive in reversed(candidates):
        if archive.is_file():
            with tarfile.open(archive) as tar:
                member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "failure"), None)
                if member:
                    return tar.extractfile(member).read().decode(errors="replace").strip()
    return None


def hyperparameters_of(file: str | Path | None, items: list[str]) -> dict[str, str]:
    """The file's hyperparameters (a tuning result or a flat object), overridden by key=value items."""
    from tuning.space import read_hyperparameters

    pairs = [item.partition("=") for item in items]
    if bad := [key for key, eq, _ in pairs if not eq or not key]:
        raise ValueError(f"--hp takes key=value, not {bad[0]!r}")
    return (read_hyperparameters(Path(file)) if file else {}) | {key: value for key, _, value in pairs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--data", required=True, help="folder or s3:// prefix with training/ [validation/ test/]")
    parser.add_argument("--instance-type", default="local")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--role", default=local.DUMMY_ROLE)
    parser.add_argument("--output", help="file:// or s3:// folder for model.tar.gz (local default: build/local-out)")
    parser.add_argument("--hp", nargs="*", default=[], help="hyperparameters as key=value")
    parser.add_argument("--hyperparameters-file", help="JSON, e.g. tuning.tune's best-hyperparameters.json")
    parser.add_argument("--entry-point", help="script mode: the user's training script, relative to --source-dir")
    parser.add_argument("--source-dir", help="script mode: the folder with the script (and requirements.txt)")
    parser.add_argument("--torch-distributed", action="store_true", help="script mode: start it with torchrun")
    CloudLimits.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.torch_distributed and not args.entry_point:
        parser.error("--torch-distributed needs --entry-point (the built-in trainer distributes itself)")
    script = Script(args.entry_point, args.source_dir, args.torch_distributed, EXAMPLE_METRICS)
    is_local = args.instance_type.startswith("local")
    output = args.output or (f"file://{Path('build/local-out').resolve()}" if is_local else None)
    session = None
    try:
        hps = hyperparameters_of(args.hyperparameters_file, args.hp)
        limits = CloudLimits.of(args)
        if is_local:
            limits.check_local()
            local.preflight(args.instance_type)  # before the SDK's session, which fails obscurely without a region
            session = local.local_session()
        print(fit(args.image, args.data, hps, args.instance_type, args.instance_count, args.role, output, session,
                  script=script, limits=limits))  # fmt: skip
    except (local.PreflightError, TrainingFailed, ValueError) as exc:
        sys.exit(f"error: {exc}")
    finally:
        if session:
            local.cleanup(session)  # the artifacts are in --output; containers and folders go


if __name__ == "__main__":
    main()
