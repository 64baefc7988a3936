"""The ``serve`` executable: multi-model-server through sagemaker-inference, with our handler.

``model_server.start_model_server`` does the work (MMS configuration, ports, the
multi-model mode, SIGTERM to the Java frontend). Around it we fix what SageMaker's stack
gets wrong:

- health: the model is loaded and warmed up by a pre-flight process before MMS starts, so a
  broken artifact stops the container with the reason in the log instead of answering
  ``/ping`` with 200 while requests hang; a worker that later fails to load it stops the
  server too (``serve.handler``);
- logs: stdout only, no access line per ``/ping``;
- workers: one per GPU, or a few on CPU with torch threads shared out, not one per core;
- server-side batching: the model is registered with MMS batch size and delay when asked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from serve.handler import SERVER_PID_ENV
from serve.settings import MODEL_NAME, Settings

log = logging.getLogger("serve")
HANDLER = "serve.handler:handle"
LOG_CONFIG = str(Path(__file__).with_name("log4j2.xml"))


def gpu_count() -> int:
    """Visible NVIDIA GPUs, without importing torch or needing nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)]) if os.path.isdir("/dev") else 0


def export_settings(settings: Settings, gpus: int) -> None:
    """Hand the resolved settings to sagemaker-inference, MMS and the workers (environment)."""
    os.environ.update(
        {
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(settings.workers),
            "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": str(settings.timeout_seconds),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(settings.max_payload_mb),
            "SAGEMAKER_BIND_TO_PORT": str(settings.port),
            "SERVE_TORCH_THREADS": str(settings.torch_threads),
            "MMS_NUMBER_OF_GPU": str(gpus),  # MMS pins worker i to GPU i % gpus
            "OMP_NUM_THREADS": str(settings.torch_threads),
            SERVER_PID_ENV: str(os.getpid()),
            # multi-model-server and model-archiver live beside this interpreter
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
    )


def preflight(model_dir: Path) -> None:
    """Load and warm up the model in a throw-away process; exit with its reason if it fails."""
    result = subprocess.run([sys.executable, "-m", "serve.handler", str(model_dir)], capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip().splitlines()
    if result.returncode != 0:
        log.error("%s", output[-1] if output else f"pre-flight exited with {result.returncode}")
        sys.exit(1)
    log.info("%s", output[-1])


def become_subreaper() -> None:
    """Adopt orphaned descendants: MMS workers outlive the Java frontend when it stops."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def stop_descendants(grace: float = 10) -> None:
    """Terminate what is left under this process (workers), then kill the stragglers."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        child.kill()
    if children:
        log.info("stopped %d leftover process(es)", len(children))


def _reap_quietly(_signum, _frame) -> None:
    """sagemaker-inference's SIGCHLD reaper logs an ERROR whenever no child is left."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _stop_on_worker_failure(signum, _frame) -> None:
    log.error("a model worker could not load the model: stopping (see the worker's log above)")
    from sagemaker_inference import model_server

    try:
        model_server._retrieve_mms_server_process().terminate()
        stop_descendants()
    finally:
        os._exit(1)


def register_batched_model(settings: Settings, model_dir: Path, timeout: float = 120) -> None:
    """Register the model with MMS server-side batching once the management API answers."""
    query = urllib.parse.urlencode(
        {
            "url": str(model_dir), "model_name": MODEL_NAME, "batch_size": settings.batch_size,
            "max_batch_delay": settings.max_batch_delay_ms, "initial_workers": settings.workers,
            "synchronous": "true",
        }
    )  # fmt: skip
    url = f"http://127.0.0.1:{settings.port}/models?{query}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout) as response:
                log.info("registered with batch size %d: %s", settings.batch_size, json.loads(response.read()))
                return
        except OSError:
            time.sleep(0.5)
    log.error("could not register the model with MMS within %.0f s", timeout)
    os.kill(os.getpid(), signal.SIGUSR1)


def main() -> None:
    """Start the model server for ``/opt/ml/model`` (or ``/opt/ml/models`` in multi-model mode)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s"
    )
    gpus = gpu_count()
    try:
        settings = Settings.from_env(gpus)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    export_settings(settings, gpus)
    model_dir = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "model"
    log.info("settings: %s", settings)
    if not settings.multi_model:
        preflight(model_dir)
    signal.signal(signal.SIGUSR1, _stop_on_worker_failure)
    signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    from sagemaker_inference import model_server  # reads SAGEMAKER_MULTI_MODEL when imported

    logging.getLogger("sagemaker-inference").propagate = False  # it has its own handler
    model_server.DEFAULT_MMS_LOG_FILE = LOG_CONFIG
    if settings.batch_size > 1 and not settings.multi_model:
        # Models named on MMS's command line get batch size 1: start without it, register.
        model_server.ENABLE_MULTI_MODEL = True
        threading.Thread(target=register_batched_model, args=(settings, model_dir), daemon=True).start()
    model_server._reap_children = _reap_quietly
    become_subreaper()
    try:
        model_server.start_model_server(handler_service=HANDLER)
    finally:
        stop_descendants()
    log.info("model server stopped")


if __name__ == "__main__":
    main()
