"""Serving settings, all from the environment: the one table users configure, and the one
reader of SageMaker's serving variables (the server, its pre-flight and each MMS worker call
``Settings.from_env()``; workers are separate processes and read their own environment).

| variable | default | meaning |
|---|---|---|
| SAGEMAKER_BIND_TO_PORT | 8080 | port of /ping and /invocations |
| SAGEMAKER_MODEL_SERVER_WORKERS | GPUs: one per GPU; CPU: CPUs/4 (at least 1) | model copies (MMS workers) |
| SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS | 60 | seconds a worker may take for a batch before it is replaced (504) |
| SAGEMAKER_MODEL_SERVER_TIMEOUT | (unset) | the same in minutes, as AWS's MMS containers read it (`_SECONDS` wins) |
| SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 | larger bodies get 413; 0 to 1024 (0: batch transform's chunked bodies, 100 MB) |
| SAGEMAKER_MULTI_MODEL | false | multi-model endpoint (models under /opt/ml/models) |
| SERVE_TOP_K | 5 | labels per image unless the request asks otherwise |
| SERVE_MAX_IMAGES | 64 | images per request |
| SERVE_MAX_PIXELS | 40000000 | pixels per image (decompression bombs get 413) |
| SERVE_MAX_REQUEST_PIXELS | 100000000 | pixels of all images of one request together (413 above) |
| SERVE_BATCH_SIZE | GPU: 32, CPU: 8 | single-image requests that share a forward pass (1: no batching) |
| SERVE_BATCH_DELAY_MS | GPU: 5, CPU: 0 | how long a worker waits for a batch to fill (0: only what is queued) |
| SERVE_MAX_QUEUE | 1024 | requests admitted at once (queued or being predicted); more get 503 with Retry-After |
| SERVE_MAX_QUEUE_MB | 256 | request bodies held at once, in MB; more get 503 with Retry-After |
| SERVE_MAX_CONNECTIONS | 4096 | open client connections; a new one beyond it gets 503 with Retry-After |
| SERVE_HEADER_TIMEOUT | 10 | seconds a client may take to send a request's head, from its first byte |
| SERVE_MEMORY_HEADROOM_MB | 256 | multi-model: a model whose load would leave less free gets 507 |
| SERVE_USER | model-server | the unprivileged user that serving drops to when started as root |
| SERVE_THREADS | CPUs / workers | intra-op threads of each CPU worker (old name: SERVE_TORCH_THREADS) |
| SERVE_RUNTIME | auto | `onnx`, `torch`, or `auto`: ONNX Runtime on CPUs where installed (serve.runtimes) |
| SERVE_PRECISION | auto | `int8`, `fp32`, or `auto`: ONNX Runtime serves int8 where its recorded drop is small |
| SERVE_INT8_MAX_DROP | 0.5 | points of validation accuracy int8 may lose for `auto` to serve it |
| SERVE_LOG_LEVEL | SAGEMAKER_CONTAINER_LOG_LEVEL, else INFO | Python log level of the server and its workers |
| SAGEMAKER_CONTAINER_LOG_LEVEL | (unset) | the SDK's `container_log_level`: a number (`20`) or a name (`INFO`) |
| SAGEMAKER_PROGRAM | (unset) | script mode: the user's inference module in the code folder (docs/script-mode.md) |
| SAGEMAKER_SUBMIT_DIRECTORY | /opt/ml/model/code | script mode: the code folder (a local one; else the model's code/) |
| SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT | application/json | script mode: the answer type when a request asks for none |
| SAGEMAKER_BASE_DIR | /opt/ml | the folder with model/ (single model) or models/ (multi-model) |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import model_artifact
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


def _float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={raw!r} must be between {low:g} and {high:g}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


RUNTIMES = ("auto", "onnx", "torch")  # serve.runtimes
PRECISIONS = ("auto", "int8", "fp32")  # serve.runtimes.choose_precision
DEFAULT_BASE_DIR = Path("/opt/ml")
TRANSFORM_PAYLOAD_MB = 100  # batch transform's ceiling for MaxPayloadInMB, and for it times MaxConcurrentTransforms
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


def timeout_seconds() -> int:
    """SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS, else SAGEMAKER_MODEL_SERVER_TIMEOUT in minutes, else 60 s.

    AWS's MMS-based containers (sagemaker-inference) write the first as MMS's
    ``default_response_timeout_seconds`` and the second as ``default_response_timeout``, which
    MMS 1.1.11 multiplies by 60 (``ConfigManager.getDefaultResponseTimeoutSeconds``): the same
    variable means the same time here. Their default is 60 minutes; ours is SageMaker's own
    60 s limit on a real-time invocation."""
    if os.environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "").strip():
        return _int("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", 60)
    if os.environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT", "").strip():
        return 60 * _int("SAGEMAKER_MODEL_SERVER_TIMEOUT", 1, high=24 * 60)
    return 60


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
    max_queue: int
    max_queue_mb: int
    threads: int
    log_level: str
    user: str
    runtime: str = "auto"
    precision: str = "auto"
    int8_max_drop: float = 0.5  # points of validation accuracy
    program: str = ""  # SAGEMAKER_PROGRAM: script mode when set
    submit_dir: str = ""
    base_dir: Path = DEFAULT_BASE_DIR  # SAGEMAKER_BASE_DIR
    batch_size: int = 1
    batch_delay_ms: int = 0
    header_timeout: int = 10
    memory_headroom_mb: int = 256
    default_accept: str = ""  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT: script mode's default answer type

    @property
    def payload_limit(self) -> int:
        """The largest request body in bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB=0: batch transform's 100 MB)."""
        return (self.max_payload_mb or TRANSFORM_PAYLOAD_MB) * 1024 * 1024

    @classmethod
    def from_env(cls, gpus: int = 0) -> Settings:
        """Read the table above; raises ValueError naming a bad variable."""
        cpus = available_cpus()
        workers = _int("SAGEMAKER_MODEL_SERVER_WORKERS", gpus or max(1, cpus // 4))
        return cls(
            port=_int("SAGEMAKER_BIND_TO_PORT", 8080, high=65535),
            workers=workers,
            timeout_seconds=timeout_seconds(),
            max_payload_mb=_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, low=0, high=1024),
            multi_model=os.environ.get("SAGEMAKER_MULTI_MODEL", "false").strip().lower() == "true",
            top_k=_int("SERVE_TOP_K", model_artifact.DEFAULT_TOP_K),
            max_images=_int("SERVE_MAX_IMAGES", model_artifact.MAX_IMAGES),
            max_pixels=_int("SERVE_MAX_PIXELS", model_artifact.MAX_IMAGE_PIXELS),
            max_request_pixels=_int("SERVE_MAX_REQUEST_PIXELS", model_artifact.MAX_REQUEST_PIXELS),
            max_connections=_int("SERVE_MAX_CONNECTIONS", 4096),
            max_queue=_int("SERVE_MAX_QUEUE", 1024),
            max_queue_mb=_int("SERVE_MAX_QUEUE_MB", 256),
            batch_size=_int("SERVE_BATCH_SIZE", 32 if gpus else 8, high=1024),
            batch_delay_ms=_int("SERVE_BATCH_DELAY_MS", 5 if gpus else 0, low=0, high=10_000),
            header_timeout=_int("SERVE_HEADER_TIMEOUT", 10, high=3600),
            memory_headroom_mb=_int("SERVE_MEMORY_HEADROOM_MB", 256, low=0),
            threads=_int("SERVE_THREADS", 0) or _int("SERVE_TORCH_THREADS", max(1, cpus // workers)),
            runtime=_choice("SERVE_RUNTIME", "auto", RUNTIMES),
            precision=_choice("SERVE_PRECISION", "auto", PRECISIONS),
            int8_max_drop=_float("SERVE_INT8_MAX_DROP", 0.5, 0, 100),
            log_level=log_level(),
            user=os.environ.get("SERVE_USER", "model-server"),
            program=os.environ.get("SAGEMAKER_PROGRAM", "").strip(),
            submit_dir=os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip(),
            base_dir=Path(os.environ.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE_DIR)),
            default_accept=os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", ""),
        )
