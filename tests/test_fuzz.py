"""The serving container under the fuzzer (bench/fuzz.py) and under worst-case memory load.

Both run each serving image under ``docker run -m 2g`` with a trained model: serving-cpu (ONNX
Runtime, the default) and serving-gpu (PyTorch, on the CPU here). The full run (10,000
payloads) is ``make fuzz``; here a seeded run of 1,000 payloads, 250 on serving-gpu (the same
handler and codecs, only a slower forward pass on CPUs: 1,000 would take a minute longer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import fuzz

pytestmark = pytest.mark.slow
IMAGES = ["byoc-classifier-serving-cpu:latest", "byoc-classifier-serving-gpu:latest"]
LIMITS = fuzz.Limits(max_payload_mb=6, max_images=64, max_pixels=40_000_000)


@pytest.fixture
def model_dir(trained_job, tmp_path) -> Path:
    """A world-readable copy of the trained model (the container may not run as root)."""
    model = tmp_path / "model"
    shutil.copytree(trained_job[0] / "model", model)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.mark.parametrize("image,count", [(IMAGES[0], 1000), (IMAGES[1], 250)], ids=["serving-cpu", "serving-gpu"])
def test_a_seeded_fuzz_run_gets_no_bad_answer_restart_or_oom(images, model_dir, image, count):
    # host network: the registration URLs name the fuzzer's own server on 127.0.0.1, which
    # the container can then reach, so "it got no request" proves no URL was fetched.
    report = fuzz.fuzz(
        image, model_dir, count=count, seed=7, clients=8, memory="2g", limits=LIMITS,
        network="host", max_seconds=150,
    )  # fmt: skip
    text = report.format()
    print(text)
    sent, bad, health = report.tally.sent, report.tally.bad, report.health
    assert sent == count, text
    assert bad == 0, text
    assert health.restarts == 0, text
    assert report.ping_failures == 0 and report.ping_total > 0, text
    assert not health.oom_killed and not health.oom_kills, text
    assert health.running and report.final_status == 200, text
    assert not report.canary_hits, text


@pytest.mark.parametrize("image", IMAGES, ids=["serving-cpu", "serving-gpu"])
def test_eight_concurrent_worst_case_requests_stay_within_2g(images, model_dir, image):
    cases = fuzz.worst_cases(LIMITS)
    assert len(cases) == 8 and max(len(c.body) for c in cases) == LIMITS.max_payload + 1
    with fuzz.Container(image, model_dir, memory="2g", env=LIMITS.env()) as box:
        box.wait_ready()
        box.wait_predicting()
        with fuzz.PingPoller(box.port) as ping:
            answers = [pair for _ in range(2) for pair in fuzz.burst(box.port, cases, timeout=240)]
        final = fuzz.send(box.port, fuzz.valid_case(), timeout=60).status
        health = box.health()
    summary = "\n".join(f"{a.status} {a.seconds:5.1f} s {c.note}: {fuzz.judge(c, a) or 'ok'}" for c, a in answers)
    summary += f"\nping {ping.failures}/{ping.total} failed {ping.examples}; final prediction {final}"
    summary += f"\npeak {fuzz.mb(health.peak_bytes)}, oom_kill {health.oom_kills}, OOMKilled {health.oom_killed}"
    summary += f", restarts {health.restarts}, running {health.running}\n" + "\n".join(health.log_lines[:8])
    print(summary)
    assert all(fuzz.judge(c, a) is None for c, a in answers), summary
    assert ping.failures == 0 and ping.total > 0, summary
    oom_killed, oom_kills, restarts, running = health.oom_killed, health.oom_kills, health.restarts, health.running
    assert not oom_killed and not oom_kills and restarts == 0, summary
    assert running and final == 200, summary
