"""The serving container under the fuzzer (bench/fuzz.py) and under worst-case memory load.

Both run the image under ``docker run -m 2g`` with a trained model. The full run
(10,000 payloads) is ``make fuzz``; here a seeded run of 1,000 payloads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import fuzz

pytestmark = pytest.mark.slow
SERVING_CPU = "byoc-classifier-serving-cpu:latest"
LIMITS = fuzz.Limits(max_payload_mb=6, max_images=64, max_pixels=40_000_000)


@pytest.fixture
def model_dir(trained_job, tmp_path) -> Path:
    """A world-readable copy of the trained model (the container may not run as root)."""
    model = tmp_path / "model"
    shutil.copytree(trained_job[0] / "model", model)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def test_a_seeded_fuzz_run_gets_no_bad_answer_restart_or_oom(images, model_dir):
    # host network: the registration URLs name the fuzzer's own server on 127.0.0.1, which
    # the container can then reach, so "it got no request" proves no URL was fetched.
    report = fuzz.fuzz(
        SERVING_CPU, model_dir, count=1000, seed=7, clients=8, memory="2g", limits=LIMITS,
        network="host", max_seconds=150,
    )  # fmt: skip
    text = report.format()
    print(text)
    sent, bad, health = report.tally.sent, report.tally.bad, report.health
    assert sent == 1000, text
    assert bad == 0, text
    assert health.restarts == 0, text
    assert report.ping_failures == 0 and report.ping_total > 0, text
    assert not health.oom_killed and not health.oom_kills, text
    assert health.running and report.final_status == 200, text
    assert not report.canary_hits, text


def test_eight_concurrent_worst_case_requests_stay_within_2g(images, model_dir):
    cases = fuzz.worst_cases(LIMITS)
    assert len(cases) == 8 and max(len(c.body) for c in cases) == LIMITS.max_payload + 1
    with fuzz.Container(SERVING_CPU, model_dir, memory="2g", env=LIMITS.env()) as box:
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
