"""Serving script mode through SDK v2 local mode and the PyTorch serving image (serving-gpu, which
runs on CPUs too): ``Model(entry_point=..., source_dir=...)`` on a model packed for AWS's PyTorch
containers and on ours; requirements offline; a link in the model folder; and the CPU image
(ONNX Runtime, no torch) refusing script mode in one line."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from local_mode import deploy
from tests.serving import png_bytes
from tests.test_serve_script_mode import EXAMPLE, code_with_requirement, dlc_model

pytestmark = pytest.mark.slow
SERVING = "byoc-classifier-serving-gpu:latest"  # script mode needs PyTorch: not in serving-cpu
SERVING_CPU = "byoc-classifier-serving-cpu:latest"
SERVED_BY = "examples/script_mode/inference.py"


def pack(model_dir: Path, folder: Path) -> str:
    """model.tar.gz of ``model_dir``'s files, alone in ``folder``: the SDK repacks it in place and
    local mode unpacks it beside itself."""
    folder.mkdir()
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return f"file://{folder / 'model.tar.gz'}"


def ask(predictor, body: bytes, content_type: str) -> dict:
    return predictor.predict(body, initial_args={"ContentType": content_type})


def test_sdk_script_mode_serves_a_dlc_style_model_with_requirements(sdk_session, tmp_path):
    model = dlc_model(tmp_path / "model", classes=4)
    shutil.rmtree(model / "code")  # the SDK packs source_dir into code/
    (model / "labels.txt").write_text("ball\nbox\ncone\nring\n")
    source = code_with_requirement(tmp_path / "source")
    predictor = deploy.deploy(SERVING, pack(model, tmp_path / "packed"), session=sdk_session,
                              entry_point="inference.py", source_dir=str(source))  # fmt: skip
    try:
        answer = ask(predictor, png_bytes(), "image/png")
        assert answer["served_by"] == SERVED_BY and answer["helper"] == 42  # the user's output_fn, its requirement
        assert answer["label"] in {"ball", "box", "cone", "ring"}  # the user's model_fn read labels.txt
        body = f'{{"b64": "{base64.b64encode(png_bytes()).decode()}"}}'.encode()
        assert ask(predictor, body, "application/json")["served_by"] == SERVED_BY
    finally:
        predictor.delete_endpoint()
    with tarfile.open(tmp_path / "packed" / "model.tar.gz") as tar:  # what SageMaker would get
        assert "code/inference.py" in tar.getnames() and "code/requirements.txt" in tar.getnames()


def test_sdk_script_mode_serves_our_artifact(sdk_session, small_model, tmp_path):
    predictor = deploy.deploy(SERVING, pack(small_model, tmp_path / "packed"), session=sdk_session,
                              entry_point="inference.py", source_dir=str(EXAMPLE))  # fmt: skip
    try:
        answer = ask(predictor, png_bytes(), "image/png")
        assert answer["served_by"] == SERVED_BY and answer["label"] in {"ant", "bee", "cat"}  # artifact.json's
    finally:
        predictor.delete_endpoint()


def serve_container(model: Path, *env: str, image: str = SERVING, timeout: float = 90) -> tuple[int, str, float]:
    """Run ``serve`` with no network until it exits; (exit status, log, seconds)."""
    args = [f"--env={e}" for e in env]
    started = time.monotonic()
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{model}:/opt/ml/model:ro", *args,
                          image, "serve"], capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return run.returncode, run.stdout + run.stderr, time.monotonic() - started


@pytest.mark.parametrize("problem", ["requirement", "link"])
def test_script_mode_in_the_container_stops_at_once_with_one_line(images, tmp_path, problem):
    model = dlc_model(tmp_path / "model")
    if problem == "requirement":
        (model / "code" / "requirements.txt").write_text("surely-not-a-package-here==9.9\n")
        expected = "No matching distribution found for surely-not-a-package-here==9.9"
    else:
        (model / "code" / "etc").symlink_to("/etc")
        expected = "/opt/ml/model/code/etc is a symbolic link: refused"
    status, log, seconds = serve_container(model, "SAGEMAKER_PROGRAM=inference.py")
    assert status == 1 and seconds < 60, log[-3000:]
    (line,) = [line for line in log.splitlines() if "script mode cannot start" in line]
    assert expected in line and "Traceback" not in log


def test_the_cpu_image_refuses_script_mode_in_one_line_naming_the_pytorch_image(images, tmp_path):
    model = dlc_model(tmp_path / "model")
    status, log, seconds = serve_container(model, "SAGEMAKER_PROGRAM=inference.py", image=SERVING_CPU)
    assert status == 1 and seconds < 60, log[-3000:]
    (line,) = [line for line in log.splitlines() if "script mode cannot start" in line]
    assert "SAGEMAKER_PROGRAM=inference.py needs PyTorch" in line, line
    assert "serve script mode with byoc-classifier-serving-gpu, which runs on CPU instances too" in line
    assert "Traceback" not in log and "pre-flight" not in log


@pytest.mark.parametrize(
    "image,runtime,other",
    [(SERVING_CPU, "torch", "byoc-classifier-serving-gpu"), (SERVING, "onnx", "byoc-classifier-serving-cpu")],
    ids=["serving-cpu-torch", "serving-gpu-onnx"],
)
def test_an_image_refuses_a_runtime_it_does_not_have_naming_the_image_that_has_it(images, small_model, tmp_path,
                                                                                  image, runtime, other):  # fmt: skip
    model = shutil.copytree(small_model, tmp_path / "model")
    for path in [model, *model.rglob("*")]:  # readable by the server's unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    status, log, seconds = serve_container(model, f"SERVE_RUNTIME={runtime}", image=image)
    assert status == 1 and seconds < 60, log[-3000:]
    (line,) = [line for line in log.splitlines() if "cannot serve" in line]
    assert f"SERVE_RUNTIME={runtime} is not installed in this image: use auto, or the image {other}" in line, line
    assert "Traceback" not in log
