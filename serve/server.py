"""The ``serve`` executable: our gateway on the serving port, multi-model-server's workers behind it.

What SageMaker's serving stack gets wrong, and what ``serve`` does instead:

- doors: sagemaker-inference binds MMS's management API to the serving port; here MMS
  listens on Unix sockets in a private folder and only ``serve.gateway`` is on the network;
- code from data: MMS puts the model folder (and sagemaker-inference ``code/``) on the
  workers' ``PYTHONPATH`` and obeys a ``MAR-INF/MANIFEST.json``; here MMS only ever sees a
  copy of the artifact's two files (``model_artifact.copy_files``), and no
  ``requirements.txt`` is installed, unless the deployer sets ``SAGEMAKER_PROGRAM``
  (``serve.script_mode``: staged copies, the code folder alone on the import path);
- privileges: started as root, ``serve`` prepares its folders, binds the port, then runs
  everything (gateway, workers, MMS's frontend) as ``SERVE_USER``;
- the request's path: MMS's Java frontend relays each request to a Python worker and costs
  milliseconds per request; on a single-model endpoint the gateway drives MMS's workers
  itself (``serve.workers``), and the frontend runs only for multi-model endpoints;
- health: the model is loaded and warmed up by a pre-flight process before the workers start,
  so a broken artifact stops the container with the reason; ``/ping`` is 200 only while every
  worker is ready (MMS answers 200 "Unhealthy"); a worker that fails to load stops the server;
- logs: stdout only; the gateway's access line, after the answer, instead of MMS's lines
  before it (``serve/log4j2.xml``), none per ``/ping``;
- stopping: SIGTERM reaches the workers (and the frontend: one process group), and the
  frontend exiting by itself is a failure, not a clean exit.

Each worker takes one request at a time (batch size 1, as MMS registers a single model): the
images of one request are one batch.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import model_artifact
from serve import gateway, logs, mms, script_mode, workers
from serve.handler import SERVER_PID_ENV
from serve.settings import Settings

log = logging.getLogger("serve")
STOP_GRACE_SECONDS = 20  # of SageMaker's 30 s between SIGTERM and SIGKILL


def gpu_count() -> int:
    """Visible NVIDIA GPUs, without importing torch or needing nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)]) if os.path.isdir("/dev") else 0


def export_settings(settings: Settings) -> None:
    """Hand the resolved settings to the workers (their environment)."""
    os.environ.update(
        {
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(settings.workers),
            "SERVE_THREADS": str(settings.threads),
            "OMP_NUM_THREADS": str(settings.threads),
            "SERVE_LOG_LEVEL": settings.log_level,
            SERVER_PID_ENV: str(os.getpid()),
        }
    )


class RuntimeFolder:
    """A private folder for one server: MMS's configuration (multi-model; read-only), the staged model(s),
    and a scratch folder (sockets, Java's temp files) that only the server's user can enter."""

    def __init__(self, user: pwd.struct_passwd | None):
        self.root = Path(tempfile.mkdtemp(prefix="serve-"))
        self.root.chmod(0o755)
        self.config, self.model, self.models = self.root / "mms.properties", self.root / "model", self.root / "models"
        self.scratch = self.root / "scratch"
        self.script: script_mode.Staged | None = None  # script mode's staged model and code
        for folder in (self.scratch, self.models):
            folder.mkdir(mode=0o700)
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)
        self.config.chmod(0o444)

    def stage(self, model_dir: Path) -> Path:
        """Copy the artifact's files (nothing else) and make the copy read-only."""
        model_artifact.copy_files(model_dir, self.model)
        for path in self.model.iterdir():
            path.chmod(0o444)
        self.model.chmod(0o555)
        return self.model


def server_user(name: str) -> pwd.struct_passwd | None:
    """The account to drop to: None when not root, or when asked to stay root."""
    if os.geteuid() != 0 or name == "root":
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log.warning("user %r does not exist: serving as root (create it, or set SERVE_USER)", name)
        return None


def drop_privileges(user: pwd.struct_passwd | None) -> None:
    """Become ``user`` for good (groups, gid, uid)."""
    if user is None:
        return
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update({"HOME": "/tmp", "USER": user.pw_name, "LOGNAME": user.pw_name})
    log.info("running as %s (uid %d)", user.pw_name, user.pw_uid)


def preflight(model_dir: Path, cwd: Path) -> None:
    """Load and warm up the model in a throw-away process; exit with its reason if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "serve.handler", str(model_dir)], capture_output=True, text=True, cwd=cwd
    )
    output = (result.stdout + result.stderr).strip().splitlines()
    if result.returncode != 0:
        log.error("%s", output[-1] if output else f"pre-flight exited with {result.returncode}")
        sys.exit(1)
    log.info("%s", output[-1])


def become_subreaper() -> None:
    """Adopt orphaned descendants, so that none outlives ``serve``."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def stop_descendants(grace: float = 5) -> None:
    """Terminate what is left under this process, then kill the stragglers."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=grace)  # reaped here: no zombie outlives serve
    if children:
        log.info("stopped %d leftover process(es)", len(children))


class Frontend:
    """MMS's Java frontend (multi-model endpoints), signalled through its process group."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def signal(self, signum: int) -> None:
        mms.signal_group(self.process, signum)

    def wait(self) -> None:
        self.process.wait()


class Lifecycle:
    """Signals: SIGTERM/SIGINT stop the backend (the workers, or MMS; killed after the grace);
    SIGUSR1, sent by a worker whose model failed to load, stops it as a failure."""

    def __init__(self) -> None:
        self.requested = False
        self.backend: workers.WorkerPool | Frontend | None = None
        self.finished = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)
        signal.signal(signal.SIGUSR1, self._worker_failed)

    def _terminate(self, _signum, _frame) -> None:
        self.requested = True
        self._stop()

    def _worker_failed(self, _signum, _frame) -> None:
        self.fail("a model worker could not load the model: stopping (see the worker's log above)")

    def fail(self, reason: str) -> None:
        """Stop the backend as a failure."""
        log.error("%s", reason)
        self._stop()

    def _stop(self) -> None:
        if self.backend is None:
            sys.exit(0 if self.requested else 1)
        self.backend.signal(signal.SIGTERM)
        timer = threading.Timer(STOP_GRACE_SECONDS, self._kill)
        timer.daemon = True  # must not keep serve alive once the backend has stopped
        timer.start()

    def _kill(self) -> None:
        if self.backend is not None and not self.finished.is_set():
            log.warning("the model server did not stop within %d s: killed", STOP_GRACE_SECONDS)
            self.backend.signal(signal.SIGKILL)


def prepare(settings: Settings) -> tuple[RuntimeFolder, pwd.struct_passwd | None, Path | None]:
    """As the starting user: the runtime folder, MMS's configuration (multi-model) and the staged model."""
    user = server_user(settings.user)
    runtime = RuntimeFolder(user)
    if settings.multi_model:
        runtime.write_config(mms.properties(settings, gpu_count(), runtime.scratch))
    source = settings.base_dir / "model"
    if settings.program:  # script mode: the deployer chose to run the code in the model
        return runtime, user, stage_script(settings, source, runtime)
    if settings.multi_model:
        return runtime, user, None
    known = (*model_artifact.ARTIFACT_FILES, *model_artifact.OPTIONAL_FILES)
    unused = sorted(p.name for p in source.iterdir() if p.name not in known) if source.is_dir() else []
    if unused:  # e.g. code/ of a model packed for AWS's containers: never imported here
        log.info("serving %s only; not used from %s: %s", ", ".join(known), source, ", ".join(unused[:10]))
    try:
        return runtime, user, runtime.stage(source)
    except (model_artifact.ArtifactError, OSError) as exc:
        log.error("pre-flight: the model in %s cannot serve: %s", source, gateway.one_line(exc))
        sys.exit(1)


def stage_script(settings: Settings, source: Path, runtime: RuntimeFolder) -> Path:
    """Script mode: stage the model and code folders in full; MMS's worker itself gets an empty folder."""
    try:
        runtime.script = script_mode.stage(settings, source, runtime.root)
    except (script_mode.ScriptModeError, OSError) as exc:
        log.error("script mode cannot start: %s", gateway.one_line(exc))
        sys.exit(1)
    runtime.model.mkdir(mode=0o555)
    return runtime.model


def start_script_mode(runtime: RuntimeFolder) -> None:
    """As the server's user: install code/requirements.txt and tell the workers where the code is."""
    try:
        script_mode.activate(runtime.script, runtime.scratch)
    except script_mode.ScriptModeError as exc:
        log.error("script mode cannot start: %s", gateway.one_line(exc))
        sys.exit(1)


def load_settings() -> Settings:
    """The settings from the environment (a bad one stops ``serve`` with its name), logged."""
    try:
        settings = Settings.from_env(gpu_count())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    logging.getLogger().setLevel(settings.log_level)
    log.info("settings: %s", settings)
    return settings


def open_gateway(settings: Settings, runtime: RuntimeFolder, model_dir: Path | None) -> gateway.Gateway:
    """The serving port (bound now, while ``serve`` may still be root) and what is behind it:
    ``model_dir``'s worker pool, or (multi-model) the registry of the models under ``models/``."""
    if not settings.multi_model:
        pool = workers.WorkerPool(model_dir, runtime.scratch, settings.workers, gpu_count(), settings.timeout_seconds)
        return gateway.Gateway(settings, runtime.scratch, None, pool)
    registry = gateway.ModelRegistry(settings.base_dir / "models", runtime.models,
                                     mms.management_socket(runtime.scratch),
                                     settings.timeout_seconds + 60)  # fmt: skip
    return gateway.Gateway(settings, runtime.scratch, registry)


def start_backend(settings: Settings, runtime: RuntimeFolder, front: gateway.Gateway, lifecycle: Lifecycle) -> None:
    """The model workers (or, multi-model, MMS's Java frontend) in process groups of their own;
    ``serve`` adopts what they leave behind."""
    become_subreaper()
    if front.pool is not None:
        lifecycle.backend = front.pool
        front.pool.start(on_failure=lifecycle.fail)
        return
    command = mms.command(runtime.config, runtime.scratch, settings.vmargs)
    lifecycle.backend = Frontend(mms.start(command, runtime.scratch, dict(os.environ)))


def serve_until_stopped(front: gateway.Gateway, lifecycle: Lifecycle, port: int) -> None:
    """Answer on the port until the backend stops (asked to by a signal, or by itself)."""
    threading.Thread(target=front.serve_forever, name="gateway", daemon=True).start()
    log.info("listening on port %d", port)
    lifecycle.backend.wait()
    lifecycle.finished.set()


def clean_up(front: gateway.Gateway, runtime: RuntimeFolder) -> None:
    """Close the port, stop what the workers (or MMS) left running and remove the runtime folder."""
    front.shutdown()
    stop_descendants()
    shutil.rmtree(runtime.root, ignore_errors=True)


def exit_status(lifecycle: Lifecycle) -> None:
    """A stop that was asked for is a clean exit; any other is a failure."""
    if not lifecycle.requested:
        log.error("the model server stopped without being asked to (see its log above)")
        sys.exit(1)
    log.info("model server stopped")


def main() -> None:
    """Serve ``/opt/ml/model`` (or the models SageMaker registers under ``/opt/ml/models``)."""
    logs.configure()
    settings = load_settings()
    lifecycle = Lifecycle()
    lifecycle.install()
    runtime, user, model_dir = prepare(settings)
    front = open_gateway(settings, runtime, model_dir)  # binds the port before privileges go
    drop_privileges(user)
    export_settings(settings)
    start_script_mode(runtime)
    if model_dir is not None:
        preflight(runtime.script.model_dir if runtime.script else model_dir, runtime.scratch)
    start_backend(settings, runtime, front, lifecycle)
    serve_until_stopped(front, lifecycle, settings.port)
    clean_up(front, runtime)
    exit_status(lifecycle)


if __name__ == "__main__":
    main()
