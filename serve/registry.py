"""The models a server serves, each a worker pool: one loaded at start (a single-model
endpoint), or those SageMaker registers and unregisters (a multi-model endpoint).

The mode is decided once, by ``serve.server``: it either calls ``add`` for ``/opt/ml/model``
before serving, or leaves the registry to ``POST /models`` (``register``). Everything else
(routing, health, stopping) is the same for both.

A model SageMaker registers must be a folder under the models root; only its artifact files
are copied (``model_artifact.copy_files``) into a private folder, and the workers load that
copy: no URL is ever fetched, no handler or option is taken from the request. A load that
would leave less than ``SERVE_MEMORY_HEADROOM_MB`` free is refused with 507, SageMaker's
signal to unload other models and try again.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import model_artifact
from serve import runtimes, workers
from serve.codecs import first_line
from serve.settings import Settings

log = logging.getLogger("serve.registry")
# A worker's memory besides its model's files, by runtime: measured with resnet18 (86 MB of
# files) on 2 vCPUs, a loaded ONNX Runtime worker holds 202 MB and a PyTorch one 744 MB (RSS).
BASE_WORKER_BYTES = {"onnx": 150 << 20, "torch": 700 << 20}
PAGE_LIMIT = 1000  # GET /models answers at most this many models a page


class RegistryError(Exception):
    """A registration or lookup that cannot be done: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Model:
    """A registered model: its name, the url it was registered with, its staged folder, its pool."""

    name: str
    url: str
    folder: Path
    pool: workers.WorkerPool


def available_memory() -> int:
    """Bytes this container may still use: its cgroup's limit less its use, or the machine's available memory."""
    import psutil

    free = psutil.virtual_memory().available
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # fmt: skip
        try:
            limit = (Path("/sys/fs/cgroup") / limit_file).read_text().strip()
            usage = int((Path("/sys/fs/cgroup") / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            return min(free, int(limit) - usage)
    return free


def memory_needed(folder: Path, workers_per_model: int, runtime: str) -> int:
    """An estimate of what loading the model in ``folder`` takes, for all its workers."""
    files = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return workers_per_model * (BASE_WORKER_BYTES[runtime] + files)


class Registry:
    """Name → ``Model``; thread-safe (registrations run in threads, lookups on the event loop)."""

    def __init__(self, settings: Settings, scratch: Path, staging: Path, gpus: int, on_failure):
        self.settings, self.scratch, self.staging, self.gpus = settings, scratch, staging, gpus
        self.on_failure = on_failure  # (model name, reason): a model's worker could not (re)load
        self.models: dict[str, Model] = {}
        self.loading: set[str] = set()
        self.lock = threading.Lock()
        self.next_gpu = 0

    def add(self, name: str, url: str, folder: Path, on_failure=None) -> Model:
        """Start ``folder``'s workers (in the background) and serve it as ``name``; a worker
        that cannot load is reported to ``on_failure(reason)``, by default the registry's."""
        count = self.settings.workers
        with self.lock:  # round robin over the GPUs, across models as MMS did
            gpus = [(self.next_gpu + i) % self.gpus for i in range(count)] if self.gpus else [-1] * count
            self.next_gpu += count
        files = workers.ModelFiles(name, folder)
        batch = 1 if self.settings.program else self.settings.batch_size  # a user's script takes one at a time
        pool = workers.WorkerPool(files, self.scratch, gpus, self.settings.timeout_seconds, batch,
                                  self.settings.batch_delay_ms / 1000)  # fmt: skip
        model = Model(name, url, folder, pool)
        with self.lock:
            self.models[name] = model
        pool.start(on_failure or (lambda reason: self.on_failure(name, reason)))
        return model

    def get(self, name: str) -> Model | None:
        return self.models.get(name)

    def register(self, name: str, url: str) -> Model:
        """Multi-model ``POST /models``: check, stage, load and wait until every worker is ready."""
        with self.lock:
            if name in self.models or name in self.loading:
                raise RegistryError(409, f"model {name!r} is already registered")
            self.loading.add(name)
        try:
            folder = self._stage(name, url)
            model = self._load(name, url, folder)
        finally:
            with self.lock:
                self.loading.discard(name)
        log.info("model %s loaded from %s", name, url)
        return model

    def _stage(self, name: str, url: str) -> Path:
        """A private copy of the artifact files of ``url``, a model folder under the models root."""
        try:
            source = Path(url).resolve(strict=True)
        except (OSError, RuntimeError):
            raise RegistryError(404, f"model folder {url!r} not found") from None
        root = (self.settings.base_dir / "models").resolve()
        if root not in source.parents or not source.is_dir():
            raise RegistryError(400, f"url must be a model folder under {root}, got {url!r}")
        staged = self.staging / name
        shutil.rmtree(staged, ignore_errors=True)
        try:
            model_artifact.copy_files(source, staged)
        except (model_artifact.ArtifactError, OSError) as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise RegistryError(400, first_line(exc)) from None
        return staged

    def _load(self, name: str, url: str, folder: Path) -> Model:
        try:
            runtime = runtimes.choose(self.settings.runtime, gpu=self.gpus > 0)
        except ValueError as exc:  # SERVE_RUNTIME names one this image does not have
            shutil.rmtree(folder, ignore_errors=True)
            raise RegistryError(500, first_line(exc)) from None
        needed, free = memory_needed(folder, self.settings.workers, runtime), available_memory()
        headroom = self.settings.memory_headroom_mb << 20
        if needed + headroom > free:
            shutil.rmtree(folder, ignore_errors=True)
            raise RegistryError(507, f"not enough memory to load {name!r}: it needs about {needed >> 20} MB and "
                                f"{free >> 20} MB is free, less SERVE_MEMORY_HEADROOM_MB={headroom >> 20}")  # fmt: skip
        failures: list[str] = []
        loaded = threading.Event()  # until then, a failure is this POST's answer; after it, the registry's

        def failed(reason: str) -> None:
            (self.on_failure(name, reason) if loaded.is_set() else failures.append(reason))

        model = self.add(name, url, folder, failed)
        while not model.pool.healthy() and not failures:
            if model.pool.stopped.wait(0.05):
                break
        if failures or not model.pool.healthy():
            self.remove(name)
            reason = failures[0] if failures else "the model was unloaded while it loaded"
            status = 507 if "MemoryError" in reason or "Out of resources" in reason else 500
            raise RegistryError(status, f"model {name!r} failed to load: {reason}")
        loaded.set()
        return model

    def remove(self, name: str) -> Model:
        """Stop a model's workers and delete its staged copy (``DELETE /models/<name>``)."""
        with self.lock:
            model = self.models.pop(name, None)
        if model is None:
            raise RegistryError(404, f"model {name!r} is not loaded")
        model.pool.stop()
        model.pool.wait(10)
        if model.folder.parent == self.staging:
            shutil.rmtree(model.folder, ignore_errors=True)
        log.info("model %s unloaded", name)
        return model

    def page(self, limit: int, token: str) -> tuple[list[Model], str | None]:
        """Models in name order after ``token`` (a name), at most ``limit``; and the next page's token."""
        names = sorted(n for n in list(self.models) if n > token)
        chosen = [self.models[n] for n in names[:limit] if n in self.models]
        return chosen, (names[limit - 1] if len(names) > limit else None)

    def healthy(self) -> bool:
        """Every model's workers loaded and running (a multi-model endpoint with none is healthy)."""
        return all(model.pool.healthy() for model in list(self.models.values()))

    def close_queues(self) -> None:
        """Answer every queued request 503 (the server is stopping); batches in flight finish."""
        for model in list(self.models.values()):
            model.pool.queue.close()

    def stop(self, signum: int) -> None:
        for model in list(self.models.values()):
            model.pool.stop(signum)

    def wait(self, timeout: float | None = None) -> None:
        for model in list(self.models.values()):
            model.pool.wait(timeout)
