"""A burst of clients against the CPU serving image: every request is answered.

1,000 keep-alive connections open at once, each then sends a JPEG (``bench/burst.py``;
``make bench`` runs 512 clients x 4 requests). Before the new stack, 123 to 128 of 256 such
clients had their connection closed unanswered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import burst, fuzz

pytestmark = pytest.mark.slow


@pytest.fixture
def model_dir(small_model, tmp_path) -> Path:
    """A world-readable copy of the model (the container serves as an unprivileged user)."""
    model = shutil.copytree(small_model, tmp_path / "model")
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def test_a_thousand_connections_at_once_all_get_an_answer(images, model_dir):
    with fuzz.Container("byoc-classifier-serving-cpu:latest", model_dir, "2g", network="host") as container:
        container.wait_ready()
        result = burst.run_burst("127.0.0.1", container.port, clients=1000, requests=1, timeout=240)
        logs = container.logs()
    assert result.unanswered == 0, result.line()
    assert set(result.statuses) == {200}, result.line()  # the default queue (1,024) takes them all
    assert sum(result.statuses.values()) == 1000 and "Traceback" not in logs


def test_a_burst_over_the_queue_gets_503s_with_retry_after_and_no_reset(images, model_dir):
    env = {"SERVE_MAX_QUEUE": "16"}
    with fuzz.Container("byoc-classifier-serving-cpu:latest", model_dir, "2g", env, network="host") as container:
        container.wait_ready()
        result = burst.run_burst("127.0.0.1", container.port, clients=200, requests=2, timeout=240)
    assert result.unanswered == 0 and result.no_retry_after == 0, result.line()
    assert set(result.statuses) == {200, 503} and result.statuses[200] >= 16, result.line()
