"""Script mode on the server's side: staging, requirements, refusals, and the real server."""

from __future__ import annotations

import base64
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import model_artifact
from serve import script_mode, script_service
from serve.settings import Settings
from tests.conftest import REPO, tiny_wheel
from tests.serving import Server, png_bytes, predict

EXAMPLE = REPO / "examples" / "script_mode"


def settings(monkeypatch, **env: str) -> Settings:
    for name in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_MULTI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def dlc_model(folder: Path, classes: int = 3) -> Path:
    """model.pth and the course-style example in code/, as AWS's PyTorch containers take a model."""
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    torch.save(model_artifact.build_model("resnet18", classes).state_dict(), folder / "model.pth")
    shutil.copytree(EXAMPLE, folder / "code")
    return folder


def test_staging_copies_model_and_code_read_only(monkeypatch, tmp_path):
    model = dlc_model(tmp_path / "model")
    (model / "extra" / "deep").mkdir(parents=True)
    (model / "extra" / "deep" / "labels.txt").write_text("a\nb\nc\n")
    staged = script_mode.stage(settings(monkeypatch, SAGEMAKER_PROGRAM="inference.py"), model, tmp_path / "run")
    assert staged.code_dir == staged.model_dir / "code" and (staged.code_dir / "inference.py").is_file()
    assert (staged.model_dir / "extra" / "deep" / "labels.txt").read_text() == "a\nb\nc\n"
    assert {oct(p.stat().st_mode & 0o777) for p in staged.model_dir.rglob("*")} == {"0o444", "0o555"}


def test_the_submit_directory_wins_when_it_has_the_program(monkeypatch, tmp_path):
    model = dlc_model(tmp_path / "model")
    mounted = shutil.copytree(EXAMPLE, tmp_path / "opt_ml_code")  # SDK local mode mounts source_dir here
    env = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(mounted)}
    staged = script_mode.stage(settings(monkeypatch, **env), model, tmp_path / "run")
    assert staged.code_dir == tmp_path / "run" / "code"
    env["SAGEMAKER_SUBMIT_DIRECTORY"] = "/opt/ml/model/code"  # what SageMaker sets; not there on this host
    assert script_mode.code_dir(settings(monkeypatch, **env), model) == model / "code"
    env["SAGEMAKER_PROGRAM"] = "serve.py"
    with pytest.raises(script_mode.ScriptModeError, match=r"'serve.py' is not in /opt/ml/model/code or"):
        script_mode.code_dir(settings(monkeypatch, **env), model)


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_links_and_special_files_in_the_model_are_refused(monkeypatch, tmp_path, kind):
    model = dlc_model(tmp_path / "model")
    if kind == "link":
        (model / "code" / "etc").symlink_to("/etc")
    else:
        os.mkfifo(model / "pipe")
    with pytest.raises(script_mode.ScriptModeError, match="symbolic link: refused" if kind == "link" else "refused"):
        script_mode.stage(settings(monkeypatch, SAGEMAKER_PROGRAM="inference.py"), model, tmp_path / "run")


def test_multi_model_endpoints_refuse_script_mode(monkeypatch, tmp_path):
    env = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_MULTI_MODEL": "true"}
    with pytest.raises(script_mode.ScriptModeError, match="not supported on a multi-model endpoint"):
        script_mode.stage(settings(monkeypatch, **env), dlc_model(tmp_path / "model"), tmp_path / "run")


def test_an_image_without_torch_refuses_script_mode_naming_the_pytorch_image(monkeypatch, tmp_path):
    """The CPU image runs ONNX Runtime only; a user's model_fn needs PyTorch."""
    installed = script_mode.runtimes.installed
    monkeypatch.setattr(script_mode.runtimes, "installed", lambda module: module != "torch" and installed(module))
    with pytest.raises(script_mode.ScriptModeError) as refusal:
        script_mode.stage(settings(monkeypatch, SAGEMAKER_PROGRAM="inference.py"), dlc_model(tmp_path / "model"),
                          tmp_path / "run")  # fmt: skip
    reason = str(refusal.value)
    assert reason.startswith("SAGEMAKER_PROGRAM=inference.py needs PyTorch") and "\n" not in reason
    assert "byoc-classifier-serving-gpu, which runs on CPU instances too" in reason
    assert not (tmp_path / "run").exists()  # refused before anything is copied


def test_requirements_install_into_a_private_prefix_or_fail_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as offline as a container here: nothing to download from
    code = tmp_path / "code"
    code.mkdir()
    assert script_mode.install_requirements(code, tmp_path / "prefix") is None
    tiny_wheel(code)
    (code / "requirements.txt").write_text("./byoc_helper-0.1-py3-none-any.whl\n")
    site = script_mode.install_requirements(code, tmp_path / "prefix")
    assert (site / "byoc_helper.py").read_text() == "VALUE = 42\n"
    (code / "requirements.txt").write_text("surely-not-a-package-here==9.9\n")
    with pytest.raises(script_mode.ScriptModeError) as failure:
        script_mode.install_requirements(code, tmp_path / "prefix2")
    assert "\n" not in str(failure.value)
    assert "requirements.txt: No matching distribution found for surely-not-a-package-here==9.9" in str(failure.value)


def test_without_script_mode_no_worker_is_told_of_code(monkeypatch, tmp_path):
    monkeypatch.setenv(script_service.CODE_DIR_ENV, str(tmp_path))  # whoever set it, serve unsets it
    monkeypatch.setenv(script_service.SITE_DIR_ENV, str(tmp_path))
    script_mode.activate(None, tmp_path)
    assert script_service.CODE_DIR_ENV not in os.environ and script_service.SITE_DIR_ENV not in os.environ
    assert not script_service.enabled()


WITH_REQUIREMENT = """
    import byoc_helper  # from code/requirements.txt
    from course import input_fn, model_fn, predict_fn  # the example, beside this file
    from course import output_fn as course_output_fn


    def output_fn(prediction, accept):
        return course_output_fn(prediction | {"helper": byoc_helper.VALUE}, accept)
"""


def code_with_requirement(folder: Path) -> Path:
    """The example as course.py, under an inference.py that imports a module from requirements.txt."""
    shutil.copytree(EXAMPLE, folder, dirs_exist_ok=True)
    shutil.move(folder / "inference.py", folder / "course.py")
    (folder / "inference.py").write_text(textwrap.dedent(WITH_REQUIREMENT))
    tiny_wheel(folder)
    (folder / "requirements.txt").write_text("./byoc_helper-0.1-py3-none-any.whl\n")
    return folder


@pytest.mark.slow
def test_the_server_runs_a_dlc_style_model_with_its_requirements(tmp_path):
    model = dlc_model(tmp_path / "model")
    code_with_requirement(model / "code")
    server = Server(tmp_path, SAGEMAKER_PROGRAM="inference.py", SAGEMAKER_SUBMIT_DIRECTORY="/opt/ml/model/code",
                    SAGEMAKER_CONTAINER_LOG_LEVEL="20", PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)  # fmt: skip
    try:
        server.wait_healthy()
        status, answer = predict(server.port, png_bytes(), "image/png")
        assert status == 200 and answer["helper"] == 42 and answer["served_by"] == "examples/script_mode/inference.py"
        body = json.dumps({"b64": base64.b64encode(png_bytes()).decode()}).encode()
        assert predict(server.port, body, "application/json")[1]["label"] in {"0", "1", "2"}
        status, answer = predict(server.port, b"x", "text/plain")
        assert (status, answer) == (415, {"error": "unsupported content type text/plain", "status": 415})
        status, answer = predict(server.port, b"not an image", "image/jpeg")  # the example's own bug: a 500
        assert status == 500 and answer["error"].startswith("input_fn failed") and "\n" not in answer["error"]
        assert predict(server.port, png_bytes(), "image/png")[0] == 200
    finally:
        server.stop()
    assert "script mode: inference.py from" in server.log
    assert "pre-flight: script mode: inference.py defines" in server.log


@pytest.mark.slow
def test_script_mode_on_a_multi_model_endpoint_stops_with_the_reason(tmp_path):
    (tmp_path / "models").mkdir()
    server = Server(tmp_path, SAGEMAKER_PROGRAM="inference.py", SAGEMAKER_MULTI_MODEL="true",
                    SAGEMAKER_CONTAINER_LOG_LEVEL="30")  # fmt: skip
    assert server.process.wait(timeout=60) == 1
    assert "script mode cannot start: SAGEMAKER_PROGRAM is not supported on a multi-model endpoint" in server.log
    assert "settings:" not in server.log  # an INFO line, below the SDK's log level 30
