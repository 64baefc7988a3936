"""Start the real ``serve`` executable on the host and talk HTTP to it; the gateway's ASGI
application and the handler's service in-process (the latter with MMS's own Context objects)."""

from __future__ import annotations

import http.server
import io
import sys
import threading
from pathlib import Path

# The real ``serve`` process and HTTP to it live with the benchmarks, which use them too.
from bench.serve_process import SERVE_BIN, Server, free_port, predict, request

__all__ = [
    "RUNTIMES", "SERVE_BIN", "Recorder", "Server", "call_app", "classifier_service", "free_port", "mms_context",
    "mms_processes", "png_bytes", "predict", "request", "service_fixture",
]  # fmt: skip

RUNTIMES = ("onnx", "torch")  # SERVE_RUNTIME values that the host's .venv runs both of


def classifier_service(model_dir, runtime: str = "auto"):
    """Our handler's service on ``model_dir`` (loaded and warmed up) with ``SERVE_RUNTIME=runtime``."""
    import dataclasses

    from serve import handler
    from serve.settings import Settings

    service = handler.ClassifierService()
    service.initialize(str(model_dir), None, dataclasses.replace(Settings.from_env(), runtime=runtime))
    return service


def service_fixture(*runtimes: str):
    """A module-scoped ``service`` fixture: ``classifier_service`` on the ``small_model``, once per runtime.

    Use as ``service = service_fixture("onnx", "torch")`` in a test module."""
    import pytest  # here, not at the top: only test modules call this

    @pytest.fixture(scope="module", params=runtimes)
    def service(request, small_model):
        return classifier_service(small_model, request.param)

    return service


def call_app(app, method: str, path: str, body: bytes = b"", headers=()) -> tuple[int, bytes]:
    """(status, body) of one request to an ASGI application, in this process."""
    import asyncio

    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    if body:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": raw, "client": ("127.0.0.1", 1), "http_version": "1.1"}  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def mms_context(model_dir, headers: list[dict]):
    """MMS's own Context for one batch of requests with these headers."""
    from mms.context import Context, RequestProcessor

    context = Context("model", str(model_dir), None, len(headers), None, "1.1.11")
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def png_bytes() -> bytes:
    """A small PNG to classify."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def mms_processes() -> list[str]:
    """Command lines of MMS frontends and workers of this venv (not those in containers)."""
    import psutil

    found = []
    venv = str(Path(sys.executable).parent.parent)
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if ("com.amazonaws.ml.mms" in line or "model_service_worker" in line) and venv in line:
            found.append(line[:120])
    return found


class Recorder:
    """A tiny HTTP server on 127.0.0.1 that offers x.mar and records every request it gets."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"PK\x03\x04 not really a model archive")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/x.mar"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
