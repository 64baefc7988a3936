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
- stopping: SIGTERM stops the frontend and its workers (MMS leaves them orphaned), and the
  frontend exiting by itself is a failure, not a clean exit.

MMS 1.1.11 answers SageMaker's bare ``/invocations`` only for the model named on its
command line, which it registers with batch size 1: server-side batching across requests
is not available on a single-model endpoint (re-registering with a batch size makes
``/invocations`` answer 400 "Parameter model_name is required"). The images of one request
are always predicted as one batch.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from serve.handler import SERVER_PID_ENV
from serve.settings import Settings

log = logging.getLogger("serve")
HANDLER = "serve.handler:handle"
LOG_CONFIG = str(Path(__file__).with_name("log4j2.xml"))
STOP_GRACE_SECONDS = 20  # of SageMaker's 30 s between SIGTERM and SIGKILL


def gpu_count() -> int:
    """Visible NVIDIA GPUs, without importing torch or needing nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)]) if os.path.isdir("/dev") else 0


# MMS's default, -XX:-UseContainerSupport, sizes the Java heap from the host's memory, not
# the container's limit: the frontend can then outgrow the container and be OOM-killed.
JVM_ARGS = "-XX:+UseContainerSupport -XX:MaxRAMPercentage=25.0"


def export_settings(settings: Settings, gpus: int) -> None:
    """Hand the resolved settings to sagemaker-inference, MMS and the workers (environment)."""
    os.environ.setdefault("SAGEMAKER_MODEL_SERVER_VMARGS", JVM_ARGS)
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


def stop_descendants(grace: float = 5) -> None:
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


def _kill_quietly(process) -> None:
    import psutil

    try:
        process.kill()
        log.warning("the model server did not stop within %d s: killed", STOP_GRACE_SECONDS)
    except psutil.Error:
        pass


class _Stop:
    """Whether SIGTERM asked for the stop (otherwise MMS ending is a failure)."""

    requested = False

    @classmethod
    def install(cls, mms_process) -> None:
        """Replaces sagemaker-inference's SIGTERM handler: same action, but remembered."""

        def terminate(_signum, _frame) -> None:
            cls.requested = True
            mms_process.terminate()
            # The Java frontend sometimes takes longer than SageMaker's 30 s grace (seen after
            # a failed model load in multi-model mode): kill it before SageMaker kills us.
            timer = threading.Timer(STOP_GRACE_SECONDS, _kill_quietly, args=(mms_process,))
            timer.daemon = True  # must not keep serve alive once MMS has stopped
            timer.start()

        signal.signal(signal.SIGTERM, terminate)


def _stop_on_worker_failure(signum, _frame) -> None:
    log.error("a model worker could not load the model: stopping (see the worker's log above)")
    from sagemaker_inference import model_server

    try:
        model_server._retrieve_mms_server_process().terminate()
        stop_descendants()
    finally:
        os._exit(1)


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
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from sagemaker_inference import model_server  # reads SAGEMAKER_MULTI_MODEL when imported

    logging.getLogger("sagemaker-inference").propagate = False  # it has its own handler
    model_server._add_sigterm_handler = _Stop.install
    model_server.DEFAULT_MMS_LOG_FILE = LOG_CONFIG
    model_server._reap_children = _reap_quietly
    become_subreaper()
    try:
        model_server.start_model_server(handler_service=HANDLER)
    finally:
        stop_descendants()
    if not _Stop.requested:
        log.error("the model server exited on its own (see its log above)")
        sys.exit(1)
    log.info("model server stopped")


if __name__ == "__main__":
    main()
