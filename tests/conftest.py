"""Shared fixtures: the sample dataset, SageMaker-like job folders, training runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_BIN = Path(sys.executable).parent / "train"
# Fast settings that still learn the sample data from scratch on 2 CPU cores.
FAST = {
    "pretrained": "false",
    "image-size": "64",
    "batch-size": "16",
    "lr": "0.005",
    "lr-warmup-epochs": "1",
    "crop-min-scale": "0.4",
    "log-interval": "0",
}


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The embedded sample dataset, generated once per session."""
    from train import sample_data

    out = tmp_path_factory.mktemp("sample")
    sample_data.generate(out)
    return out


def make_job(
    base: Path,
    channels: dict[str, Path],
    hyperparameters: dict | None = None,
    hosts: list[str] | None = None,
    current_host: str | None = None,
    quote: bool = False,
    copy: bool = False,
) -> Path:
    """A folder laid out like /opt/ml; ``quote`` JSON-quotes values as SDK v2 does, ``copy``
    copies the channels instead of linking them (links do not resolve inside a container)."""
    hosts = hosts or ["algo-1"]
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    hps = {k: json.dumps(str(v)) if quote else str(v) for k, v in (hyperparameters or {}).items()}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    resource = {"current_host": current_host or hosts[0], "hosts": hosts, "network_interface_name": "lo"}
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    (config / "inputdataconfig.json").write_text(json.dumps({name: {"TrainingInputMode": "File"} for name in channels}))
    data = base / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        if copy:
            shutil.copytree(source, data / name)
        else:
            (data / name).symlink_to(source)
    return base


def job_env(base: Path, **extra: str) -> dict:
    """Environment for a training run on the host against ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env |= {"SAGEMAKER_BASE_DIR": str(base), "TORCH_HOME": str(base / "torch_home"), "PYTHONUNBUFFERED": "1"}
    env |= {"OMP_NUM_THREADS": "2", "AWS_DEFAULT_REGION": "us-east-1"}
    return env | extra


def run_train(base: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run the ``train`` executable (the toolkit path) to completion."""
    return subprocess.run([str(TRAIN_BIN)], env=job_env(base, **env), capture_output=True, text=True, timeout=timeout)


def failure_text(base: Path) -> str:
    path = base / "output" / "failure"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="session")
def trained_job(sample_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real training run on the sample data through ``train``, shared by several tests."""
    base = make_job(
        tmp_path_factory.mktemp("job"),
        {c: sample_data / c for c in ("training", "validation", "test")},
        FAST | {"epochs": "10"},
    )
    result = run_train(base)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, result


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """An untrained ResNet18 artifact (3 classes, 32 px): enough for serving tests that need no accuracy."""
    import torch

    import model_artifact
    from train import artifact

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("small") / "model"
    net = model_artifact.build_model("resnet18", 3)
    prep = model_artifact.Preprocessing.for_image_size(32)
    artifact.save(path, net.state_dict(), model_artifact.Metadata("resnet18", ["ant", "bee", "cat"], prep))
    return path


@pytest.fixture(scope="session")
def images() -> str:
    """Build (or reuse: layers are cached) all images with `make images`' script."""
    result = subprocess.run([str(REPO / "docker" / "build.sh")], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def sdk_session(images, tmp_path, monkeypatch):
    """SDK v2's LocalSession (no AWS call), cleaned up after the test: no container is left."""
    from local_mode import session as local

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    session = local.local_session(tmp_path / "container_root")
    yield session
    local.cleanup(session)
    assert not (tmp_path / "container_root").exists()
    assert not local.containers(tmp_path / "container_root")  # training and endpoint containers


def tiny_wheel(folder: Path, name: str = "byoc_helper", value: int = 42) -> Path:
    """A one-module wheel, so that a requirements.txt installs without a package index."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}.py": f"VALUE = {value}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@pytest.fixture
def restore_signals():
    """In-process runs install SIGTERM/SIGINT handlers: put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
