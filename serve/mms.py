"""multi-model-server (MMS) on multi-model endpoints: its configuration, its process group,
and HTTP to its sockets (single-model endpoints drive MMS's workers directly: ``serve.workers``).

sagemaker-inference's ``start_model_server`` is not used: it binds MMS's management API to
the serving port on every interface (anyone who reaches port 8080 can register a model from a
URL and run its handler, or delete ours), puts ``/opt/ml/model/code`` on the workers'
``PYTHONPATH``, pip-installs ``code/requirements.txt`` as root, writes ``/etc``, and finds
MMS again by scanning every process on the machine. Here both MMS APIs listen on Unix sockets
in a private folder that only the server's user can enter; ``serve.gateway`` alone is on the
network. The Java frontend is started directly (not through the ``multi-model-server``
wrapper) in its own process group, so that one signal reaches it and its workers.
``serve.toolkits`` lists each toolkit function replaced here, and the version checked.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

from serve.settings import Settings

HANDLER = "serve.handler:handle"
LOG_CONFIG = str(Path(__file__).with_name("log4j2.xml"))
SINGLE_MODEL_NAME = "model"
MAIN_CLASS = "com.amazonaws.ml.mms.ModelServer"  # the Java frontend, as mms.model_server.start runs it


def inference_socket(folder: Path) -> Path:
    """Where MMS's inference API listens (``/ping``, ``/invocations``, ``/models/<name>/invoke``)."""
    return folder / "inference.sock"


def management_socket(folder: Path) -> Path:
    """Where MMS's management API listens (``/models``)."""
    return folder / "management.sock"


def properties(settings: Settings, gpus: int, sockets: Path) -> str:
    """The MMS configuration file: both APIs on Unix sockets, our handler, the limits."""
    values = {
        "inference_address": f"unix:{inference_socket(sockets)}",
        "management_address": f"unix:{management_socket(sockets)}",
        "use_native_io": "true",  # required for Unix sockets
        "enable_envvars_config": "false",  # MMS_* variables must not reconfigure it
        "decode_input_request": "false",
        "default_service_handler": HANDLER,
        "default_workers_per_model": settings.workers,
        "default_response_timeout_seconds": settings.timeout_seconds,
        # the gateway enforces the payload limit; this only leaves room for its headers
        "max_request_size": settings.max_payload_mb * 1024 * 1024 + 65536,
        "max_response_size": 16 * 1024 * 1024,
        "number_of_gpu": gpus,  # MMS pins worker i to GPU i % gpus
    }
    return "".join(f"{key}={value}\n" for key, value in values.items())


def command(config: Path, scratch: Path, vmargs: str) -> list[str]:
    """The Java command that ``multi-model-server --start`` builds, without its wrapper process
    (a signal to the wrapper would not reach the frontend)."""
    import mms

    home = Path(mms.__file__).resolve().parents[1]
    java = str(Path(os.environ["JAVA_HOME"], "bin", "java")) if os.environ.get("JAVA_HOME") else "java"
    jvm = [
        f"-Dmodel_server_home={home}",
        f"-Dlog4j.configurationFile=file://{LOG_CONFIG}",
        f"-Djava.io.tmpdir={scratch}",
    ]
    mms_args = ["--python", sys.executable, "-f", str(config), "-s", "/"]
    classpath = f".:{home / 'mms' / 'frontend'}/*"
    return [java, *jvm, *vmargs.split(), "-cp", classpath, MAIN_CLASS, *mms_args]


def start(command: list[str], scratch: Path, environment: dict[str, str]) -> subprocess.Popen:
    """Start MMS in a process group of its own, working in ``scratch`` (its temp folder)."""
    env = {k: v for k, v in environment.items() if k != "PYTHONPATH" and not k.startswith("MMS_")}
    env |= {"TEMP": str(scratch), "TMPDIR": str(scratch), "HOME": str(scratch)}
    return subprocess.Popen(command, env=env, cwd=scratch, process_group=0)


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to MMS's frontend and workers (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over one of MMS's Unix sockets."""

    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(path: Path, method: str, target: str, timeout: float = 10, **query: str) -> tuple[int, dict]:
    """One request to an MMS socket: (status, JSON body or {"message": text})."""
    connection = UnixHTTPConnection(path, timeout)
    try:
        connection.request(method, f"{target}?{urlencode(query)}" if query else target)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, parse(raw)


def parse(raw: bytes) -> dict:
    """An MMS answer as a dict: its JSON object, or ``{"message": text}``."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return {"message": raw.decode(errors="replace")}
    return answer if isinstance(answer, dict) else {"message": str(answer)}


def request_headers(context, idx: int) -> dict[str, str]:
    """Request ``idx``'s headers as an MMS worker's context holds them, names lowercased."""
    return {str(k).lower(): str(v) for k, v in (context.get_all_request_header(idx) or {}).items()}
