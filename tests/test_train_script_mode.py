"""Training script mode: the user's entry point instead of our trainer, on the host and in the image."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from sagemaker_training import environment, errors, runner

from tests.conftest import TRAIN_BIN, failure_text, job_env, make_job, tiny_wheel
from train import script_mode
from train.config import available_cpus

IMAGE = "byoc-classifier-training:latest"
ECHO = """
    import json, os, sys
    from pathlib import Path
    seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), **{k: v for k, v in os.environ.items() if k.startswith("SM_")}}
    Path(os.environ["SM_MODEL_DIR"]).mkdir(parents=True, exist_ok=True)
    Path(os.environ["SM_MODEL_DIR"], "seen.json").write_text(json.dumps(seen))
"""
FAILING = """
    import sys
    print("starting", flush=True)
    raise ValueError("lr must be positive,\\nnot " + sys.argv[-1])
"""
# Saves a checkpoint when SIGTERM comes, as a course script does for spot training.
CHECKPOINTING = """
    import os, signal, sys, time
    from pathlib import Path

    def stop(signum, frame):
        folder = Path(os.environ["SM_OUTPUT_DIR"]).parent / "checkpoints"
        folder.mkdir(exist_ok=True)
        (folder / "checkpoint.txt").write_text(f"saved on {signal.Signals(signum).name}")
        print("checkpoint saved", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    print("ready for a signal", flush=True)
    time.sleep(120)
    sys.exit("no signal came")
"""


def script_job(tmp_path: Path, script: str, hps: dict | None = None, requirements: str | None = None,
               hosts: list[str] | None = None, submit_dir: str | None = None) -> Path:  # fmt: skip
    """A job folder whose hyperparameters name ``train_model.py`` in a source folder, as SDK v2 writes them."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "train_model.py").write_text(textwrap.dedent(script))
    if requirements:
        (source / "requirements.txt").write_text(requirements)
    program = {"sagemaker_program": "train_model.py", "sagemaker_submit_directory": submit_dir or str(source)}
    base = make_job(tmp_path / "job", {}, (hps or {}) | program, hosts=hosts or ["localhost"], quote=True)
    return base


def start_train(base: Path, **env: str) -> subprocess.Popen:
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen([str(TRAIN_BIN)], env=job_env(base, **env), **output)


def wait_for(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """The output of ``process`` up to the line that contains ``text``."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and (line := process.stdout.readline()):
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"{text!r} did not come:\n{''.join(seen)[-3000:]}")


def toolkit_env(hyperparameters: dict, hosts: int = 1) -> environment.Environment:
    names = [f"algo-{i + 1}" for i in range(hosts)]
    resource = {"current_host": "algo-1", "hosts": names, "network_interface_name": "lo"}
    return environment.Environment(resource_config=resource, input_data_config={}, hyperparameters=hyperparameters)


def test_the_runner_follows_distribution_as_in_aws_pytorch_container():
    program = {"sagemaker_program": "train_model.py"}
    assert not script_mode.requested(toolkit_env({"lr": 0.1}))
    assert script_mode.requested(toolkit_env(program))
    assert script_mode.runner_type(toolkit_env(program, hosts=2)) is runner.ProcessRunnerType
    torchrun = program | {"sagemaker_torch_distributed_enabled": True}
    assert script_mode.runner_type(toolkit_env(torchrun, hosts=2)) is runner.TorchDistributedRunnerType
    off = program | {"sagemaker_torch_distributed_enabled": False}
    assert script_mode.runner_type(toolkit_env(off, hosts=2)) is runner.ProcessRunnerType
    with pytest.raises(errors.ClientError, match=r"^sagemaker_mpi_enabled is not supported by this image: use"):
        script_mode.runner_type(toolkit_env(program | {"sagemaker_mpi_enabled": True}))


def test_a_long_script_error_keeps_its_end_on_one_line():
    output = "noise line\n" * 500 + "ValueError: lr must be positive\n"
    command = "/opt/venv/bin/python -- train_model.py --lr -1"
    exc = errors.ExecuteUserScriptError(cmd=command, return_code=1, output=output)
    reason = script_mode.failure_reason(exc, [])
    assert len(reason) <= 1024 and "\n" not in reason
    assert reason.startswith('ExecuteUserScriptError: ExitCode 1 ErrorMessage "...')
    assert reason.endswith('ValueError: lr must be positive" Command "/opt/venv/bin/python -- train_model.py --lr -1"')
    assert script_mode.failure_reason(exc, [signal.SIGTERM]).startswith("stopped by SIGTERM: ExecuteUserScriptError")


def test_pip_defaults_give_way_to_the_users_pip_configuration(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configuration files at all
    defaults = {"PIP_DEFAULT_TIMEOUT": "10", "PIP_RETRIES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert script_mode.pip_defaults() == defaults
    monkeypatch.setenv("PIP_RETRIES", "3")
    assert "PIP_RETRIES" not in script_mode.pip_defaults()
    (tmp_path / "pip.conf").write_text("[install]\ntimeout = 60\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    assert script_mode.pip_defaults() == {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_a_user_entry_point_runs_instead_of_the_builtin_trainer(tmp_path):
    base = script_job(tmp_path, ECHO, {"lr": "0.1", "batch-size": "32"})
    result = subprocess.run([str(TRAIN_BIN)], env=job_env(base), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads((base / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--batch-size", "32", "--lr", "0.1"]  # the toolkit's order: sorted
    assert json.loads(seen["SM_HPS"]) == {"lr": "0.1", "batch-size": "32"}  # no sagemaker_* keys
    assert seen["cwd"] == str(base / "code") and (base / "code" / "train_model.py").is_file()  # fetched there
    assert seen["SM_NUM_CPUS"] == str(available_cpus()) and seen["SM_CURRENT_HOST"] == "localhost"
    assert (base / "output" / "success").exists() and not (base / "output" / "data" / "metrics.json").exists()


@pytest.mark.slow
def test_a_failing_script_fails_the_job_as_the_toolkit_does(tmp_path):
    base = script_job(tmp_path, FAILING, {"lr": "-1"})
    result = subprocess.run([str(TRAIN_BIN)], env=job_env(base), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    reason = failure_text(base)
    assert reason.count("\n") == 1 and reason.startswith('ExecuteUserScriptError: ExitCode 1 ErrorMessage "'), reason
    # the toolkit re-prints the output as it reads it: "ValueError" and ": lr ..." may come apart
    assert re.search(r"ValueError:? lr must be positive, not -1", reason), reason
    assert reason.rstrip().endswith(f'Command "{TRAIN_BIN.parent / "python"} -- train_model.py --lr -1"')


@pytest.fixture
def blackhole() -> str:
    """An index URL whose server accepts connections and never answers (a network-isolated job)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"


@pytest.mark.slow
def test_a_requirement_that_cannot_be_installed_fails_fast_with_one_line(tmp_path, blackhole):
    base = script_job(tmp_path, ECHO, requirements="does-not-exist-pkg==1.0\n")
    env = {k: v for k, v in job_env(base).items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": blackhole, "PIP_DEFAULT_TIMEOUT": "1"}  # the user's timeout
    result = subprocess.run([str(TRAIN_BIN)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert failure_text(base) == (
        "requirements.txt could not be installed (pip exit code 1): No matching distribution found for "
        "does-not-exist-pkg==1.0 (the package index could not be reached: no network?)\n"
    )
    assert "read timeout=1" in result.stdout  # the user's setting won; our retries=1 gave one retry, not pip's five
    assert result.stdout.count("WARNING: Retrying") == 1, result.stdout[-3000:]
    assert not (base / "model" / "seen.json").exists()


@pytest.mark.slow
def test_sigterm_reaches_the_script_which_saves_its_checkpoint(tmp_path):
    base = script_job(tmp_path, CHECKPOINTING)
    train = start_train(base)
    wait_for(train, "ready for a signal")
    train.send_signal(signal.SIGTERM)
    log = train.communicate(timeout=60)[0]
    assert train.returncode == 1, log[-3000:]
    assert (base / "checkpoints" / "checkpoint.txt").read_text() == "saved on SIGTERM"
    reason = failure_text(base)
    assert reason.startswith('stopped by SIGTERM: ExecuteUserScriptError: ExitCode 143 ErrorMessage ""'), reason


@pytest.mark.slow
def test_sigterm_before_the_script_starts_stops_the_job(tmp_path):
    base = script_job(tmp_path, ECHO, hosts=["localhost", "algo-2.invalid"])  # the toolkit waits for algo-2's DNS
    train = start_train(base)
    wait_for(train, "script mode: running train_model.py")
    time.sleep(1)
    train.send_signal(signal.SIGTERM)
    log = train.communicate(timeout=60)[0]
    assert train.returncode == 1, log[-3000:]
    assert failure_text(base) == "stopped by SIGTERM before the training script started\n"
    assert not (base / "model" / "seen.json").exists()


def docker_train(base: Path, name: str, *options: str) -> subprocess.Popen:
    """``docker run IMAGE train`` on a job folder, as SageMaker starts the container."""
    command = ["docker", "run", "--name", name, *options, "-v", f"{base}:/opt/ml", IMAGE, "train"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_in_the_image_requirements_install_offline_and_sigterm_reaches_the_script(images, tmp_path, launcher):
    probe = "import byoc_train_probe\nprint(f'probe {byoc_train_probe.VALUE}', flush=True)\n"
    script = probe + textwrap.dedent(CHECKPOINTING)
    hps = {"sagemaker_torch_distributed_enabled": "true"} if launcher == "torchrun" else {}
    base = script_job(tmp_path, script, hps, submit_dir="/opt/ml/code")
    (base / "code").mkdir()
    for path in (tmp_path / "src").iterdir():
        path.rename(base / "code" / path.name)
    tiny_wheel(base / "code", "byoc_train_probe")
    (base / "code" / "requirements.txt").write_text("./byoc_train_probe-0.1-py3-none-any.whl\n")
    name = f"script-mode-{uuid.uuid4().hex[:8]}"
    container = docker_train(base, name, "--network", "none", "--hostname", "localhost")  # torchrun resolves it
    try:
        log = wait_for(container, "ready for a signal")
        assert re.search(r"Successfully installed byoc.train.probe-0.1", log) and "probe 42" in log, log[-3000:]
        subprocess.run(["docker", "stop", "-t", "60", name], check=True, capture_output=True)  # SIGTERM to tini
        log += container.communicate(timeout=60)[0]
        assert container.returncode == 1, log[-3000:]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    command = {"python": "/opt/venv/bin/python3 -- train_model.py", "torchrun": "torchrun --nnodes 1 --nproc_per_node"}
    assert f"Invoking script with the following command:\n\n{command[launcher]}" in log
    assert (base / "checkpoints" / "checkpoint.txt").read_text() == "saved on SIGTERM"  # torchrun's worker too
    assert failure_text(base).startswith("stopped by SIGTERM: ExecuteUserScriptError: ExitCode ")


@pytest.mark.slow
def test_in_the_image_a_bad_requirement_fails_fast(images, tmp_path):
    base = script_job(tmp_path, ECHO, requirements="does-not-exist-pkg==1.0\n", submit_dir="/opt/ml/code")
    (tmp_path / "src").rename(base / "code")
    name = f"script-mode-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    container = docker_train(base, name)  # the default network: PyPI is unreachable or refused here
    try:
        log = container.communicate(timeout=300)[0]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert container.returncode == 1 and time.monotonic() - started < 90, log[-3000:]
    reason = failure_text(base)
    assert reason.startswith(
        "requirements.txt could not be installed (pip exit code 1): No matching distribution found for "
        "does-not-exist-pkg==1.0"
    ), log[-3000:]
    assert reason.count("\n") == 1 and log.count("WARNING: Retrying") <= 1
