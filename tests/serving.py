"""Start the real ``serve`` executable (MMS) on the host and talk HTTP to it; the handler's
service in-process with MMS's own Context objects."""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVE_BIN = Path(sys.executable).parent / "serve"


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
    import pytest  # here, not at the top: bench/ imports this module without pytest

    @pytest.fixture(scope="module", params=runtimes)
    def service(request, small_model):
        return classifier_service(small_model, request.param)

    return service


def mms_context(model_dir, headers: list[dict]):
    """MMS's own Context for one batch of requests with these headers."""
    from mms.context import Context, RequestProcessor

    context = Context("model", str(model_dir), None, len(headers), None, "1.1.11")
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 and up), so that no outgoing connection takes it."""
    import random

    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def request(port: int, path: str, body: bytes | None = None, method: str = "POST", **headers: str):
    """(status, parsed JSON or text) of one HTTP request to the server."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def predict(port: int, data: bytes, content_type: str = "image/jpeg", **headers: str):
    return request(port, "/invocations", data, **{"Content-Type": content_type} | headers)


def png_bytes() -> bytes:
    """A small PNG to classify."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


class Server:
    """One ``serve`` process in its own session, logging to a file."""

    def __init__(self, base: Path, **env: str):
        self.base, self.port = base, free_port()
        self.log_path = base / "serve.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "SERVE_"))}
        environment |= {"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(self.port)} | env
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(SERVE_BIN)],
                env=environment,
                cwd=base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log[-3000:]}")
            try:
                if request(self.port, "/ping", method="GET")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"no /ping 200 within {timeout} s:\n{self.log[-3000:]}")

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, as SageMaker sends; returns the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.kill_leftovers()
        return time.monotonic() - started

    def kill_leftovers(self) -> list[int]:
        """Kill anything still in the server's session (there should be nothing)."""
        import psutil

        left = [p for p in psutil.process_iter() if _session(p) == self.process.pid and p.pid != self.process.pid]
        for proc in left:
            proc.kill()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return [p.pid for p in left]


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


def _session(proc) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None


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
