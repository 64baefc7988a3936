"""The Docker images: built offline by the project's scripts, then run as SageMaker runs them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import model_artifact
from tests.conftest import FAST, make_job
from tests.serving import Recorder, free_port, png_bytes, predict, request

pytestmark = pytest.mark.slow
PREFIX = "byoc-classifier"
TRAINING, SERVING_CPU, SERVING_GPU = (f"{PREFIX}-{t}:latest" for t in ("training", "serving-cpu", "serving-gpu"))


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def opt_ml(tmp_path: Path, sample_data: Path, **hyperparameters: str) -> Path:
    """A real /opt/ml folder for a container, with local mode's suffixed host name."""
    channels = {c: sample_data / c for c in ("training", "validation", "test")}
    return make_job(tmp_path / "opt_ml", channels, FAST | hyperparameters, hosts=["algo-1-ab12c"], copy=True)


def test_images_are_built_with_labels_and_tools(images):
    assert "byoc-classifier-training:latest" in images and "serving-cpu" in images
    labels = {i: json.loads(docker("inspect", i, "--format", "{{json .Config.Labels}}").stdout) or {}
              for i in (TRAINING, SERVING_CPU, SERVING_GPU)}  # fmt: skip
    assert labels[SERVING_CPU]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels[SERVING_CPU]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert "com.amazonaws.sagemaker.capabilities.multi-models" not in labels[SERVING_GPU]
    tools = docker(
        "run", "--rm", "--entrypoint", "bash", TRAINING, "-c", "python3 --version; pip --version; command -v train"
    )
    assert "Python 3.11" in tools.stdout and "pip " in tools.stdout and "/opt/venv/bin/train" in tools.stdout


FOUND = "import importlib.util as u, json, sys; print(json.dumps(sorted(m for m in sys.argv[1:] if u.find_spec(m))))"
SERVING_ONLY = ["serve.server", "serve.handler", "serve.gateway", "serve.listener", "serve.runtimes", "model_artifact"]
SERVING_ONLY += ["mms.model_service_worker", "sagemaker_inference.errors", "numpy", "PIL", "uvicorn", "h11"]
NOT_IN_SERVING = [
    "sagemaker_training",
    "matplotlib",
    "scipy",
    "boto3",
    "onnx",
    "onnxscript",
    "train",
    "local_mode",
    "tuning",
    "ecr",
]


def found(image: str, *modules: str) -> list[str]:
    """Which of ``modules`` the image's Python can import."""
    return json.loads(docker("run", "--rm", "--entrypoint", "python", image, "-c", FOUND, *modules).stdout)


def test_each_image_installs_only_what_it_runs(images):
    assert found(SERVING_CPU, "onnxruntime", "torch", "torchvision", *NOT_IN_SERVING) == ["onnxruntime"]
    # script mode on the GPU image: AWS's scripts use sagemaker_inference's decoder/encoder (scipy)
    in_gpu = ["scipy", "torch", "torchvision"]
    assert found(SERVING_GPU, "onnxruntime", "torch", "torchvision", *NOT_IN_SERVING) == in_gpu
    training = ["torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "sagemaker_training", "matplotlib"]
    gpu_only = ["sagemaker_inference.decoder", "sagemaker_inference.encoder"]
    for image, modules in ((SERVING_CPU, SERVING_ONLY), (SERVING_GPU, SERVING_ONLY + gpu_only), (TRAINING, training)):
        # imported, not only found: none of them misses a dependency that was left out
        result = docker("run", "--rm", image, "python", "-c", f"import {', '.join(modules)}", check=False)
        assert result.returncode == 0, f"{image}: {result.stderr[-2000:]}"
    for image in (SERVING_CPU, SERVING_GPU):  # no Java, and not MMS's frontend jar (netty 4.1.91) either
        script = "command -v java; ls /opt/java; find / -xdev -name '*.jar' 2>/dev/null; echo done"
        assert docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout == "done\n"


def test_the_cpu_serving_image_is_small(images):
    size = int(docker("image", "inspect", SERVING_CPU, "--format", "{{.Size}}").stdout)
    assert size <= 1.2e9, f"{SERVING_CPU} is {size / 1e9:.2f} GB"  # issue 11's limit; it was 6.47 GB with torch


def test_no_ca_certificate_of_the_build_machine_is_in_the_images(images):
    host_cas = [p.read_text().strip() for p in Path("/usr/local/share/ca-certificates").glob("*.crt")]
    for image in (TRAINING, SERVING_CPU):
        bundle = docker("run", "--rm", "--entrypoint", "cat", image, "/etc/ssl/certs/ca-certificates.crt", check=False)
        pip_config = docker("run", "--rm", "--entrypoint", "pip", image, "config", "list").stdout
        for ca in host_cas:
            body = "".join(ca.splitlines()[1:-1])
            assert body not in "".join(bundle.stdout.splitlines()), f"a build-machine CA is in {image}"
        assert pip_config.strip() == ""


@pytest.mark.parametrize("command", [["train"], []], ids=["train-argument", "no-argument-sdk-v3"])
def test_training_image_trains(images, sample_data, tmp_path, command):
    base = opt_ml(tmp_path, sample_data, epochs="1")
    result = docker("run", "--rm", "-v", f"{base}:/opt/ml", TRAINING, *command)
    assert result.returncode == 0
    _, meta = model_artifact.load(base / "model")
    assert meta.class_names == ["ball", "box", "cone", "ring"]
    assert (base / "output" / "success").exists() and (base / "output" / "data" / "metrics.json").exists()


def test_training_needs_no_room_in_dev_shm(images, sample_data, tmp_path):
    # SageMaker local mode gives the container Docker's default 64 MB /dev/shm, less than one
    # batch of 512 at 224 px; 8 MB here, less than two of the sample data's batches of 32.
    base = opt_ml(tmp_path, sample_data, epochs="1", **{"image-size": "224", "batch-size": "32", "int8": "false"})
    result = docker("run", "--rm", "--shm-size", "8m", "-v", f"{base}:/opt/ml", TRAINING, "train", check=False)
    failure = base / "output" / "failure"
    assert result.returncode == 0, failure.read_text() if failure.exists() else result.stderr[-2000:]
    assert int(re.search(r"(\d+) loader workers", result.stdout + result.stderr)[1]) >= 1  # batches crossed processes


def test_sigterm_to_a_training_container_leaves_a_checkpoint(images, sample_data, tmp_path):
    base = opt_ml(tmp_path, sample_data, epochs="20", **{"log-interval": "1"})
    name = f"byoc-test-{tmp_path.name[-20:]}".replace("_", "-").lower()
    docker("run", "-d", "--name", name, "-v", f"{base}:/opt/ml", TRAINING, "train")
    try:
        deadline = time.monotonic() + 180
        while not re.search(r"epoch 1 step 3/", docker("logs", name).stdout) and time.monotonic() < deadline:
            time.sleep(0.5)
        started = time.monotonic()
        docker("stop", "-t", "110", name)  # SIGTERM to PID 1, SIGKILL after 110 s
        assert time.monotonic() - started < 60
        state = json.loads(docker("inspect", name, "--format", "{{json .State}}").stdout)
        assert state["ExitCode"] not in (0, 137), "stopped by SIGKILL or not stopped by the signal"
        assert (base / "checkpoints" / "checkpoint.pt").exists()
        assert "stopped by signal in epoch 1" in (base / "output" / "failure").read_text()
    finally:
        docker("rm", "-f", name, check=False)


def test_serving_image_answers_and_stops_cleanly(images, trained_job, sample_data, tmp_path):
    shutil.copytree(trained_job[0] / "model", tmp_path / "model")
    port = free_port()
    cid = docker(
        "run", "-d", "-p", f"127.0.0.1:{port}:8080", "-v", f"{tmp_path}:/opt/ml", SERVING_CPU, "serve"
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if request(port, "/ping", method="GET")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        status, body = predict(port, (sample_data / "test/box/box_002.jpg").read_bytes())
        assert status == 200 and body["predictions"][0]["label"] in {"ball", "box", "cone", "ring"}
        started = time.monotonic()
        docker("stop", "-t", "30", cid)
        assert time.monotonic() - started < 30
        assert json.loads(docker("inspect", cid, "--format", "{{json .State}}").stdout)["ExitCode"] == 0
        assert "model server stopped" in docker("logs", cid).stdout
    finally:
        docker("rm", "-f", cid, check=False)


def start_serving(
    opt_ml: Path, *options: str, port: int | None = None, env: dict | None = None, image: str = SERVING_CPU
) -> tuple[str, int]:
    """A serving container (serving-cpu unless ``image``) on /opt_ml; returns (container id, host port) once
    /ping is 200."""
    port = port or free_port()
    publish = [] if "--network" in options else ["-p", f"127.0.0.1:{port}:8080"]
    variables = [f"--env={k}={v}" for k, v in (env or {}).items()]
    cid = docker("run", "-d", *publish, *options, *variables, "-v", f"{opt_ml}:/opt/ml", image, "serve").stdout
    cid = cid.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if request(port, "/ping", method="GET")[0] == 200:
                return cid, port
        except OSError:
            pass
        time.sleep(0.5)
    logs = docker("logs", cid, check=False).stdout[-3000:]
    docker("rm", "-f", cid, check=False)
    raise AssertionError(f"no /ping 200 within 120 s:\n{logs}")


def readable_copy(model: Path, opt_ml: Path) -> Path:
    """A model under opt_ml/model that any user can read (pytest's folders are root-only)."""
    shutil.copytree(model, opt_ml / "model")
    for path in [opt_ml, *opt_ml.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return opt_ml


PROCESS_USERS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        uid = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")][0]
    except OSError:
        continue
    if any(word in cmd for word in ("bin/serve", "com.amazonaws.ml.mms", "model_service_worker")):
        print(uid, cmd[:80])
"""


def test_serving_runs_unprivileged_and_cannot_change_its_venv_or_model(images, small_model, tmp_path):
    cid, port = start_serving(readable_copy(small_model, tmp_path))
    try:
        users = docker("exec", cid, "python3", "-c", PROCESS_USERS).stdout.splitlines()
        uid = docker("exec", cid, "id", "-u", "model-server").stdout.strip()
        assert len(users) >= 3 and all(line.split()[0] == uid != "0" for line in users), users
        for target in ("/opt/venv/lib/python3.11/site-packages/serve/handler.py", "/tmp/serve-*/model/artifact.json"):
            write = f"for f in {target}; do test -f $f && echo x >> $f; done"  # sh expands the glob in a for
            attempt = docker("exec", "-u", "model-server", cid, "sh", "-c", write, check=False)
            assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, target
        assert predict(port, png_bytes(), "image/png")[0] == 200
    finally:
        docker("rm", "-f", cid, check=False)


@pytest.mark.parametrize(("image", "runtime"), [(SERVING_CPU, "onnxruntime"), (SERVING_GPU, "torch")])
def test_each_serving_image_answers_on_its_runtime(images, small_model, tmp_path, image, runtime):
    """On a CPU: serving-cpu on ONNX Runtime (it has no torch), serving-gpu on PyTorch (it has no onnxruntime)."""
    cid, port = start_serving(readable_copy(small_model, tmp_path), image=image)
    try:
        status, body = predict(port, png_bytes(), "image/png")
        assert status == 200 and body["predictions"][0]["label"] in {"ant", "bee", "cat"}
        assert f"ready on {runtime} " in docker("logs", cid).stdout
    finally:
        docker("rm", "-f", cid, check=False)


def test_serving_image_starts_with_another_user(images, small_model, tmp_path):
    cid, port = start_serving(readable_copy(small_model, tmp_path), "--user", "4321:4321")
    try:
        assert predict(port, png_bytes(), "image/png")[0] == 200
        assert "4321 " in docker("exec", cid, "python3", "-c", PROCESS_USERS).stdout
    finally:
        docker("rm", "-f", cid, check=False)


def test_no_management_door_and_no_download_in_the_container(images, small_model, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    readable_copy(small_model, single)
    readable_copy(small_model, multi / "models" / "shapes")
    recorder = Recorder()  # on the host's loopback: --network host lets the container reach it
    try:
        port = free_port()
        cid, _ = start_serving(single, "--network", "host", port=port, env={"SAGEMAKER_BIND_TO_PORT": port})
        try:
            assert request(port, f"/models?url={recorder.url}&model_name=evil", b"")[0] == 404
            assert request(port, "/models/model", method="DELETE")[0] == 404
            assert predict(port, png_bytes(), "image/png")[0] == 200
        finally:
            docker("rm", "-f", cid, check=False)
        env = {"SAGEMAKER_BIND_TO_PORT": port, "SAGEMAKER_MULTI_MODEL": "true"}
        cid, _ = start_serving(multi, "--network", "host", port=port, env=env)
        try:
            fields = {"model_name": "evil", "url": recorder.url}
            assert request(port, "/models", json.dumps(fields).encode())[0] == 400
            fields = {"model_name": "shapes", "url": "/opt/ml/models/shapes/model"}
            assert request(port, "/models", json.dumps(fields).encode())[0] == 200
            assert request(port, "/models/shapes/invoke", png_bytes(), **{"Content-Type": "image/png"})[0] == 200
        finally:
            docker("rm", "-f", cid, check=False)
        assert recorder.seen == []
    finally:
        recorder.close()
