"""SDK v3 deployment (``local_mode.deploy_v3``, run in .venv-sdk3): in local mode through the CPU
serving image for real; in the cloud by the requests it makes, answered by recorded answers."""

from __future__ import annotations

import json
import subprocess
import tarfile

import pytest
import torch

import model_artifact
from tests.conftest import REPO
from tests.sdk3 import PYTHON, audited, calls_of, containers_of, run_stubbed, sdk3_env
from train import crops, data

ECR_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc-classifier-serving-cpu:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
NAME = "byoc-classifier-test"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
WHEN = "2026-12-07T00:00:00Z"


def prediction() -> dict:
    return {"predictions": [{"label": "ball", "probability": 0.9, "top_k": []}]}


def endpoint_answers(create_endpoint: dict | None = None) -> dict:
    """What SageMaker answers a deployment of NAME, an image, then a malformed image."""
    variant = {"VariantName": "AllTraffic", "ModelName": NAME, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
    endpoint = {"EndpointName": NAME, "EndpointArn": f"{ARN}:endpoint/{NAME}", "EndpointConfigName": NAME,
                "CreationTime": WHEN, "LastModifiedTime": WHEN}  # fmt: skip
    refused = 'Received client error (400) from primary with message "the body is not a readable image"'
    return {
        "CreateModel": [{"ModelArn": f"{ARN}:model/{NAME}"}],
        "DescribeModel": [{"ModelName": NAME, "ModelArn": f"{ARN}:model/{NAME}", "CreationTime": WHEN,
                           "ExecutionRoleArn": ROLE, "PrimaryContainer": {"Image": ECR_IMAGE}}],
        "CreateEndpointConfig": [{"EndpointConfigArn": f"{ARN}:endpoint-config/{NAME}"}],
        "DescribeEndpointConfig": [{"EndpointConfigName": NAME, "EndpointConfigArn": f"{ARN}:endpoint-config/{NAME}",
                                    "CreationTime": WHEN, "ProductionVariants": [variant]}],
        "CreateEndpoint": [create_endpoint or {"EndpointArn": f"{ARN}:endpoint/{NAME}"}],
        "DescribeEndpoint": [endpoint | {"EndpointStatus": "Creating"}, endpoint | {"EndpointStatus": "InService"}],
        "GetCallerIdentity": [{"UserId": "AIDA", "Account": "123456789012", "Arn": f"{ROLE}"}],
        "FilterLogEvents": [{"events": []}],  # the SDK streams the endpoint's logs while it waits
        "InvokeEndpoint": [
            {"Body": json.dumps(prediction()), "ContentType": "application/json"},
            {"Error": {"Code": "ModelError", "Message": refused}, "OriginalStatusCode": 400,
             "ResponseMetadata": {"HTTPStatusCode": 424}},
        ],
        "DeleteEndpoint": [{}], "DeleteEndpointConfig": [{}], "DeleteModel": [{}],
    }  # fmt: skip


def test_a_cloud_deployment_sends_the_image_model_and_instance_classifies_and_deletes_all(tmp_path, sample_data):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a JPEG")
    result, calls = run_stubbed(
        tmp_path, endpoint_answers(), "local_mode.deploy_v3", "--name", NAME, "--image", ECR_IMAGE,
        "--model-data", "s3://bucket/job/output/model.tar.gz", "--instance-type", "ml.m5.large", "--role", ROLE,
        str(sample_data / "test/ball/ball_000.jpg"), str(junk),
    )  # fmt: skip
    (model,) = calls_of(calls, "CreateModel")
    assert model["PrimaryContainer"]["Image"] == ECR_IMAGE and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://bucket/job/output/model.tar.gz"
    (config,) = calls_of(calls, "CreateEndpointConfig")
    wanted = {"ModelName": NAME, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    assert wanted.items() <= config["ProductionVariants"][0].items()
    assert calls_of(calls, "CreateEndpoint") == [
        {"EndpointName": NAME, "EndpointConfigName": NAME, "Tags": config["Tags"]}
    ]
    image, _ = calls_of(calls, "InvokeEndpoint")
    assert image["ContentType"] == "image/jpeg" and image["Accept"] == "application/json"
    assert image["CustomAttributes"] == "top_k=3" and image["Body"].startswith("b'\\xff\\xd8")  # the file's bytes
    # the SDK prints too, and its progress panel ends without a newline
    printed = [line[line.index(str(sample_data)) :] for line in result.stdout.splitlines() if str(sample_data) in line]
    assert printed == [f"{sample_data / 'test/ball/ball_000.jpg'} " + json.dumps(prediction()["predictions"][0])]
    assert f"{junk} error 400: Received client error (400)" in result.stderr and result.returncode == 1
    assert [name for _, name, _ in calls if name.startswith("Delete")] == [
        "DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]  # fmt: skip
    assert "Traceback" not in result.stderr


def test_a_failed_cloud_deployment_removes_what_it_created_and_says_why_in_one_line(tmp_path, sample_data):
    refused = {"Error": {"Code": "ResourceLimitExceeded", "Message": "The account-level service limit is 0 Instances"}}
    result, calls = run_stubbed(
        tmp_path, endpoint_answers(create_endpoint=refused), "local_mode.deploy_v3", "--name", NAME,
        "--image", ECR_IMAGE, "--model-data", "s3://bucket/model.tar.gz", "--instance-type", "ml.m5.large",
        "--role", ROLE, str(sample_data / "test/ball/ball_000.jpg"),
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: An error occurred (ResourceLimitExceeded)")
    assert not calls_of(calls, "InvokeEndpoint")
    assert {"DeleteEndpointConfig", "DeleteModel"} <= {name for _, name, _ in calls}


def test_cloud_deployment_needs_s3_model_data_and_a_role(tmp_path):
    result, calls = run_stubbed(tmp_path, {}, "local_mode.deploy_v3", "--image", ECR_IMAGE, "--model-data",
                                "build/model.tar.gz", "--instance-type", "ml.m5.large", "x.jpg")  # fmt: skip
    assert result.returncode == 1 and not calls
    assert result.stderr.strip() == "error: a cloud endpoint needs s3:// model data and --role (an IAM role ARN " \
                                    "for SageMaker)"  # fmt: skip


@pytest.mark.slow
def test_a_local_endpoint_of_the_cpu_image_classifies_refuses_junk_and_leaves_nothing(
    images, trained_job, sample_data, tmp_path
):
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in (*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE):
            tar.add(trained_job[0] / "model" / name, arcname=name)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    photos = [sample_data / "test" / c / f"{c}_000.jpg" for c in ("ball", "box", "cone", "ring")]
    result = subprocess.run(
        [str(PYTHON), "-m", "local_mode.deploy_v3", "--image", "byoc-classifier-serving-cpu:latest",
         "--model-data", str(tarball), *map(str, photos), str(junk)],
        cwd=REPO, env=audited(sdk3_env(tmp_path), tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # compose copies the container's output to the same stdout: a line of ours may have company
    printed = [line[line.index(str(photo)) + len(str(photo)) + 1 :] for photo in photos
               for line in result.stdout.splitlines() if str(photo) in line]  # fmt: skip
    assert len(printed) == 4, result.stdout[-3000:] + result.stderr[-3000:]
    model, meta = model_artifact.load(trained_job[0] / "model")
    for photo, answer in zip(photos, printed, strict=True):  # the model's own answer, through the endpoint
        dataset = data.ImageDataset([(photo, 0)], crops.EvalCrop(meta.preprocessing))
        with torch.no_grad():
            expected = model(model_artifact.normalize(dataset[0][0], meta.preprocessing).unsqueeze(0)).softmax(1)[0]
        top = json.JSONDecoder().raw_decode(answer)[0]
        assert top["label"] == meta.class_names[int(expected.argmax())], (photo, top)
        assert top["probability"] == pytest.approx(expected.max().item(), abs=model_artifact.ONNX_TOLERANCE)
    assert f"{junk} error 400: the body is not a readable image" in result.stderr and result.returncode == 1
    left = containers_of("byoc-classifier-serving-cpu:latest")
    assert not left, "the endpoint's container was left behind"
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("sagemaker-v3-endpoint-")]
    contacted = set((tmp_path / "net.log").read_text().split("\n")) - {""}
    assert contacted, "the audit hook did not run"
    assert all(line.endswith(("lookup localhost", "('127.0.0.1', 8080)")) for line in contacted), contacted
