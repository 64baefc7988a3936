"""serve.settings: SageMaker's serving variables with the meaning AWS's containers give them."""

from __future__ import annotations

import pytest

import model_artifact
from serve.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
                 "SAGEMAKER_MAX_PAYLOAD_IN_MB", "SERVE_BATCH_SIZE", "SERVE_BATCH_DELAY_MS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "env,seconds",
    [({}, 60), ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "2"}, 120),  # minutes, as MMS reads it
     ({"SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "7"}, 7),
     ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "2", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "7"}, 7)],
)  # fmt: skip
def test_the_timeout_variables_mean_what_they_mean_in_aws_s_containers(monkeypatch, env, seconds):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().timeout_seconds == seconds


def test_a_bad_timeout_is_named(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SAGEMAKER_MODEL_SERVER_TIMEOUT="):
        Settings.from_env()


@pytest.mark.parametrize("mb,limit", [("6", 6 << 20), ("1024", 1024 << 20), ("0", 100 << 20)])
def test_payload_limit_and_batch_transform_s_zero(monkeypatch, mb, limit):
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", mb)
    assert Settings.from_env().payload_limit == limit


def test_a_gpu_batches_and_waits_a_little_a_cpu_never_waits(monkeypatch):
    cpu, gpu = Settings.from_env(gpus=0), Settings.from_env(gpus=1)
    assert (cpu.batch_size, cpu.batch_delay_ms) == (8, 0)
    assert (gpu.batch_size, gpu.batch_delay_ms) == (32, 5)
    monkeypatch.setenv("SERVE_BATCH_SIZE", "1")
    monkeypatch.setenv("SERVE_BATCH_DELAY_MS", "20")
    assert (Settings.from_env(gpus=1).batch_size, Settings.from_env(gpus=1).batch_delay_ms) == (1, 20)


def test_the_request_limits_default_to_the_artifact_s_shared_ones(monkeypatch):
    """serve.settings, code/inference.py and training's max-image-pixels read one definition."""
    for name in ("SERVE_TOP_K", "SERVE_MAX_IMAGES", "SERVE_MAX_PIXELS", "SERVE_MAX_REQUEST_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.top_k, settings.max_images) == (model_artifact.DEFAULT_TOP_K, model_artifact.MAX_IMAGES) == (5, 64)
    assert settings.max_pixels == model_artifact.MAX_IMAGE_PIXELS == 40_000_000
    assert settings.max_request_pixels == model_artifact.MAX_REQUEST_PIXELS == 100_000_000
