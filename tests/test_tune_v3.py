"""tuning/tune_v3.py: SDK v3's HyperparameterTuner over ModelTrainer sends the course's search, our
metric definitions and the cloud limits in one CreateHyperParameterTuningJob (recorded answers)."""

from __future__ import annotations

from common.metrics import METRIC_DEFINITIONS
from tests.sdk3 import calls_of, run_stubbed

IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc-classifier-training:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/byoc-tune-1"
DESCRIBED = {
    "HyperParameterTuningJobName": "byoc-tune-1", "HyperParameterTuningJobArn": JOB_ARN,
    "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
    "HyperParameterTuningJobStatus": "InProgress", "CreationTime": "2026-12-07T00:00:00Z",
    "TrainingJobStatusCounters": {}, "ObjectiveStatusCounters": {},
}  # fmt: skip
ANSWERS = {"CreateHyperParameterTuningJob": [{"HyperParameterTuningJobArn": JOB_ARN}],
           "DescribeHyperParameterTuningJob": [DESCRIBED]}  # fmt: skip


def test_the_course_search_goes_out_as_one_request_with_our_metrics_and_limits(tmp_path):
    result, calls = run_stubbed(
        tmp_path, ANSWERS, "tuning.tune_v3", "--image", IMAGE_URI, "--data", "s3://bucket/caltech256",
        "--role", ROLE, "--output", "s3://bucket/tuning", "--epochs", "5", "--hp", "image-size=224", "--seed", "7",
        "--job-name", "byoc-tune-1", "--spot", "--max-run", "3600", "--checkpoint-s3-uri", "s3://bucket/checkpoints",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].startswith("started tuning job byoc-tune-1; when done: ")
    (request,) = calls_of(calls, "CreateHyperParameterTuningJob")
    config, definition = request["HyperParameterTuningJobConfig"], request["TrainingJobDefinition"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:accuracy"}
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [
            {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Auto"},
            {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.9", "ScalingType": "Auto"},
        ],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}],
    }  # the same search as SDK v2's tuner (tests/test_tune.py)
    assert config["ResourceLimits"] == {"MaxParallelTrainingJobs": 2, "MaxNumberOfTrainingJobs": 20}
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["RandomSeed"] == 7
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE_URI
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert definition["StaticHyperParameters"] == {"image-size": "224", "epochs": "5"}
    assert definition["RoleArn"] == ROLE and definition["OutputDataConfig"]["S3OutputPath"] == "s3://bucket/tuning"
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert definition["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]] == [
        f"s3://bucket/caltech256/{c}" for c in ("training", "validation", "test")
    ]


def test_a_fixed_value_for_a_tuned_hyperparameter_is_refused_before_any_call(tmp_path):
    result, calls = run_stubbed(
        tmp_path, ANSWERS, "tuning.tune_v3", "--image", IMAGE_URI, "--data", "s3://bucket/caltech256",
        "--role", ROLE, "--output", "s3://bucket/tuning", "--hp", "lr=0.01",
    )  # fmt: skip
    assert result.returncode == 1 and not calls
    assert (
        result.stderr.strip() == "error: --hp lr: tuned hyperparameters take a range (--lr, --batch-sizes, --momentum)"
    )
