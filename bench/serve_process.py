"""Start the real ``serve`` executable (MMS) on the host and talk HTTP to it.

Used by the benchmarks here and by the tests (``tests/serving.py`` re-exports it); it imports
nothing from ``tests/``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

SERVE_BIN = Path(sys.executable).parent / "serve"


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 and up), so that no outgoing connection takes it."""
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


class Server:
    """One ``serve`` process in its own session, logging to a file, with its own TMPDIR (where
    it stages the model: removed once the process has gone, however it went)."""

    def __init__(self, base: Path, **env: str):
        self.base, self.port = base, free_port()
        self.log_path = base / "serve.log"
        self.tmp = Path(tempfile.mkdtemp(prefix="serve-harness-"))
        self.left_in_tmp: list[str] = []
        weakref.finalize(self, shutil.rmtree, self.tmp, True)  # for a server nobody stopped
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "SERVE_"))}
        environment |= {"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(self.port)} | env
        environment["TMPDIR"] = str(self.tmp)
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
        """Kill anything still in the server's session (there should be nothing), then remove its TMPDIR."""
        import psutil

        left = [p for p in psutil.process_iter() if _session(p) == self.process.pid and p.pid != self.process.pid]
        for proc in left:
            proc.kill()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        psutil.wait_procs(left, timeout=10)
        if self.tmp.is_dir():  # what serve itself left there: tests assert it is nothing
            self.left_in_tmp = sorted(p.name for p in self.tmp.iterdir())
            shutil.rmtree(self.tmp, ignore_errors=True)
        return [p.pid for p in left]


def _session(proc) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None
