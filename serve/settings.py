"""Serving settings, all from the environment: the one table users configure, and the one
reader of SageMaker's serving variables (the server, its pre-flight and each MMS worker call
``Settings.from_env()``; workers are separate processes and read their own environment).

| variable | default | meaning |
|---|---|---|
| SAGEMAKER_BIND_TO_PORT | 8080 | port of /ping and /invocations |
| SAGEMAKER_MODEL_SERVER_WORKERS | GPUs: one per GPU; CPU: CPUs/4 (at least 1) | model copies (MMS workers) |
| SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS | 60 | per-request timeout |
| SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 | larger requests get 413; 1 to 1024 (async inference's 1 GB) |
| SAGEMAKER_MULTI_MODEL | false | multi-model endpoint (models under /opt/ml/models) |
| SERVE_TOP_K | 5 | labels per image unless the request asks otherwise |
| SERVE_MAX_IMAGES | 64 | images per request |
| SERVE_MAX_PIXELS | 40000000 | pixels per image (decompression bombs get 413) |
| SERVE_MAX_REQUEST_PIXELS | 100000000 | pixels of all images of one request together (413 above) |
| SERVE_MAX_CONNECTIONS | 128 | open client connections; more are closed at once |
| SERVE_MAX_INFLIGHT | 16 | requests whose bodies are held at once; more wait (503 after the timeout) |
| SERVE_USER | model-server | the unprivileged user that serving drops to when started as root |
| SERVE_THREADS | CPUs / workers | intra-op threads of each CPU worker (old name: SERVE_TORCH_THREADS) |
| SERVE_RUNTIME | auto | `onnx`, `torch`, or `auto`: ONNX Runtime on CPUs where installed (serve.runtimes) |
| SERVE_LOG_LEVEL | SAGEMAKER_CONTAINER_LOG_LEVEL, else INFO | Python log level of the server and its workers |
| SAGEMAKER_CONTAINER_LOG_LEVEL | (unset) | the SDK's `container_log_level`: a number (`20`) or a name (`INFO`) |
| SAGEMAKER_PROGRAM | (unset) | script mode: the user's inference module in the code folder (docs/script-mode.md) |
| SAGEMAKER_SUBMIT_DIRECTORY | /opt/ml/model/code | script mode: the code folder (a local one; else the model's code/) |
| SAGEMAKER_MODEL_SERVER_VMARGS | -XX:+UseContainerSupport -XX:MaxRAMPercentage=25.0 | JVM options of the MMS frontend |
| SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT | application/json | script mode: the answer type when a request asks for none |
| SAGEMAKER_BASE_DIR | /opt/ml | the folder with model/ (single model) or models/ (multi-model) |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.cpus import available_cpus


def _int(name: str, default: int, low: int = 1, high: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={raw!r} must be between {low} and {high or 'any'}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


RUNTIMES = ("auto", "onnx", "torch")  # serve.runtimes
DEFAULT_BASE_DIR = Path("/opt/ml")
# MMS's default, -XX:-UseContainerSupport, sizes the Java heap from the host's memory, not
# the container's limit: the frontend can then outgrow the container and be OOM-killed.
JVM_ARGS = "-XX:+UseContainerSupport -XX:MaxRAMPercentage=25.0"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level() -> str:
    """SERVE_LOG_LEVEL, else the SDK's SAGEMAKER_CONTAINER_LOG_LEVEL (``20`` or ``INFO``), else INFO."""
    for name in ("SERVE_LOG_LEVEL", "SAGEMAKER_CONTAINER_LOG_LEVEL"):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        level = logging.getLevelName(int(raw)) if raw.isdigit() else raw.upper()
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
        if level not in LOG_LEVELS:
            raise ValueError(f"{name}={raw!r} is not a log level: use 10, 20, 30, 40, 50 or {', '.join(LOG_LEVELS)}")
        return level
    return "INFO"


def multi_model() -> bool:
    """SAGEMAKER_MULTI_MODEL: a multi-model endpoint (read on its own by a worker whose model failed)."""
    return os.environ.get("SAGEMAKER_MULTI_MODEL", "false").lower() == "true"


@dataclass(frozen=True)
class Settings:
    """The resolved serving settings."""

    port: int
    workers: int
    timeout_seconds: int
    max_payload_mb: int
    multi_model: bool
    top_k: int
    max_images: int
    max_pixels: int
    max_request_pixels: int
    max_connections: int
    max_inflight: int
    threads: int
    log_level: str
    user: str
    runtime: str = "auto"
    program: str = ""  # SAGEMAKER_PROGRAM: script mode when set
    submit_dir: str = ""
    base_dir: Path = DEFAULT_BASE_DIR  # SAGEMAKER_BASE_DIR
    vmargs: str = JVM_ARGS  # SAGEMAKER_MODEL_SERVER_VMARGS
    default_accept: str = ""  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT: script mode's default answer type

    @classmethod
    def from_env(cls, gpus: int = 0) -> Settings:
        """Read the table above; raises ValueError naming a bad variable."""
        cpus = available_cpus()
        workers = _int("SAGEMAKER_MODEL_SERVER_WORKERS", gpus or max(1, cpus // 4))
        return cls(
            port=_int("SAGEMAKER_BIND_TO_PORT", 8080, high=65535),
            workers=workers,
            timeout_seconds=_int("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", 60),
            max_payload_mb=_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, high=1024),
            multi_model=multi_model(),
            top_k=_int("SERVE_TOP_K", 5),
            max_images=_int("SERVE_MAX_IMAGES", 64),
            max_pixels=_int("SERVE_MAX_PIXELS", 40_000_000),
            max_request_pixels=_int("SERVE_MAX_REQUEST_PIXELS", 100_000_000),
            max_connections=_int("SERVE_MAX_CONNECTIONS", 128),
            max_inflight=_int("SERVE_MAX_INFLIGHT", 16),
            threads=_int("SERVE_THREADS", 0) or _int("SERVE_TORCH_THREADS", max(1, cpus // workers)),
            runtime=_choice("SERVE_RUNTIME", "auto", RUNTIMES),
            log_level=log_level(),
            user=os.environ.get("SERVE_USER", "model-server"),
            program=os.environ.get("SAGEMAKER_PROGRAM", "").strip(),
            submit_dir=os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip(),
            base_dir=Path(os.environ.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE_DIR)),
            vmargs=os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS", JVM_ARGS),
            default_accept=os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", ""),
        )
