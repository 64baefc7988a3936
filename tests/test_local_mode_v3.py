"""SDK v3 ``ModelTrainer`` local mode with the training image, run in .venv-sdk3 (no torch there)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import model_artifact
from common.metrics import METRIC_DEFINITIONS
from tests.conftest import FAST, REPO
from tests.sdk3 import audited, calls_of, run_stubbed, sdk3_env

IMAGE = "byoc-classifier-training:latest"
ECR_TRAINING = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{IMAGE}"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
PYTHON = REPO / ".venv-sdk3" / "bin" / "python"


def _left_behind(root: Path) -> list[str]:
    """Containers of compose projects under ``root``, and the SDK's network unless others are using it."""
    labels = subprocess.run(
        ["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project.working_dir"}}'],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    found = [f"container in {d}" for d in labels if d.startswith(str(root))]
    network = subprocess.run(
        ["docker", "network", "inspect", "sagemaker-local", "--format", "{{len .Containers}}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if network.returncode == 0 and network.stdout.strip() == "0":  # nobody's job is attached to it
        found.append("network sagemaker-local")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("instances", [1, 2])
def test_model_trainer_trains_in_local_mode(images, sample_data, tmp_path, instances):
    assert PYTHON.exists(), "no .venv-sdk3: run `make venv-sdk3`"
    env = audited(sdk3_env(tmp_path), tmp_path)  # TMPDIR: the SDK's container root and our config land there
    hps = [f"{k}={v}" for k, v in (FAST | {"epochs": "1", "num-workers": "1"}).items()]
    result = subprocess.run(
        [str(PYTHON), "-m", "local_mode.fit_v3", "--image", IMAGE, "--data", str(sample_data),
         "--output", str(tmp_path / "out"), "--instance-count", str(instances), "--hp", *hps],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == str(tmp_path / "out" / "model.tar.gz")
    assert "final best_epoch=1" in result.stdout  # the container's log came through
    if instances == 2:  # both containers (algo-1, algo-2) joined one DDP group
        assert result.stdout.count("process group ready: world size 2") == 2
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        tar.extractall(tmp_path / "model", filter="data")
    _, meta = model_artifact.load(tmp_path / "model")
    assert meta.class_names == ["ball", "box", "cone", "ring"]
    assert not _left_behind(tmp_path)
    kept = {f"byoc-sagemaker-config-{os.getuid()}.yaml"}  # the opt-out config: one per user, reused
    assert {p.name for p in (tmp_path / "tmp").iterdir()} <= kept
    net_log = tmp_path / "net.log"
    assert not net_log.exists(), net_log.read_text()  # no telemetry, no AWS


def test_a_cloud_job_sends_spot_limits_checkpoints_and_s3_channels(tmp_path):
    """``fit_v3`` in the cloud: the CreateTrainingJob request v3's ModelTrainer makes (recorded answers)."""
    job = "arn:aws:sagemaker:us-east-1:123456789012:training-job/j"
    described = {
        "TrainingJobName": "j", "TrainingJobArn": job, "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
        "CreationTime": "2026-12-07T00:00:00Z", "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 7200},
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/out/j/output/model.tar.gz"},
    }  # fmt: skip
    answers = {"CreateTrainingJob": [{"TrainingJobArn": job}], "DescribeTrainingJob": [described]}
    result, calls = run_stubbed(
        tmp_path, answers, "local_mode.fit_v3", "--image", ECR_TRAINING, "--data", "s3://bucket/caltech256",
        "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--output", "s3://bucket/out", "--spot",
        "--max-run", "7200", "--checkpoint-s3-uri", "s3://bucket/checkpoints", "--hp", "epochs=10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "s3://bucket/out/j/output/model.tar.gz"
    (request,) = calls_of(calls, "CreateTrainingJob")
    assert request["AlgorithmSpecification"]["TrainingImage"] == ECR_TRAINING and request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["HyperParameters"] == {"epochs": "10"}
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]] == [
        f"s3://bucket/caltech256/{c}" for c in ("training", "validation", "test")
    ]
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints", "LocalPath": "/opt/ml/checkpoints"}
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://bucket/out"


def test_a_local_job_refuses_spot_in_one_line(tmp_path, sample_data):
    result, calls = run_stubbed(tmp_path, {}, "local_mode.fit_v3", "--image", IMAGE, "--data", str(sample_data),
                                "--spot")  # fmt: skip
    assert result.returncode == 1 and not calls
    assert result.stderr.strip() == "error: --spot and --checkpoint-s3-uri apply to cloud jobs (an ml.* instance type)"
