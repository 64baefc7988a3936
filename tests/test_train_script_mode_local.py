"""Training script mode through the SDKs' local mode: the course-style example on the training image.

SDK v2 ``Estimator(entry_point=..., source_dir=...)`` on one instance, SDK v2 ``PyTorch(image_uri=...,
distribution={"torch_distributed": ...})`` on two, and SDK v3 ``ModelTrainer(source_code=...)``; each
with a requirements.txt that installs a wheel from the source folder (no index can be reached).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from local_mode import fit
from tests.conftest import REPO, tiny_wheel
from tests.test_local_mode_v3 import PYTHON as SDK3_PYTHON

pytestmark = pytest.mark.slow
IMAGE = "byoc-classifier-training:latest"
EXAMPLE = REPO / "examples" / "script_mode"
HYPERPARAMETERS = {"lr": "0.01", "batch-size": "32", "momentum": "0.9", "image-size": "32", "epochs": "1"}


def source_folder(folder: Path) -> Path:
    """The example's training script, with a requirements.txt naming a wheel shipped beside it."""
    folder.mkdir()
    shutil.copy(EXAMPLE / "train_model.py", folder)
    tiny_wheel(folder, "byoc_train_probe")
    (folder / "requirements.txt").write_text("./byoc_train_probe-0.1-py3-none-any.whl\n")
    return folder


def untar(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_metric_definition_reads_the_examples_line():
    (metric,) = fit.EXAMPLE_METRICS
    assert re.search(metric["Regex"], "test_accuracy=0.4167").group(1) == "0.4167"


@pytest.mark.parametrize("instances", [1, 2])
def test_the_example_script_trains_in_local_mode(sdk_session, sample_data, tmp_path, capfd, instances):
    script = fit.Script("train_model.py", str(source_folder(tmp_path / "src")), instances > 1, fit.EXAMPLE_METRICS)
    out = tmp_path / "out"
    fit.fit(IMAGE, str(sample_data), HYPERPARAMETERS, "local", instances, output_path=f"file://{out}",
              session=sdk_session, script=script)  # fmt: skip
    logs = capfd.readouterr().out
    assert len(re.findall(r"Successfully installed byoc.train.probe-0.1", logs)) == instances
    (accuracy,) = re.findall(r"test_accuracy=([0-9.]+)", logs)  # rank 0 evaluates
    assert 0 <= float(accuracy) <= 1
    model = untar(out / "model.tar.gz", tmp_path / "model")
    assert (model / "labels.txt").read_text().split() == ["ball", "box", "cone", "ring"]
    assert (model / "model.pth").stat().st_size > 40_000_000  # ResNet18's weights
    output = untar(out / "output.tar.gz", tmp_path / "output")
    seen = [json.loads((output / "data" / f"environment-rank{r}.json").read_text()) for r in range(instances)]
    assert {s["SM_CHANNEL_TRAINING"] for s in seen} == {"/opt/ml/input/data/training"}
    assert all(json.loads(s["SM_HPS"]) == HYPERPARAMETERS for s in seen)  # no sagemaker_* keys
    assert seen[0]["args"] | {"lr": 0.01, "batch_size": 32, "momentum": 0.9} == seen[0]["args"]
    if instances == 2:  # torchrun on each instance, one process group across them
        assert logs.count("torchrun --nnodes 2 --nproc_per_node 1 --master_addr algo-1-") == 2
        assert {(s["RANK"], s["WORLD_SIZE"]) for s in seen} == {("0", "2"), ("1", "2")}
        assert len({s["SM_CURRENT_HOST"] for s in seen}) == 2


def test_the_example_script_trains_with_sdk_v3_source_code(images, sample_data, tmp_path):
    assert SDK3_PYTHON.exists(), "no .venv-sdk3: run `make venv-sdk3`"
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "AWS_"))}
    env |= {"AWS_DEFAULT_REGION": "us-east-1", "TMPDIR": str(tmp_path / "tmp"), "PYTHONUNBUFFERED": "1"}
    source = source_folder(tmp_path / "src")
    hps = [f"{k}={v}" for k, v in HYPERPARAMETERS.items()]
    result = subprocess.run(
        [str(SDK3_PYTHON), "-m", "local_mode.fit_v3", "--image", IMAGE, "--data", str(sample_data),
         "--output", str(tmp_path / "out"), "--source-dir", str(source), "--entry-script", "train_model.py",
         "--requirements", "requirements.txt", "--hp", *hps],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Running Basic Script driver" in result.stdout  # v3's own sm_train.sh ran it
    assert re.search(r"Successfully installed byoc.train.probe-0.1", result.stdout)
    assert re.search(r"test_accuracy=[0-9.]+", result.stdout)
    model = untar(tmp_path / "out" / "model.tar.gz", tmp_path / "model")
    assert (model / "labels.txt").read_text().split() == ["ball", "box", "cone", "ring"]
