"""A model's worker pool: MMS's Python workers, and the queue that batches requests for them.

Each worker is one ``mms.model_service_worker`` process (and the child it forks for our
connection) with the model loaded, driven by a thread of ours over MMS's protocol
(``serve.mms``) on a Unix socket in the server's private folder. A worker's thread takes the
next batch from its model's ``BatchQueue``: the oldest waiting request, and (when it is one
image, which our handler can stack) the single-image requests queued behind it, up to
``SERVE_BATCH_SIZE``, waiting at most ``SERVE_BATCH_DELAY_MS`` for more. The whole batch goes
to the worker in one message and through the model in one forward pass.

Like MMS: worker ``i`` on GPU ``i % gpus``; a worker that dies or overruns the timeout is
killed and replaced (its batch answered 500 or 504); ``/ping`` is healthy only while every
worker is loaded and running. A worker that cannot load (at start or as a replacement) is
reported once, through ``on_failure``: the server stops, or a multi-model endpoint unloads
that model.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serve import mms
from serve.mms import HANDLER, Job, Reply

log = logging.getLogger("serve.workers")
START_SECONDS = 300  # for a worker to load its model (a large one on a GPU)
RESTART_PAUSE = 1.0  # between a worker's death and its replacement: no busy loop on a crash
POLL_SECONDS = 1.0  # an idle worker's thread checks this often that its process still runs
_SERIALS = itertools.count(1)  # names a worker's files: unique and short (a socket's path has 107 bytes at most)


class WorkerError(Exception):
    """No answer from a worker, and the HTTP status that says why: 500 it failed (the reason
    is logged, not told), 503 none was free in time or the server is stopping, 504 it overran
    the timeout."""

    def __init__(self, reason: str, status: int = 500):
        super().__init__(reason)
        self.status = status


@dataclass
class Pending:
    """A request waiting for its model: ``answer`` is called once, from a worker's thread,
    with its Reply or a WorkerError."""

    job: Job
    answer: Callable[[Reply | WorkerError], None]
    deadline: float  # time.monotonic() after which it is answered 503 instead of predicted
    batchable: bool = False  # one image: it may share a forward pass with others


class BatchQueue:
    """A model's waiting requests, handed to its workers in batches."""

    def __init__(self, batch_size: int, delay_seconds: float):
        self.batch_size, self.delay = batch_size, delay_seconds
        self.items: collections.deque[Pending] = collections.deque()
        self.ready = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return len(self.items)

    def put(self, pending: Pending, front: bool = False) -> None:
        with self.ready:
            if self.closed:
                pending.answer(WorkerError("the server is stopping", 503))
                return
            self.items.appendleft(pending) if front else self.items.append(pending)
            self.ready.notify()

    def take(self, timeout: float) -> list[Pending]:
        """The next batch (empty after ``timeout`` with nothing waiting, or once closed)."""
        with self.ready:
            if not self.items and not self.closed:
                self.ready.wait(timeout)
            if not self.items or self.closed:
                return []
            batch = [self.items.popleft()]
            if not batch[0].batchable:
                return batch
            until = time.monotonic() + self.delay
            while len(batch) < self.batch_size and not self.closed:
                if self.items:
                    if not self.items[0].batchable:
                        break
                    batch.append(self.items.popleft())
                elif (left := until - time.monotonic()) <= 0 or not self.ready.wait(left):
                    break
            return batch

    def close(self) -> None:
        """Answer everything still waiting with 503 and hand out nothing more."""
        with self.ready:
            self.closed, waiting = True, list(self.items)
            self.items.clear()
            self.ready.notify_all()
        for pending in waiting:
            pending.answer(WorkerError("the server is stopping", 503))


@dataclass(frozen=True)
class ModelFiles:
    """What a worker loads: the model's name and staged folder."""

    name: str
    folder: Path


class Worker:
    """One ``mms.model_service_worker`` (a listener and the child it forks for our connection,
    in a process group of their own) and the thread that feeds it batches."""

    def __init__(self, index: int, model: ModelFiles, scratch: Path, gpu: int, timeout: float, batch_size: int):
        self.index, self.model, self.scratch, self.gpu = index, model, scratch, gpu
        self.timeout, self.batch_size = timeout, batch_size
        self.generation, self.process, self.sock, self.reader, self.ready = 0, None, None, None, False
        self.probe: socket.socket | None = None  # a non-blocking duplicate of ``sock`` (``alive``)
        self.child: int | None = None  # the process the listener forked for our connection
        self.killed = threading.Event()  # this generation's: its log is not relayed after it
        self.serial = next(_SERIALS)

    @property
    def label(self) -> str:
        return f"worker {self.index}" if self.model.name == "model" else f"model {self.model.name} worker {self.index}"

    def start(self) -> None:
        """Start the process, connect, load the model; raises WorkerError if it fails."""
        self.generation += 1
        self.killed, self.child, self.probe = threading.Event(), None, None
        path = self.scratch / f"{self.io_name}.sock"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MMS_")}
        env |= {"TEMP": str(self.scratch), "TMPDIR": str(self.scratch), "HOME": str(self.scratch)}
        env["MMS_DECODE_INPUT_REQUEST"] = "false"  # the handler reads the raw body
        self.process = subprocess.Popen(self.command(path), env=env, cwd=self.scratch, process_group=0)
        self.sock = self._connect(path)
        message = mms.load_message(self.model.name, str(self.model.folder), self.gpu, self.io_name, self.batch_size)
        self.sock.sendall(message)
        self.sock.settimeout(START_SECONDS)
        reader = mms.Reader(self.sock.makefile("rb"))
        try:
            code, text = mms.read_load_answer(reader)
        except (OSError, mms.ProtocolError) as exc:
            raise WorkerError(f"{self.label} died while loading the model ({exc})") from None
        if code != 200:
            raise WorkerError(f"{self.label} could not load the model: {code} {text}")
        with contextlib.suppress(OSError):
            path.unlink()  # connected: nobody else may connect to it
        self.child = _forked_child(self.process.pid)
        for fifo in self.fifos():  # the worker writes its log to these; they must be read
            threading.Thread(target=_relay_log, args=(fifo, self.killed), daemon=True).start()
        self.sock.settimeout(self.timeout)
        # alive() peeks through a duplicate without a timeout: the socket's own recv waits up to
        # the timeout for data (Python polls first), and /ping must never wait on the event loop
        self.probe = self.sock.dup()
        self.probe.settimeout(0)
        self.reader = reader

    def command(self, path: Path) -> list[str]:
        """MMS's worker listening on ``path``; -P: its working directory (the scratch folder)
        is not on its import path."""
        return [sys.executable, "-P", "-m", "mms.model_service_worker", "--sock-type", "unix",
                "--sock-name", str(path), "--handler", HANDLER, "--model-path", str(self.model.folder),
                "--model-name", self.model.name, "--preload-model", "false",
                "--tmp-dir", str(self.scratch)]  # fmt: skip

    @property
    def io_name(self) -> str:
        """This generation's name for its socket and log fifos (``fifos``)."""
        return f"worker-{self.serial}-{self.generation}"

    def fifos(self) -> list[Path]:
        """The log fifos MMS's worker makes from ``io_name``: its stdout and its stderr."""
        return [self.scratch / f"{self.io_name}-{stream}" for stream in ("stdout", "stderr")]

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerError(f"{self.label} exited with {self.process.returncode} before it listened")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except OSError:
                sock.close()
                time.sleep(0.05)
        raise WorkerError(f"{self.label} did not listen within 60 s")

    def predict(self, jobs: list[Job]) -> list[Reply]:
        """One batch, answered within the timeout; WorkerError if the worker failed."""
        try:
            self.sock.sendall(mms.predict_message(jobs))
            return mms.read_replies(self.reader, len(jobs))
        except TimeoutError:
            reason = f"the model took longer than {self.timeout:.0f} s (SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS)"
            raise WorkerError(reason, 504) from None
        except mms.ProtocolError as exc:
            raise WorkerError(str(exc)) from None
        except Exception as exc:  # a broken connection, or an answer that is not MMS's protocol
            raise WorkerError(f"the worker's connection failed ({type(exc).__name__})") from None

    def alive(self) -> bool:
        """Both processes running: the listener, and the forked one whose end closes our
        connection. Never waits (the event loop asks it for /ping)."""
        if self.process is None or self.process.poll() is not None or self.probe is None:
            return False
        try:
            return self.probe.recv(1, socket.MSG_PEEK) != b""  # b"": the connection ended
        except BlockingIOError:
            return True  # nothing to read: connected and idle
        except (OSError, ValueError):
            return False

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the worker's processes; the forked one also sees its connection end and exits."""
        self.killed.set()
        if self.probe is not None:
            self.probe.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # close() alone waits for the reader's file
            self.sock.close()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def clean_up(self) -> None:
        """After the processes ended: reap the forked one (``serve`` adopted it), end the log
        relays still waiting for a writer, and remove the fifos."""
        if self.child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.child, 0)
        for fifo in self.fifos():
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a relay blocked in open() gets EOF
            with contextlib.suppress(OSError):
                fifo.unlink()


def _forked_child(listener: int) -> int | None:
    """The pid of the process MMS's listener forked for our connection (it holds the model)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        children = psutil.Process(listener).children()
        return children[0].pid if children else None
    return None


def _relay_log(fifo: Path, killed: threading.Event) -> None:
    """Copy a worker's log lines to ours, without MMS's per-request "[METRICS]" lines, until
    the worker is killed."""
    with contextlib.suppress(OSError), open(fifo, "rb") as lines:
        for line in lines:
            if killed.is_set():
                return
            if not line.startswith(b"[METRICS]"):
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()


class WorkerPool:
    """A model's ``count`` workers and its queue."""

    def __init__(self, model: ModelFiles, scratch: Path, gpus: list[int], timeout: float, batch_size: int,
                 delay_seconds: float):  # fmt: skip
        self.queue = BatchQueue(batch_size, delay_seconds)
        self.workers = [Worker(i, model, scratch, gpu, timeout, batch_size) for i, gpu in enumerate(gpus)]
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, on_failure: Callable[[str], None]) -> None:
        """Start every worker in the background; ``on_failure(reason)`` once if one cannot
        load, at start or as the replacement of one that died."""
        self.on_failure, self.failed = on_failure, threading.Event()
        for worker in self.workers:
            thread = threading.Thread(target=self._run, args=(worker,), name=worker.label, daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, pending: Pending) -> None:
        """Queue a request; its ``answer`` is called from a worker's thread."""
        self.queue.put(pending)

    def _run(self, worker: Worker) -> None:
        """A worker's life: load, serve batches until its process fails, replace it; until stopped."""
        while not self.stopped.is_set():
            try:
                worker.start()
            except Exception as exc:  # WorkerError, or the OS refusing a process, a socket, a write
                self._end(worker)
                self._fail(str(exc) if isinstance(exc, WorkerError) else f"{worker.label}: {exc!r}")
                return
            if self.stopped.is_set():
                break
            worker.ready = True
            log.info("%s ready (pid %d)", worker.label, worker.process.pid)
            reason = self._serve(worker)
            worker.ready = False
            self._end(worker)
            if self.stopped.is_set():
                return
            log.warning("%s stopped (%s): starting a new one", worker.label, reason)
            time.sleep(RESTART_PAUSE)
        self._end(worker)

    @staticmethod
    def _end(worker: Worker) -> None:
        """Kill the worker's processes, reap them and remove its files."""
        worker.kill()
        if worker.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(30)
        worker.clean_up()

    def _serve(self, worker: Worker) -> str:
        """Batches through ``worker`` until it fails or the pool stops; returns why it ended."""
        while not self.stopped.is_set():
            batch = self.queue.take(POLL_SECONDS)
            now = time.monotonic()
            for late in [p for p in batch if p.deadline <= now]:
                late.answer(WorkerError("the server is busy; try again", 503))
            batch = [p for p in batch if p.deadline > now]
            if not worker.alive():
                for pending in reversed(batch):  # they wait for the replacement
                    self.queue.put(pending, front=True)
                return "its process ended"
            if not batch:
                continue
            try:
                replies = worker.predict([p.job for p in batch])
            except WorkerError as exc:
                failure = WorkerError("the server is stopping", 503) if self.stopped.is_set() else exc
                for pending in batch:
                    pending.answer(failure)
                return str(exc)
            for pending, reply in zip(batch, replies, strict=True):
                pending.answer(reply)
        return "the server is stopping"

    def _fail(self, reason: str) -> None:
        if not self.stopped.is_set() and not self.failed.is_set():
            self.failed.set()
            self.on_failure(reason)

    def healthy(self) -> bool:
        """Every worker loaded and running."""
        return all(worker.ready and worker.alive() for worker in self.workers)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop (SIGTERM) or kill every worker; requests still queued are answered 503."""
        self.stopped.set()
        self.queue.close()
        for worker in self.workers:
            worker.ready = False
            worker.kill(signum)

    def wait(self, timeout: float | None = None) -> None:
        """Until every worker has exited (after ``stop``)."""
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout)
        for thread in self.threads:
            thread.join(timeout)
