"""Hyperparameter tuning with the training image: SageMaker's tuner, or the same search locally.

    python -m tuning.tune local --image byoc-classifier-training:latest --data data/sample \\
        --trials 20 --epochs 5 --out build/tune [--sampler tpe|random] [--seed 1] [--parallel K]
    python -m tuning.tune cloud --image <ecr uri> --data s3://bucket/prefix --role <arn> \\
        --instance-type ml.g5.xlarge --max-jobs 20 --max-parallel-jobs 2 [--epochs 5]
    python -m tuning.tune cloud-best --job <tuning job name> --out best-hyperparameters.json

Both search the course's space (lr 0.001-0.1, batch-size 32-512, momentum 0.5-0.9; narrow it
with --lr, --batch-sizes, --momentum) for the highest validation:accuracy, the metric that
the training image prints every epoch. Both write ``best-hyperparameters.json``, which
``python -m local_mode.fit --hyperparameters-file`` accepts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.arguments import number
from common.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC
from local_mode import session as local
from local_mode.fit import CloudLimits, channels_of, hyperparameters_of
from tuning.space import COURSE_SPACE, TUNED, Space, fit_to_data, sagemaker_ranges, training_images, write_best

SAGEMAKER_KEYS = ("sagemaker_", "_tuning_objective_metric")  # what SageMaker adds to a job's hyperparameters


def tuner(image_uri: str, role: str, instance_type: str = "ml.g5.xlarge", max_jobs: int = 20,
          max_parallel_jobs: int = 2, hyperparameters: dict | None = None, session=None, space: Space = COURSE_SPACE,
          output_path: str | None = None, strategy: str = "Bayesian", early_stopping: str = "Auto",
          seed: int | None = None, limits: CloudLimits | None = None):  # fmt: skip
    """SageMaker's ``HyperparameterTuner`` over our training image, maximizing validation:accuracy.

    ``early_stopping="Auto"`` lets SageMaker stop jobs whose per-epoch objective lags, as the
    local search's pruner does."""
    from sagemaker.estimator import Estimator
    from sagemaker.tuner import HyperparameterTuner

    estimator = Estimator(
        image_uri=image_uri, role=role, instance_count=1, instance_type=instance_type,
        hyperparameters=hyperparameters or {}, output_path=output_path, sagemaker_session=session,
        **(limits or CloudLimits()).estimator_kwargs(),
    )  # fmt: skip
    return HyperparameterTuner(
        estimator, objective_metric_name=OBJECTIVE_METRIC, hyperparameter_ranges=sagemaker_ranges(space),
        metric_definitions=METRIC_DEFINITIONS, strategy=strategy, objective_type="Maximize", max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs, early_stopping_type=early_stopping, random_seed=seed,
    )  # fmt: skip


def start_cloud(tuning, data: str, job_name: str | None = None) -> str:
    """Start the tuning job on the channels under an S3 prefix; returns the job's name."""
    tuning.fit(channels_of(_s3(data)), job_name=job_name, wait=False)
    return tuning.latest_tuning_job.name


def _s3(data: str) -> str:
    if not data.startswith("s3://"):
        raise ValueError(f"cloud tuning reads its data from S3: --data s3://bucket/prefix, not {data!r}")
    return data


def _unquote(value: str) -> str:
    """SDK v2 JSON-quotes string hyperparameters: ``'"0.01"'`` -> ``'0.01'``."""
    try:
        loaded = json.loads(value)
    except ValueError:
        return value
    return loaded if isinstance(loaded, str) else value


def best_from_cloud(job_name: str, path: Path, session=None) -> dict:
    """Write the best training job of a tuning job to a best-hyperparameters file."""
    import sagemaker

    client = (session or sagemaker.Session()).sagemaker_client
    tuning = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
    best = tuning.get("BestTrainingJob")
    if not best:
        status = tuning["HyperParameterTuningJobStatus"]
        raise ValueError(f"tuning job {job_name} has no completed training job yet ({status})")
    job = client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    hps = {k: _unquote(v) for k, v in job["HyperParameters"].items() if not k.startswith(SAGEMAKER_KEYS)}
    source = {"kind": "sagemaker", "tuning_job": job_name, "training_job": best["TrainingJobName"]}
    source |= {"model_data": job.get("ModelArtifacts", {}).get("S3ModelArtifacts")}
    write_best(path, hps, best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], source)
    return hps


def run_local(args: argparse.Namespace) -> None:
    """The local search, its table and files."""
    from tuning import results, search

    space, note = fit_to_data(space_of(args), training_images(args.data))
    if note:
        print(f"note: {note}")
    settings = search.Settings(
        image=args.image, data=args.data, out=Path(args.out), trials=args.trials, static=static_of(args),
        space=space, sampler=args.sampler, seed=args.seed, cpus_per_trial=args.cpus_per_trial,
        parallel=args.parallel, prune_below=args.prune_below, instance_type=args.instance_type,
    )  # fmt: skip
    print(f"{settings.study_name}: {args.trials} trials, {args.sampler} sampler, {settings.n_jobs} at a time; {space}")
    study = search.search(settings)
    best = results.write(study, settings.out, {"kind": "local", "image": args.image, "data": args.data})
    print(results.format_table(results.rows(study)))
    print(f"wrote {settings.out}/trials.csv, trials.json, trials.png")
    interrupted = study.user_attrs.get("interrupted", False)
    if best is None:
        raise KeyboardInterrupt if interrupted else ValueError(f"no trial completed; logs in {settings.out}/trials/")
    print(f"best: trial {study.best_trial.number}, val_accuracy {study.best_value:.4g} -> {best}")
    print(f"train with it: python -m local_mode.fit --image {args.image} --data ... --hyperparameters-file {best}")
    if interrupted:
        raise KeyboardInterrupt


def run_cloud(args: argparse.Namespace) -> None:
    _s3(args.data)
    tuning = tuner(
        args.image, args.role, args.instance_type, args.max_jobs, args.max_parallel_jobs, static_of(args),
        space=space_of(args), output_path=args.output, strategy=args.strategy, early_stopping=args.early_stopping,
        seed=args.seed, limits=CloudLimits.of(args),
    )  # fmt: skip
    name = start_cloud(tuning, args.data, args.job_name)
    print(f"started tuning job {name}; when done: python -m tuning.tune cloud-best --job {name}")


def space_of(args: argparse.Namespace) -> Space:
    return Space(
        lr=tuple(args.lr or COURSE_SPACE.lr),
        batch_sizes=tuple(args.batch_sizes or COURSE_SPACE.batch_sizes),
        momentum=tuple(args.momentum or COURSE_SPACE.momentum),
    )


def static_of(args: argparse.Namespace) -> dict[str, str]:
    """Fixed hyperparameters: --hp key=value ..., and --epochs."""
    static = hyperparameters_of(None, args.hp) | ({"epochs": str(args.epochs)} if args.epochs else {})
    if tuned := sorted(set(static) & set(TUNED)):
        raise ValueError(f"--hp {tuned[0]}: tuned hyperparameters take a range (--lr, --batch-sizes, --momentum)")
    return static


_positive = number(int, 1)
_percentile = number(float, 0, 100, high_open=True)


def add_search_arguments(sp: argparse.ArgumentParser) -> None:
    """The image, the data, the fixed hyperparameters and the search space (local and cloud, both SDKs)."""
    sp.add_argument("--image", required=True, help="training image (an ECR URI for cloud)")
    sp.add_argument("--data", required=True, help="folder (local) or s3:// prefix: training/ [validation/ test/]")
    sp.add_argument("--epochs", type=_positive, help="epochs per trial (default: the image's, 10)")
    sp.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="fixed hyperparameters")
    sp.add_argument("--lr", nargs=2, type=float, metavar=("LOW", "HIGH"), help="default 0.001 0.1")
    sp.add_argument("--batch-sizes", nargs="+", type=_positive, help="default 32 64 128 256 512")
    sp.add_argument("--momentum", nargs=2, type=float, metavar=("LOW", "HIGH"), help="default 0.5 0.9")
    sp.add_argument("--seed", type=int, help="sampler seed")


def add_cloud_arguments(cloud_p: argparse.ArgumentParser) -> None:
    """SageMaker's tuning job: role, instances, limits, strategy, output (both SDKs)."""
    cloud_p.add_argument("--role", required=True, help="SageMaker execution role ARN")
    cloud_p.add_argument("--instance-type", default="ml.g5.xlarge")
    cloud_p.add_argument("--max-jobs", type=_positive, default=20)
    cloud_p.add_argument("--max-parallel-jobs", type=_positive, default=2)
    cloud_p.add_argument("--strategy", choices=("Bayesian", "Random"), default="Bayesian")
    cloud_p.add_argument("--early-stopping", choices=("Auto", "Off"), default="Auto")
    cloud_p.add_argument("--output", help="s3:// folder for the jobs' model.tar.gz (default: the SDK's bucket)")
    cloud_p.add_argument("--job-name", help="tuning job name (default: from the image name and time)")
    CloudLimits.add_arguments(cloud_p)  # each training job's spot, time limits and checkpoints


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.tune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="where", required=True)
    local_p = sub.add_parser("local", help="Optuna trials as local-mode training jobs")
    cloud_p = sub.add_parser("cloud", help="SageMaker's HyperparameterTuner")
    best_p = sub.add_parser("cloud-best", help="write a tuning job's best hyperparameters to a file")
    for sp in (local_p, cloud_p):
        add_search_arguments(sp)
    local_p.add_argument("--trials", type=_positive, default=20)
    local_p.add_argument("--out", default="build/tune", help="table, plot, trial logs, best-hyperparameters.json")
    local_p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    local_p.add_argument("--cpus-per-trial", type=_positive, default=2, help="each trial's container CPU limit")
    local_p.add_argument("--parallel", type=_positive, help="trials at a time (default: CPUs / cpus-per-trial)")
    local_p.add_argument("--prune-below", type=_percentile, default=25.0, help="percentile that stops a trial; 0: off")
    local_p.add_argument("--instance-type", choices=("local", "local_gpu"), default="local")
    add_cloud_arguments(cloud_p)
    best_p.add_argument("--job", required=True, help="tuning job name")
    best_p.add_argument("--out", default="best-hyperparameters.json")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.where == "local":
            run_local(args)
        elif args.where == "cloud":
            run_cloud(args)
        else:
            hps = best_from_cloud(args.job, Path(args.out))
            print(f"wrote {args.out}: " + " ".join(f"{k}={v}" for k, v in sorted(hps.items())))
    except (local.PreflightError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except Exception as exc:  # botocore's credential, region and API errors: one line, no traceback
        if type(exc).__module__.startswith(("botocore", "boto3", "sagemaker")):
            sys.exit(f"error: {type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
