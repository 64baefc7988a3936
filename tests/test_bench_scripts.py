"""The benchmark scripts that CI does not run in full still run: small settings, generated photos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(320, 240), (500, 375), (640, 480), (200, 300)]):
        Image.effect_noise(size, 30 + 10 * i).convert("RGB").save(folder / f"p{i}.jpg", quality=90)
    return folder


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_input_pipeline_bench_prints_its_ratios(photos):
    out = _run("bench/input_pipeline.py", "--photos", str(photos), "--images", "160", "--rounds", "1")
    for line in ("stock", "ours", "cached", "R with the input cache =", "10-epoch job"):
        assert line in out, out
    assert out.strip().splitlines()[-1].startswith("R = ")


def test_the_gpu_input_bench_runs_on_a_cpu(photos):
    argv = ["--device", "cpu", "--images", "32", "--batch-size", "8", "--image-size", "32", "--steps", "1"]
    out = _run("bench/gpu_input.py", "--photos", str(photos), *argv, "--cpus", "1")
    assert "synthetic (ceiling)" in out, out
    for pipeline in ("stock", "ours", "cached"):
        assert f"1 vCPUs, 1 workers, {pipeline}" in out, out
    cpu = [float(m) for m in re.findall(r"([0-9.]+) CPU ms/image \(all processes\)", out)]
    assert len(cpu) == 3 and all(ms > 0 for ms in cpu), out


def test_the_int8_serving_bench_prints_its_ratios(photos):
    """On the host's serve (the containers are make bench's): both precisions served, each its own file."""
    out = _run("bench/serve_int8.py", "--host", "--photos", str(photos), "--requests", "12", "--clients", "2")
    for line in ("p50 at 1 client, int8 / fp32:", "throughput at 2 clients, int8 / fp32:", "forward pass alone"):
        assert line in out, out
    assert "model.onnx (fp32: SERVE_PRECISION=fp32;" in out and "model.int8.onnx (int8: SERVE_PRECISION=int8;" in out
