"""local_mode/fit.py's cloud options: managed spot, time limits and the checkpoint upload, in the
CreateTrainingJob request SDK v2 sends (stubbed SageMaker), and refused where they cannot apply."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from local_mode import fit

IMAGE_URI = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/byoc-classifier-training:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


@pytest.fixture
def captured(monkeypatch):
    """A real sagemaker.Session whose SageMaker client records CreateTrainingJob's parameters."""
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # shown elsewhere (test_session.py); noise here
    import sagemaker

    boto = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="eu-west-1")
    client = boto.client("sagemaker")
    requests: list[dict] = []
    client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", lambda params, **_: requests.append(params)
    )
    with Stubber(client) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:1:training-job/j"})
        yield sagemaker.Session(boto_session=boto, sagemaker_client=client, default_bucket="bucket"), requests


def start(session, limits: fit.CloudLimits) -> None:
    estimator = fit.BUILT_IN.estimator(
        image_uri=IMAGE_URI, role=ROLE, instance_count=1, instance_type="ml.g5.xlarge", hyperparameters={"epochs": 10},
        output_path="s3://bucket/out", environment=None, sagemaker_session=session, **limits.estimator_kwargs(),
    )  # fmt: skip
    estimator.fit(fit.channels_of("s3://bucket/caltech256"), job_name="byoc-spot-1", wait=False)


def test_spot_limits_and_checkpoints_reach_the_training_job_request(captured):
    session, requests = captured
    start(session, fit.CloudLimits(spot=True, max_run=7200, checkpoint_s3_uri="s3://bucket/checkpoints/run-1"))
    (request,) = requests
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints/run-1"}  # /opt/ml/checkpoints, ours


def test_by_default_a_cloud_job_runs_on_demand_for_up_to_a_day(captured):
    session, requests = captured
    start(session, fit.CloudLimits())
    (request,) = requests
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert "EnableManagedSpotTraining" not in request and "CheckpointConfig" not in request


@pytest.mark.parametrize(
    "limits,message",
    [
        ({"max_run": 0}, "--max-run must be a positive number of seconds, not 0"),
        ({"max_wait": 3600}, "--max-wait applies to spot jobs only: add --spot"),
        ({"spot": True, "max_run": 7200, "max_wait": 3600}, "--max-wait (3600 s) must be at least --max-run (7200 s)"),
        ({"checkpoint_s3_uri": "/tmp/ckpt"}, "--checkpoint-s3-uri must be an s3:// URI, not '/tmp/ckpt'"),
    ],
)
def test_impossible_limits_are_refused_in_one_line(limits, message):
    with pytest.raises(ValueError) as refused:
        fit.CloudLimits(**limits)
    assert str(refused.value) == message


def test_local_mode_refuses_spot_instead_of_ignoring_it(sample_data, capsys):
    with pytest.raises(SystemExit) as stopped:
        fit.main(["--image", "byoc-classifier-training:latest", "--data", str(sample_data), "--spot"])
    assert stopped.value.code == "error: --spot and --checkpoint-s3-uri apply to cloud jobs (an ml.* instance type)"
