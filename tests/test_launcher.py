"""The launcher and the ``train`` executable: our defaults over the toolkit's gaps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sagemaker_training import environment

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
