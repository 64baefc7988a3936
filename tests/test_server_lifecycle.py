"""Starting and stopping the real server: broken artifacts, SIGTERM, multi-model, batching."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import psutil
import pytest

import model_artifact
from tests.serving import Server, mms_processes, predict, request
from train.artifact import write_metadata

pytestmark = pytest.mark.slow


@pytest.fixture
def artifact(trained_job):
    return trained_job[0] / "model"


def wait_exit(server: Server, timeout: float = 60) -> int:
    try:
        return server.process.wait(timeout=timeout)
    finally:
        server.kill_leftovers()


@pytest.mark.parametrize(
    "runtime,precision,name",
    [("onnx", "fp32", model_artifact.ONNX_FILE), ("onnx", "int8", model_artifact.INT8_FILE),
     ("torch", "auto", model_artifact.WEIGHTS_FILE)],
)  # fmt: skip
def test_a_broken_artifact_stops_the_container_with_the_reason(artifact, tmp_path, runtime, precision, name):
    """The file that the runtime reads was changed after training: its checksum stops the server."""
    shutil.copytree(artifact, tmp_path / "model")
    with open(tmp_path / "model" / name, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupted")
    server = Server(tmp_path, SERVE_RUNTIME=runtime, SERVE_PRECISION=precision)
    assert wait_exit(server) == 1
    assert "cannot serve" in server.log and "checksum" in server.log and name in server.log
    assert "Traceback" not in server.log and not mms_processes()
    assert server.left_in_tmp == [], "the failed start left its staged model behind"


def test_a_missing_model_stops_the_container(tmp_path):
    server = Server(tmp_path)
    assert wait_exit(server) == 1
    assert "artifact.json not found" in server.log


def test_an_artifact_without_model_onnx_stops_onnx_runtime_naming_export_onnx(small_model, tmp_path):
    """An artifact written before ONNX export: one line that says to run export-onnx or use the PyTorch image."""
    shutil.copytree(small_model, tmp_path / "model")
    (tmp_path / "model" / model_artifact.ONNX_FILE).unlink()
    meta = model_artifact.load_metadata(tmp_path / "model")
    meta.onnx_sha256 = ""
    write_metadata(tmp_path / "model", meta)
    server = Server(tmp_path, SERVE_RUNTIME="onnx")
    assert wait_exit(server) == 1
    (line,) = [line for line in server.log.splitlines() if "cannot serve" in line]
    assert "`export-onnx`" in line and "byoc-classifier-serving-gpu" in line, server.log
    assert "Traceback" not in server.log and not mms_processes()


@pytest.mark.parametrize(
    "env,message",
    [
        ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "SAGEMAKER_BIND_TO_PORT='70000' must be between 1 and 65535"),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "two"}, "SAGEMAKER_MODEL_SERVER_WORKERS='two' is not an integer"),
        ({"SERVE_RUNTIME": "tensorrt"}, "SERVE_RUNTIME='tensorrt' must be one of auto, onnx, torch"),
        ({"SERVE_THREADS": "0"}, "SERVE_THREADS='0' must be between 1 and any"),
    ],
)
def test_bad_settings_are_named(tmp_path, env, message):
    server = Server(tmp_path, **env)
    assert wait_exit(server, 30) != 0
    assert message in server.log


def test_sigterm_stops_server_and_workers_cleanly(artifact, tmp_path, sample_data):
    shutil.copytree(artifact, tmp_path / "model")
    server = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    server.wait_healthy()
    assert predict(server.port, (sample_data / "test/box/box_000.jpg").read_bytes())[0] == 200
    seconds = server.stop()
    assert server.process.returncode == 0 and seconds < 30
    assert not mms_processes() and not server.kill_leftovers()
    assert server.left_in_tmp == [], "the stopped server left its staged model behind"


def test_multi_model_load_list_invoke_unload(artifact, tmp_path, sample_data):
    for name in ("shapes", "shapes-v2"):
        shutil.copytree(artifact, tmp_path / "models" / name / "model")
    server = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true")
    try:
        server.wait_healthy()
        for name in ("shapes", "shapes-v2"):  # as SageMaker's multi-model platform calls it
            body = json.dumps({"model_name": name, "url": str(tmp_path / "models" / name / "model")}).encode()
            status, answer = request(server.port, "/models", body, **{"Content-Type": "application/json"})
            assert status == 200, answer
        status, listing = request(server.port, "/models", method="GET")
        assert {m["modelName"] for m in listing["models"]} == {"shapes", "shapes-v2"}
        image = (sample_data / "test/ring/ring_000.jpg").read_bytes()
        status, answer = request(server.port, "/models/shapes/invoke", image, **{"Content-Type": "image/jpeg"})
        assert status == 200 and answer["predictions"][0]["label"] in {"ball", "box", "cone", "ring"}
        assert request(server.port, "/models/shapes", method="DELETE")[0] == 200
        assert request(server.port, "/models/shapes/invoke", image, **{"Content-Type": "image/jpeg"})[0] == 404
        assert request(server.port, "/models/shapes-v2/invoke", image, **{"Content-Type": "image/jpeg"})[0] == 200
        body = json.dumps({"model_name": "broken", "url": str(tmp_path / "nowhere")}).encode()
        assert request(server.port, "/models", body, **{"Content-Type": "application/json"})[0] >= 400
        assert request(server.port, "/models/shapes-v2/invoke", image, **{"Content-Type": "image/jpeg"})[0] == 200
        assert_no_java_and_private_worker_sockets(server)
    finally:
        assert server.stop() < 30
    assert not mms_processes()


def assert_no_java_and_private_worker_sockets(server: Server) -> None:
    """Multi-model endpoints run the same stack as single-model ones: MMS's Python workers on
    Unix sockets in a private folder, behind the one listener; no Java frontend."""
    processes = psutil.Process(server.process.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in processes]
    assert not [c for c in commands if "java" in c or "com.amazonaws.ml.mms" in c]
    workers = [c for c in commands if "mms.model_service_worker" in c]
    assert workers and all("--model-name shapes-v2" in c for c in workers)  # the unloaded model's are gone
    folder = Path(re.search(r"--sock-name (\S+)", workers[0]).group(1)).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    listening = {c.laddr.port for p in [psutil.Process(server.process.pid), *processes]
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}  # fmt: skip
    assert listening == {server.port}


def plant_code(model: Path, marker: Path) -> None:
    """Everything a hostile model.tar.gz could use to run code in MMS's workers or at start-up."""
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("model_artifact.py", "evil.py", "serve/__init__.py", "serve/handler.py", "code/inference.py",
                 "code/model_artifact.py", "torch.py", "PIL/__init__.py", "onnxruntime.py",
                 "numpy/__init__.py"):  # fmt: skip
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text(payload)
    (model / "evil.py").write_text(payload + "def handle(data, context):\n    return ['pwned']\n")
    (model / "MAR-INF").mkdir()
    manifest = {"model": {"modelName": "model", "handler": "evil:handle"}, "runtime": "python3"}
    (model / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    package = model / "code" / "evil_package"
    package.mkdir()
    (package / "setup.py").write_text(payload + "from setuptools import setup\nsetup(name='evil')\n")
    (model / "code" / "requirements.txt").write_text(f"-e {package}\n")
    (model / "etc").symlink_to("/etc")


def test_code_in_the_model_folder_never_runs(small_model, tmp_path, sample_data):
    shutil.copytree(small_model, tmp_path / "model")
    marker = tmp_path / "ran"
    plant_code(tmp_path / "model", marker)
    # script mode's other variables, without SAGEMAKER_PROGRAM: still nothing is imported
    code = str(tmp_path / "model" / "code")
    server = Server(tmp_path, SAGEMAKER_SUBMIT_DIRECTORY=code, SERVE_SCRIPT_CODE_DIR=code, SERVE_SCRIPT_SITE_DIR=code)
    try:
        server.wait_healthy()
        status, answer = predict(server.port, (sample_data / "test/box/box_000.jpg").read_bytes())
        assert status == 200 and answer["predictions"][0]["label"] in {"ant", "bee", "cat"}
    finally:
        server.stop()
    assert not marker.exists(), marker.read_text()
    assert "not used from" in server.log and "MAR-INF" in server.log and "script mode" not in server.log


def test_a_linked_weights_file_is_refused(small_model, tmp_path):
    shutil.copytree(small_model, tmp_path / "model")
    weights = tmp_path / "model" / model_artifact.WEIGHTS_FILE
    weights.rename(tmp_path / "real.pt")
    weights.symlink_to(tmp_path / "real.pt")
    server = Server(tmp_path)
    assert wait_exit(server) == 1
    assert "is a symbolic link: refused" in server.log and "Traceback" not in server.log
