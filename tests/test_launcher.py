"""The launcher and the ``train`` executable: our defaults over the toolkit's gaps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sagemaker_training import environment, errors

from tests.conftest import FAST, failure_text, make_job, run_train
from train import cli, launcher
from train.config import available_cpus


def toolkit_env(tmp_path) -> environment.Environment:
    resource = {
        "current_host": "algo-2-k3j4x",
        "hosts": ["algo-1-a1b2c", "algo-2-k3j4x"],
        "network_interface_name": "lo",
    }
    return environment.Environment(
        resource_config=resource, input_data_config={"training": {}}, hyperparameters={"lr": 0.1}
    )


def test_children_get_toolkit_variables_and_corrected_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_count", lambda: 0)
    (child,) = launcher.child_environments(toolkit_env(tmp_path))
    assert child["SM_NUM_CPUS"] == str(available_cpus()) and child["SM_NUM_GPUS"] == "0"
    assert json.loads(child["SM_HPS"]) == {"lr": 0.1} and json.loads(child["SM_CHANNELS"]) == ["training"]
    assert (child["RANK"], child["WORLD_SIZE"], child["MASTER_ADDR"]) == ("1", "2", "algo-1-a1b2c")
    assert child["GLOO_SOCKET_IFNAME"] == "lo"


def test_one_process_per_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "gpu_count", lambda: 4)
    children = launcher.child_environments(toolkit_env(tmp_path))
    assert [c["RANK"] for c in children] == ["4", "5", "6", "7"]
    assert {c["WORLD_SIZE"] for c in children} == {"8"} and children[3]["LOCAL_RANK"] == "3"


def test_the_train_executable_is_ours():
    script = Path(sys.executable).parent / "train"
    assert "from train.cli import main" in script.read_text()
    assert cli.FRAMEWORK_MODULE == "train.launcher:main"


def _toolkit(monkeypatch, tmp_path, env: environment.Environment) -> None:
    """The launcher in-process: this environment, failure file in tmp_path/output."""
    monkeypatch.setattr(environment, "Environment", lambda: env)
    monkeypatch.setattr(environment, "output_dir", str(tmp_path / "output"))


def test_a_training_error_in_the_launcher_is_the_toolkits_client_error(tmp_path, monkeypatch):
    resource = {"current_host": "algo-9", "hosts": ["algo-1"], "network_interface_name": "lo"}
    env = environment.Environment(resource_config=resource, input_data_config={"training": {}}, hyperparameters={})
    _toolkit(monkeypatch, tmp_path, env)
    with pytest.raises(errors.ClientError) as err:
        launcher.main()
    assert str(err.value) == "current host 'algo-9' is not in the host list ['algo-1']"
    assert failure_text(tmp_path) == str(err.value) + "\n"


def test_a_crash_in_the_launcher_is_a_one_line_client_error(tmp_path, monkeypatch):
    def broken() -> int:
        raise RuntimeError("CUDA driver initialization failed\nmore details")

    _toolkit(monkeypatch, tmp_path, toolkit_env(tmp_path))
    monkeypatch.setattr(launcher, "gpu_count", broken)
    monkeypatch.setattr(launcher.distributed, "wait_for_hosts", lambda hosts: None)
    with pytest.raises(errors.ClientError) as err:
        launcher.main()
    assert str(err.value) == "internal error: RuntimeError: CUDA driver initialization failed (see the log)"
    assert failure_text(tmp_path) == str(err.value) + "\n"


@pytest.mark.slow
def test_the_failure_file_of_a_launcher_error_is_one_line(tmp_path, sample_data):
    base = make_job(tmp_path, {"training": sample_data / "training"}, FAST, hosts=["algo-1"], current_host="algo-9")
    result = run_train(base, timeout=120)
    assert result.returncode != 0
    reason = failure_text(base)
    assert reason.rstrip("\n") == "current host 'algo-9' is not in the host list ['algo-1']", result.stdout[-3000:]
    assert "Traceback" not in reason and "Framework Error" not in reason


@pytest.mark.slow
def test_a_malformed_config_fails_the_job(tmp_path, sample_data):
    base = make_job(tmp_path, {"training": sample_data / "training"}, FAST)
    (base / "input" / "config" / "resourceconfig.json").write_text("{")
    result = run_train(base, timeout=120)
    assert result.returncode != 0 and failure_text(base), result.stderr[-3000:]
