"""Start SageMaker's hyperparameter tuning with SDK v3: ``HyperparameterTuner`` over ``ModelTrainer``.

    .venv-sdk3/bin/python -m tuning.tune_v3 --image $ECR/byoc-classifier-training:latest \\
        --data s3://my-bucket/caltech256 --role $ROLE --output s3://my-bucket/tuning \\
        [--instance-type ml.g5.xlarge] [--max-jobs 20] [--max-parallel-jobs 2] [--epochs 10] [--spot ...]

The course's search (lr 0.001-0.1, batch size 32-512, momentum 0.5-0.9, or ``--lr``, ``--batch-sizes``,
``--momentum``), maximizing ``validation:accuracy`` from the image's metric lines; the same arguments and
request as ``tuning.tune cloud`` (SDK v2). Cloud only: v3 has no local tuning (``tuning.tune local`` runs the
search on this machine). It prints the job's name; ``tuning.tune cloud-best --job NAME`` writes the
best hyperparameters once it is done. Runs in ``.venv-sdk3``, without torch.
"""

from __future__ import annotations

import argparse
import sys

from common.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC
from local_mode.fit import CloudLimits
from local_mode.fit_v3 import cloud_trainer, s3_inputs
from tuning import tune
from tuning.space import COURSE_SPACE, Space, sagemaker_ranges


def tuner(trainer, space: Space = COURSE_SPACE, max_jobs: int = 20, max_parallel_jobs: int = 2,
          strategy: str = "Bayesian", early_stopping: str = "Auto", seed: int | None = None):  # fmt: skip
    """v3's ``HyperparameterTuner`` over ``trainer`` (``local_mode.fit_v3.cloud_trainer``)."""
    from sagemaker.train.tuner import HyperparameterTuner

    return HyperparameterTuner(
        trainer, objective_metric_name=OBJECTIVE_METRIC, hyperparameter_ranges=sagemaker_ranges(space, sdk=3),
        metric_definitions=METRIC_DEFINITIONS, strategy=strategy, objective_type="Maximize", max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs, early_stopping_type=early_stopping, random_seed=seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tuning.tune_v3", description=__doc__.splitlines()[0])
    tune.add_search_arguments(parser)
    tune.add_cloud_arguments(parser)
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if not (args.output or "").startswith("s3://"):
            raise ValueError("--output: an s3:// folder for the jobs' model.tar.gz")
        trainer = cloud_trainer(args.image, tune.static_of(args), args.instance_type, 1, args.role, args.output,
                                CloudLimits.of(args))  # fmt: skip
        tuning = tuner(trainer, tune.space_of(args), args.max_jobs, args.max_parallel_jobs, args.strategy,
                       args.early_stopping, args.seed)  # fmt: skip
        tuning.tune(inputs=s3_inputs(args.data), job_name=args.job_name, wait=False)
    except (ValueError, ClientError, BotoCoreError) as exc:
        sys.exit(f"error: {str(exc).strip().splitlines()[0][:300]}")
    name = tuning.latest_tuning_job.hyper_parameter_tuning_job_name
    print(f"started tuning job {name}; when done: python -m tuning.tune cloud-best --job {name}")


if __name__ == "__main__":
    main()
