"""Whole training jobs on the host, through the sagemaker-training toolkit's ``train``."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
from PIL import Image

import model_artifact
from serve import portable_code
from tests.conftest import FAST, TRAIN_BIN, failure_text, job_env, make_job, run_train
from train import checkpoint, main
from train import model as model_lib

pytestmark = pytest.mark.slow
CHANNELS = ("training", "validation", "test")


def test_training_beats_chance_and_writes_a_valid_artifact(trained_job):
    base, result = trained_job
    model, meta = model_artifact.load(base / "model")
    assert meta.class_names == ["ball", "box", "cone", "ring"] and meta.architecture == "resnet18"
    assert meta.metrics["test_accuracy"] >= 0.5, result.stdout[-2000:]  # chance is 0.25
    assert meta.preprocessing.image_size == 64
    report = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert [r["epoch"] for r in report["history"]] == list(range(1, 11))
    assert (base / "output" / "data" / "training_curve.png").stat().st_size > 10_000
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert "resolved configuration" in result.stdout
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    written = sorted(p.name for p in (base / "model").iterdir())
    assert written == sorted([*model_artifact.ARTIFACT_FILES, *model_artifact.OPTIONAL_FILES, "code"])
    assert sorted(p.name for p in (base / "model" / "code").iterdir()) == sorted(portable_code.CODE_FILES)
    assert model_artifact.onnx_path(base / "model", meta).is_file()
    exporter = re.compile(r"\] (torch\.onnx|onnxscript|onnx_ir)[.:]")  # the job's log format: [rank N] logger: ...
    assert [line for line in result.stdout.splitlines() if exporter.search(line)] == []


def test_resolved_configuration_and_throughput_are_logged(trained_job):
    _, result = trained_job
    config = json.loads(re.search(r"resolved configuration: (\{.*\})", result.stdout).group(1))
    assert config["lr"] == "0.005" and config["world_size"] == 1 and config["device"] == "cpu"
    assert re.search(r"img_per_sec=[0-9.]+ data_wait=0\.[0-9]+", result.stdout)


def test_a_job_of_several_epochs_fills_the_input_cache_once(trained_job):
    base, result = trained_job
    built = re.findall(r"input cache after epoch 1 \([0-9]+ s with validation\): (\d+) images", result.stdout)
    assert len(re.findall(r"input cache after epoch", result.stdout)) == 1  # logged once
    assert built == [str(240 + 60)]  # the training and validation images, each once
    cached = base / "tmp" / "input-cache"
    assert len(list((cached / "training").glob("*.rgb"))) == 240
    assert len(list((cached / "evaluation").glob("*.rgb"))) == 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_join_one_ddp_group(sample_data, tmp_path):
    hosts = ["localhost", "127.0.0.1"]  # two host names that resolve to this machine
    channels = {c: sample_data / c for c in CHANNELS}
    hps = FAST | {"epochs": "2", "num-workers": "1"}
    bases = [make_job(tmp_path / h, channels, hps, hosts=hosts, current_host=h) for h in hosts]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [str(TRAIN_BIN)],
            env=job_env(b, MASTER_PORT=port, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for b in bases
    ]
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 600
    while len(ended) < 2 and time.monotonic() < deadline:
        ended |= {i: time.monotonic() for i, p in enumerate(procs) if i not in ended and p.poll() is not None}
        time.sleep(0.1)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert ended[1] > ended[0] + 2, "host 0 (the model's writer) must exit first"  # compose stops the rest
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "process group ready: world size 2" in out
    assert "rank 0 of 2" in outputs[0] and "rank 1 of 2" in outputs[1]
    model_artifact.load(bases[0] / "model")
    assert not (bases[1] / "model" / model_artifact.WEIGHTS_FILE).exists()  # only rank 0 writes
    assert len(re.findall(r"^epoch=\d", outputs[0], re.M)) == 2


def test_sigterm_mid_epoch_checkpoints_and_a_restart_completes(sample_data, tmp_path):
    base = make_job(tmp_path, {c: sample_data / c for c in CHANNELS}, FAST | {"epochs": "3", "log-interval": "1"})
    proc = subprocess.Popen(
        [str(TRAIN_BIN)], env=job_env(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"epoch 2 step 3/", line):
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # to the toolkit process, as `docker stop` does to PID 1
            break
    output = "".join(seen) + proc.stdout.read()
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - sent < 60, "must exit well inside SageMaker's 120 s"
    assert re.search(r"stopped by signal in epoch 2 after \d+ batches", failure_text(base)), output[-3000:]
    assert (base / "checkpoints" / checkpoint.CHECKPOINT_FILE).exists()
    assert not (base / "model" / model_artifact.WEIGHTS_FILE).exists()

    (base / "output" / "failure").unlink()  # a restarted SageMaker job starts with a clean output
    result = run_train(base)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"resumed from checkpoint: epoch 2, \d+ batches done", result.stdout)
    assert re.search(r"input cache after epoch 2 ", result.stdout)  # the cache is refilled, and said so
    history = json.loads((base / "output" / "data" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert len(re.findall(r"^epoch=", result.stdout, re.M)) == 2  # epochs 2 and 3 this time
    model_artifact.load(base / "model")


def test_corrupt_files_are_skipped_and_counted(sample_data, tmp_path):
    training = shutil.copytree(sample_data / "training", tmp_path / "data" / "training")
    (training / "ball" / "ball_000.jpg").write_bytes(b"\x00not a jpeg")
    data = (training / "box" / "box_001.jpg").read_bytes()
    (training / "box" / "box_001.jpg").write_bytes(data[: len(data) // 3])
    (training / "cone" / "cone_003.png").write_bytes(b"")
    Image.new("1", (7000, 6000)).save(training / "cone" / "bomb.png")  # 42M pixels in a few KB
    Image.new("RGB", (40000, 1)).save(training / "ring" / "wide.png")  # 2.6G pixels once resized
    outside = sorted((sample_data / "validation" / "ball").iterdir())[0]
    (training / "ball" / "outside.jpg").symlink_to(outside)  # not read: it leaves the channel
    base = make_job(
        tmp_path / "job",
        {"training": training, "validation": sample_data / "validation"},
        FAST | {"epochs": "1", "max-bad-fraction": "0.05"},
    )
    result = run_train(base)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "unreadable_images=5" in result.stdout
    assert "skipping unreadable image" in result.stdout + result.stderr
    assert "bomb.png: PIL.Image.DecompressionBombError: image of 7000x6000 pixels exceeds" in result.stdout
    assert "training: ignored 1 link(s) that lead outside the channel" in result.stdout
    assert "train 242, validation 60," in result.stdout  # 240 + bomb + wide; the link is not listed


def _run_in_process(base, argv, monkeypatch) -> str:
    for key in [k for k in list(__import__("os").environ) if k.startswith("SM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 1
    return failure_text(base)


def _images(root, classes):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), (i * 60, 0, 0)).save(root / name / f"{i}.jpg")
    return root


@pytest.mark.parametrize(
    "case,argv,expected",
    [
        ("unknown", ["--lrr", "0.1"], "unknown hyperparameter 'lrr'; allowed:"),
        ("invalid", ["--batch-size", "many"], "hyperparameter batch-size: 'many' is not an integer >= 1"),
        ("no-training", [], "no 'training' channel (got: ['validation'])"),
        ("single-class", [], "training has a single class ('a')"),
        ("class-mismatch", [], "validation classes differ from training: missing ['b'], extra ['c']"),
        ("all-unreadable", [], "training images are unreadable"),
        ("offline-pretrained", ["--pretrained", "true"], "or set pretrained=false"),
        ("fp16-on-cpu", ["--amp", "fp16"], "fp16 needs a GPU"),
    ],
)
def test_bad_inputs_write_a_specific_failure_file(case, argv, expected, tmp_path, monkeypatch, restore_signals):
    data = tmp_path / "input" / "data"
    layouts = {
        "no-training": {"validation": ["a", "b"]},
        "single-class": {"training": ["a"]},
        "class-mismatch": {"training": ["a", "b"], "validation": ["a", "c"]},
    }
    for channel, classes in layouts.get(case, {"training": ["a", "b"]}).items():
        _images(data / channel, classes)
    if case == "all-unreadable":
        for path in (data / "training").rglob("*.jpg"):
            path.write_bytes(b"junk")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(model_lib, "weights_url", lambda arch: "http://127.0.0.1:9/resnet18-f37072fd.pth")
    base_argv = ["--pretrained", "false", "--image-size", "16", "--epochs", "1", "--num-workers", "0"]
    reason = _run_in_process(tmp_path, base_argv + argv, monkeypatch)
    assert expected in reason
    assert "Traceback" not in reason and len(reason) <= 1025


def test_the_toolkit_keeps_our_failure_reason(tmp_path, sample_data):
    base = make_job(tmp_path, {"training": sample_data / "training"}, {"epochs": "1", "optimizer": "adam"})
    result = run_train(base, timeout=120)
    assert result.returncode != 0
    reason = failure_text(base)
    assert reason.startswith("unknown hyperparameter 'optimizer'")
    assert "Traceback" not in reason and "ExecuteUserScriptError" not in reason


def test_train_without_opt_ml_explains_sagemaker_base_dir(tmp_path):
    env = {k: v for k, v in job_env(tmp_path).items() if k != "SAGEMAKER_BASE_DIR"}
    result = subprocess.run([str(TRAIN_BIN)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "set SAGEMAKER_BASE_DIR" in result.stderr


def test_checkpoints_resume_only_their_own_configuration(tmp_path):
    """checkpointconfig.json's LocalPath is used; a rerun after the last epoch replays the
    metric lines a tuner reads; other hyperparameters on the same location start fresh."""
    channels = {"training": _images(tmp_path / "data", ["a", "b"])}
    hps = {"pretrained": "false", "image-size": "16", "epochs": "2", "batch-size": "2", "num-workers": "0"}
    base = make_job(tmp_path / "job", channels, hps | {"val-split": "0.34", "log-interval": "1"})
    local = tmp_path / "local-checkpoints"
    (base / "input" / "config" / "checkpointconfig.json").write_text(json.dumps({"LocalPath": str(local)}))
    first = run_train(base, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    assert (local / checkpoint.CHECKPOINT_FILE).exists() and not (base / "checkpoints").exists()
    assert re.search(r"epoch 1 step 1/\d+ .* eta \d+:\d\d$", first.stdout, re.M)
    assert "epoch 1/2 done; about " in first.stdout

    again = run_train(base, timeout=300)  # e.g. a spot restart after the last epoch
    assert again.returncode == 0, again.stdout[-3000:]
    assert "all 2 epochs were done" in again.stdout
    assert re.findall(r"^epoch=(\d) .*val_accuracy=", again.stdout, re.M) == ["1", "2"]
    assert re.search(r"^final best_epoch=\d", again.stdout, re.M)

    hps_path = base / "input" / "config" / "hyperparameters.json"
    hps_path.write_text(json.dumps(json.loads(hps_path.read_text()) | {"lr": "0.05"}))
    other = run_train(base, timeout=300, SAGEMAKER_CONTAINER_LOG_LEVEL="WARNING")  # a name: cli converts
    assert other.returncode == 0, other.stdout[-3000:]
    assert "written by another configuration (lr 0.01 → 0.05): starting fresh" in other.stdout
    assert re.findall(r"^epoch=(\d)", other.stdout, re.M) == ["1", "2"]  # trained again, printed anyway
    assert "resolved configuration" not in other.stdout  # an INFO line, hidden at WARNING
