"""The ``serve`` executable: uvicorn and our gateway on the serving port, MMS's Python workers behind it.

What SageMaker's serving stack gets wrong, and what ``serve`` does instead:

- doors: sagemaker-inference binds MMS's management API to the serving port; here the only
  socket on the network is the gateway's (``serve.gateway`` on ``serve.listener``), which
  serves SageMaker's routes and nothing else, and the workers listen on Unix sockets in a
  private folder;
- the server: MMS's Java frontend (netty 4.1.91, no release since June 2023) is not used,
  and no image has Java: a maintained Python HTTP server (uvicorn) answers, and the workers
  are driven over MMS's own protocol (``serve.workers``), batching requests across clients;
- code from data: MMS puts the model folder (and sagemaker-inference ``code/``) on the
  workers' ``PYTHONPATH`` and obeys a ``MAR-INF/MANIFEST.json``; here the workers only ever see
  a copy of the artifact's files (``model_artifact.copy_files``), and no ``requirements.txt``
  is installed, unless the deployer sets ``SAGEMAKER_PROGRAM`` (``serve.script_mode``: staged
  copies, the code folder alone on the import path);
- privileges: started as root, ``serve`` prepares its folders, binds the port, then runs
  everything (gateway, workers) as ``SERVE_USER``;
- health: the model is loaded and warmed up by a pre-flight process before the workers start,
  so a broken artifact stops the container with the reason; ``/ping`` is 200 only while every
  worker is loaded and running; a worker that cannot load stops the server;
- traffic: every request is answered (503 with ``Retry-After`` when the queue is full, never
  a closed connection), and slow or malformed clients hold no worker;
- logs: stdout only; one access line per request, after its answer, none per ``/ping``;
- stopping: SIGTERM stops accepting, lets the requests in flight finish, then stops the
  workers (their process groups); what is left is killed after the grace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import model_artifact
from serve import gateway, listener, logs, script_mode
from serve.codecs import first_line
from serve.registry import Registry, RegistryError
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
        }
    )


def raise_open_files_limit() -> None:
    """Allow as many open files as the hard limit does: each client connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ServerFolder:
    """A private folder for one server: the staged model(s), and a scratch folder (the
    workers' sockets, log fifos and temp files) that only the server's user can enter."""

    def __init__(self, user: pwd.struct_passwd | None):
        self.root = Path(tempfile.mkdtemp(prefix="serve-"))
        self.root.chmod(0o755)
        self.model, self.models, self.scratch = self.root / "model", self.root / "models", self.root / "scratch"
        self.script: script_mode.Staged | None = None  # script mode's staged model and code
        for folder in (self.scratch, self.models):
            folder.mkdir(mode=0o700)
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)

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
    env = os.environ | {"TEMP": str(cwd), "TMPDIR": str(cwd)}  # as the workers: temp files in the scratch folder
    result = subprocess.run(
        [sys.executable, "-m", "serve.handler", str(model_dir)], capture_output=True, text=True, cwd=cwd, env=env
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


class Lifecycle:
    """How serving ends: SIGTERM/SIGINT stop it cleanly (the listener finishes the requests in
    flight, then the workers stop, killed after the grace); a worker that cannot load stops it
    as a failure (single model; a multi-model endpoint unloads that model instead)."""

    def __init__(self) -> None:
        self.requested = False  # a signal asked for the stop
        self.failed = False
        self.listener: listener.Listener | None = None
        self.registry: Registry | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, self._terminate)

    def _terminate(self, _signum, _frame) -> None:
        self.requested = True
        self._stop()

    def fail(self, reason: str) -> None:
        """Stop serving as a failure (from any thread)."""
        log.error("%s", reason)
        self.failed = True
        self._stop()

    def _stop(self) -> None:
        if self.listener is None:
            sys.exit(0 if self.requested and not self.failed else 1)
        self.listener.stop()
        if self.registry is not None:  # what is still queued then gets 503 before the grace ends
            timer = threading.Timer(STOP_GRACE_SECONDS - 5, self.registry.close_queues)
            timer.daemon = True
            timer.start()


def prepare(settings: Settings, folder: ServerFolder) -> Path | None:
    """As the starting user: stage the model into the server's folder (none: multi-model)."""
    source = settings.base_dir / "model"
    if settings.program:  # script mode: the deployer chose to run the code in the model
        return stage_script(settings, source, folder)
    if settings.multi_model:
        return None
    known = (*model_artifact.ARTIFACT_FILES, *model_artifact.OPTIONAL_FILES)
    unused = sorted(p.name for p in source.iterdir() if p.name not in known) if source.is_dir() else []
    if unused:  # e.g. code/ of a model packed for AWS's containers: never imported here
        log.info("serving %s only; not used from %s: %s", ", ".join(known), source, ", ".join(unused[:10]))
    try:
        return folder.stage(source)
    except (model_artifact.ArtifactError, OSError) as exc:
        log.error("pre-flight: the model in %s cannot serve: %s", source, first_line(exc))
        sys.exit(1)


def stage_script(settings: Settings, source: Path, folder: ServerFolder) -> Path:
    """Script mode: stage the model and code folders in full; MMS's worker itself gets an empty folder."""
    try:
        folder.script = script_mode.stage(settings, source, folder.root)
    except (script_mode.ScriptModeError, OSError) as exc:
        log.error("script mode cannot start: %s", first_line(exc))
        sys.exit(1)
    folder.model.mkdir(mode=0o555)
    return folder.model


def activate_script_mode(folder: ServerFolder) -> None:
    """As the server's user: install code/requirements.txt and tell the workers where the code is
    (without script mode: make sure they are told nothing)."""
    try:
        script_mode.activate(folder.script, folder.scratch)
    except script_mode.ScriptModeError as exc:
        log.error("script mode cannot start: %s", first_line(exc))
        sys.exit(1)


def load_settings(gpus: int) -> Settings:
    """The settings from the environment (a bad one stops ``serve`` with its name), logged."""
    try:
        settings = Settings.from_env(gpus)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    logging.getLogger().setLevel(settings.log_level)
    log.info("settings: %s", settings)
    return settings


def open_registry(settings: Settings, folder: ServerFolder, gpus: int, lifecycle: Lifecycle) -> Registry:
    """The models' registry; a worker that cannot load stops a single-model server, and
    unloads its model on a multi-model one (SageMaker loads it again on its next request)."""

    def worker_failed(name: str, reason: str) -> None:  # called from the failed worker's own thread
        if not settings.multi_model:
            return lifecycle.fail(f"{reason}: stopping")
        log.error("%s: unloading model %s", reason, name)
        threading.Thread(target=unload, args=(name,), daemon=True).start()  # it waits for that thread

    def unload(name: str) -> None:
        with contextlib.suppress(RegistryError):
            registry.remove(name)

    registry = Registry(settings, folder.scratch, folder.models, gpus, worker_failed)
    return registry


def serve_until_stopped(lifecycle: Lifecycle, sock, port: int) -> None:
    """Answer on the port until a signal or a failure stops the listener."""
    log.info("listening on port %d", port)
    lifecycle.listener.run(sockets=[sock])


def clean_up(registry: Registry) -> None:
    """Stop the workers (killed after the grace) and what they left running."""
    registry.stop(signal.SIGTERM)
    registry.wait(STOP_GRACE_SECONDS / 2)
    registry.stop(signal.SIGKILL)
    stop_descendants()


def exit_status(lifecycle: Lifecycle) -> None:
    """A stop that was asked for is a clean exit; any other is a failure."""
    if lifecycle.failed or not lifecycle.requested:
        log.error("the model server stopped without being asked to (see its log above)")
        sys.exit(1)
    log.info("model server stopped")


def main() -> None:
    """Serve ``/opt/ml/model`` (or the models SageMaker registers under ``/opt/ml/models``)."""
    logs.configure()
    gpus = gpu_count()
    settings = load_settings(gpus)
    lifecycle = Lifecycle()
    lifecycle.install()
    raise_open_files_limit()
    user = server_user(settings.user)
    folder = ServerFolder(user)
    try:  # every way out, a failed start's included, removes the staged model (best effort once
        run(settings, lifecycle, folder, user, gpus)  # privileges are gone: a container's disk goes with it)
    finally:
        shutil.rmtree(folder.root, ignore_errors=True)
    exit_status(lifecycle)


def run(
    settings: Settings, lifecycle: Lifecycle, folder: ServerFolder, user: pwd.struct_passwd | None, gpus: int
) -> None:
    """Stage, drop privileges, check the model, then answer until stopped."""
    model_dir = prepare(settings, folder)
    sock = listener.bind(settings.port)  # before privileges go: the port may be below 1024
    drop_privileges(user)
    export_settings(settings)
    activate_script_mode(folder)
    if model_dir is not None:
        preflight(folder.script.model_dir if folder.script else model_dir, folder.scratch)
    registry = lifecycle.registry = open_registry(settings, folder, gpus, lifecycle)
    lifecycle.listener = listener.Listener(gateway.Gateway(settings, registry), settings, STOP_GRACE_SECONDS)
    become_subreaper()
    if model_dir is not None:  # a single-model endpoint; a multi-model one waits for POST /models
        registry.add("model", str(settings.base_dir / "model"), model_dir)
    serve_until_stopped(lifecycle, sock, settings.port)
    clean_up(registry)


if __name__ == "__main__":
    main()
