"""local_mode/transform_v3.py: SDK v3 batch transform through the CPU serving image for real (a folder
of images; JSON Lines with a bad line), and the cloud job's requests (recorded answers)."""

from __future__ import annotations

import json
import subprocess
import tarfile

import pytest

import model_artifact
from local_mode import transform
from tests.conftest import REPO
from tests.sdk3 import PYTHON, calls_of, containers_of, run_stubbed, sdk3_env

IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc-classifier-serving-cpu:latest"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"


def test_a_cloud_json_lines_job_sends_its_model_input_and_batching_then_deletes_the_model(tmp_path):
    described = {
        "TransformJobName": "t", "TransformJobArn": f"{ARN}:transform-job/t", "TransformJobStatus": "Completed",
        "ModelName": "m", "CreationTime": "2026-12-07T00:00:00Z",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/lines"}}},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }  # fmt: skip
    answers = {"CreateModel": [{"ModelArn": f"{ARN}:model/m"}], "DeleteModel": [{}],
               "CreateTransformJob": [{"TransformJobArn": f"{ARN}:transform-job/t"}],
               "DescribeTransformJob": [described]}  # fmt: skip
    result, calls = run_stubbed(
        tmp_path, answers, "local_mode.transform_v3", "lines", "--image", IMAGE_URI,
        "--model-data", "s3://bucket/model.tar.gz", "--input", "s3://bucket/lines", "--output", "s3://bucket/answers",
        "--instance-type", "ml.m5.large", "--role", ROLE, "--strategy", "SingleRecord",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (model,) = calls_of(calls, "CreateModel")
    assert model["PrimaryContainer"] == {"Image": IMAGE_URI, "ModelDataUrl": "s3://bucket/model.tar.gz"}
    assert model["ExecutionRoleArn"] == ROLE
    (job,) = calls_of(calls, "CreateTransformJob")
    assert job["ModelName"] == model["ModelName"] and job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/lines"}},
        "ContentType": "application/jsonlines", "SplitType": "Line",
    }  # fmt: skip
    assert job["TransformOutput"] == {"S3OutputPath": "s3://bucket/answers", "AssembleWith": "Line"}
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
    assert calls_of(calls, "DeleteModel") == [{"ModelName": model["ModelName"]}]


def test_a_cloud_transform_needs_a_role(tmp_path):
    result, calls = run_stubbed(tmp_path, {}, "local_mode.transform_v3", "images", "--image", IMAGE_URI,
                                "--model-data", "s3://bucket/model.tar.gz", "--input", "s3://bucket/in",
                                "--output", "s3://bucket/out", "--instance-type", "ml.m5.large")  # fmt: skip
    assert result.returncode == 1 and not calls
    assert result.stderr.strip() == "error: a cloud transform needs s3:// model data and --role (an IAM role ARN)"


@pytest.mark.slow
def test_local_jobs_answer_every_image_and_every_line_and_leave_nothing(images, trained_job, sample_data, tmp_path):
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in (*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE):
            tar.add(trained_job[0] / "model" / name, arcname=name)
    photos = sorted((sample_data / "test" / "box").iterdir())[:4]
    (tmp_path / "in").mkdir()
    for photo in photos:
        (tmp_path / "in" / photo.name).write_bytes(photo.read_bytes())
    transform.write_jsonl(photos, tmp_path / "lines" / "test.jsonl")
    with open(tmp_path / "lines" / "test.jsonl", "a") as lines:
        lines.write(json.dumps({"instances": [{"b64": "bm90IGFuIGltYWdl"}]}) + "\n")  # "not an image"

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [str(PYTHON), "-m", "local_mode.transform_v3", *args, "--image", "byoc-classifier-serving-cpu:latest",
                   "--model-data", str(tarball)]  # fmt: skip
        return subprocess.run(command, cwd=REPO, env=sdk3_env(tmp_path), capture_output=True, text=True, timeout=600)

    done = run("images", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outputs = transform.read_outputs(tmp_path / "out")
    assert sorted(outputs) == [f"{photo.name}.out" for photo in photos]
    assert all(len(answers) == 1 and answers[0]["predictions"] for answers in outputs.values())
    done = run("lines", "--input", str(tmp_path / "lines"), "--output", str(tmp_path / "out-lines"),
               "--strategy", "SingleRecord")  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip().endswith("1 answer(s) were errors")
    (answers,) = transform.read_outputs(tmp_path / "out-lines").values()
    assert [("predictions" in a) for a in answers] == [True] * 4 + [False]
    assert answers[-1]["status"] == 400 and "not a readable image" in answers[-1]["error"]
    left = containers_of("byoc-classifier-serving-cpu:latest")
    assert not left, "a job's container was left behind"
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("sagemaker-v3-transform-")]


def test_a_missing_local_model_is_one_line_and_leaves_no_folder(tmp_path):
    result, calls = run_stubbed(tmp_path, {}, "local_mode.transform_v3", "images", "--image", "x:latest",
                                "--model-data", str(tmp_path / "none.tar.gz"), "--input", str(tmp_path),
                                "--output", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 1 and not calls
    assert result.stderr.strip() == f"error: no model.tar.gz at {tmp_path / 'none.tar.gz'} (local mode takes one " \
                                    "from this machine's disk)"  # fmt: skip
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("sagemaker-v3-")]
