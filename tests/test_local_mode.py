"""SDK v2 local mode with the training image: one instance, and two joined in one DDP group."""

from __future__ import annotations

import re
import subprocess
import tarfile
import threading
import time

import pytest

import model_artifact
from local_mode import fit
from local_mode import session as local
from tests.conftest import FAST

pytestmark = pytest.mark.slow
IMAGE = "byoc-classifier-training:latest"


@pytest.mark.parametrize("instances", [1, 2])
def test_estimator_trains_in_local_mode(sdk_session, sample_data, tmp_path, capfd, instances):
    hps = FAST | {"epochs": "1", "num-workers": "1"}
    model_data = fit.fit(
        IMAGE, str(sample_data), hps, "local", instances, output_path=f"file://{tmp_path / 'out'}", session=sdk_session
    )
    assert model_data == f"file://{tmp_path / 'out' / 'model.tar.gz'}"
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        tar.extractall(tmp_path / "model", filter="data")
    _, meta = model_artifact.load(tmp_path / "model")
    assert meta.class_names == ["ball", "box", "cone", "ring"]
    assert model_artifact.onnx_path(tmp_path / "model", meta).is_file()  # what the CPU serving image runs
    logs = capfd.readouterr().out
    if instances == 2:
        assert logs.count("process group ready: world size 2") == 2
    assert local.containers(sdk_session.config["local"]["container_root"])  # left behind until cleanup
    local.cleanup(sdk_session)
    assert not local.containers(sdk_session.config["local"]["container_root"])


def test_session_opts_out_of_telemetry(monkeypatch, tmp_path):
    from sagemaker.telemetry.telemetry_logging import TELEMETRY_OPT_OUT_PATH
    from sagemaker.utils import resolve_value_from_config

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    session = local.local_session(tmp_path / "root")
    assert resolve_value_from_config(config_path=TELEMETRY_OPT_OUT_PATH, sagemaker_session=session) is True
    assert session.config["local"]["container_root"] == str(tmp_path / "root")


def test_local_deploy_does_not_sleep_30_s_before_looking(monkeypatch, tmp_path):
    import sagemaker.session

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    session = local.local_session(tmp_path / "root")
    sleeps: list[float] = []
    monkeypatch.setattr(sagemaker.session.time, "sleep", sleeps.append)
    monkeypatch.setattr(session.sagemaker_client, "describe_endpoint", lambda **_: {"EndpointStatus": "InService"})
    session.wait_for_endpoint("an-endpoint")
    assert sleeps == [1]  # the SDK's default is one 30 s sleep


def test_preflight_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(local.PreflightError, match="AWS_DEFAULT_REGION"):
        local.preflight("local")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local.preflight("local")
    if "nvidia" not in subprocess.run(["docker", "info"], capture_output=True, text=True).stdout:
        with pytest.raises(local.PreflightError, match="NVIDIA container runtime"):
            local.preflight("local_gpu")


def test_local_deployment_answers_predictions(sdk_session, trained_job, sample_data, tmp_path):
    from local_mode import deploy

    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        for name in (*model_artifact.ARTIFACT_FILES, *model_artifact.OPTIONAL_FILES):  # model.onnx for ONNX Runtime
            tar.add(trained_job[0] / "model" / name, arcname=name)
    predictor = deploy.deploy(
        "byoc-classifier-serving-cpu:latest", f"file://{tmp_path / 'model.tar.gz'}", session=sdk_session
    )
    try:
        answer = deploy.classify(predictor, sample_data / "test/box/box_000.jpg", top_k=2)
        (prediction,) = answer["predictions"]
        assert prediction["label"] in {"ball", "box", "cone", "ring"} and len(prediction["top_k"]) == 2
        correct = sum(
            deploy.classify(predictor, path)["predictions"][0]["label"] == path.parent.name
            for path in sorted((sample_data / "test").rglob("*_00[0-2].*"))
        )
        assert correct >= 6  # of 12; chance is 3
    finally:
        predictor.delete_endpoint()


def test_sigterm_to_a_local_mode_training_container_keeps_its_checkpoint(sdk_session, sample_data, tmp_path):
    root = sdk_session.config["local"]["container_root"]
    hps = FAST | {"epochs": "20", "num-workers": "1", "log-interval": "1"}
    outcome: dict = {}

    def train() -> None:
        try:
            fit.fit(IMAGE, str(sample_data), hps, output_path=f"file://{tmp_path / 'out'}", session=sdk_session)
        except Exception as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=train)
    runner.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        names = local.containers(root)
        logs = subprocess.run(["docker", "logs", names[0]], capture_output=True, text=True).stdout if names else ""
        if re.search(r"epoch 1 step 3/", logs):
            break
        time.sleep(0.5)
    subprocess.run(["docker", "stop", "-t", "110", names[0]], check=True, capture_output=True)  # SIGTERM first
    runner.join(timeout=120)
    assert isinstance(outcome.get("error"), fit.TrainingFailed)
    assert "stopped by signal in epoch 1" in str(outcome["error"])  # the reason, not docker-compose's command
    copied = subprocess.run(["docker", "cp", f"{names[0]}:/opt/ml/checkpoints/checkpoint.pt", str(tmp_path)])
    assert copied.returncode == 0 and (tmp_path / "checkpoint.pt").stat().st_size > 1_000_000


@pytest.mark.parametrize(("local_mode", "torn_down"), [(True, True), (False, False)])
def test_keep_holds_a_local_endpoint_until_ctrl_c_and_leaves_a_cloud_one(monkeypatch, tmp_path, local_mode, torn_down):
    from local_mode import deploy

    class Predictor:
        sagemaker_session = type("Session", (), {"local_mode": local_mode})()

    waited, deleted = [], []

    def ctrl_c(self, timeout=None):
        waited.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy, "deploy", lambda *args: Predictor())
    monkeypatch.setattr(deploy, "classify", lambda predictor, path: {"predictions": [{"label": "box"}]})
    monkeypatch.setattr(deploy, "teardown", deleted.append)
    monkeypatch.setattr(deploy.threading.Event, "wait", ctrl_c)
    monkeypatch.setattr(deploy.threading, "excepthook", deploy.threading.excepthook)  # restored afterwards
    deploy.main(["--image", "x", "--model-data", "file:///m.tar.gz", "--keep", str(tmp_path / "a.jpg")])
    assert waited == ([True] if local_mode else []) and bool(deleted) is torn_down
