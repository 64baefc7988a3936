"""Single-model endpoints: MMS's Python workers, driven by the gateway itself.

MMS's Java frontend sits between the gateway and the workers on every request: on 2 vCPUs it
added about 3 ms outside our handler (netty reads a body in 4 KB pieces, four thread
hand-offs) and its threads slowed the forward pass by 1.5-2.5 ms (issue 11's notes). On a
single-model endpoint it only relays, so the gateway starts the same worker that MMS starts
(``mms.model_service_worker``, running ``serve.handler:handle`` in MMS's own Context) and
speaks MMS's binary protocol to it on a Unix socket in the private scratch folder. Like MMS:
one request at a time per worker, worker ``i`` on GPU ``i % gpus``, a worker that dies or
overruns the timeout is killed and replaced, and ``/ping`` is healthy only while every
worker is loaded. Multi-model endpoints keep MMS whole (``serve.mms``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serve.mms import HANDLER, SINGLE_MODEL_NAME

log = logging.getLogger("serve.workers")
START_SECONDS = 300  # for a worker to load its model (a large one on a GPU)
RESTART_PAUSE = 1.0  # between a worker's death and its replacement: no busy loop on a crash
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # as MMS's max_response_size; a user's output_fn could return more


class WorkerError(Exception):
    """No answer from a worker, and the HTTP status that says why: 500 it failed (the reason
    is logged, not told), 503 none was free, 504 it overran the timeout."""

    def __init__(self, reason: str, status: int = 500):
        super().__init__(reason)
        self.status = status


@dataclass
class Reply:
    """One request's answer from a worker, as MMS would relay it."""

    status: int
    phrase: str
    content_type: str
    body: bytes


def _field(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack("!i", len(raw)) + raw


def load_message(model_dir: Path, gpu: int, io_name: str) -> bytes:
    """MMS's load command: model name and folder, batch size 1, handler, GPU (-1: none), log fifos."""
    return b"L" + _field(SINGLE_MODEL_NAME) + _field(str(model_dir)) + struct.pack("!i", 1) + _field(HANDLER) + \
        struct.pack("!i", gpu) + _field(io_name)  # fmt: skip


def predict_message(headers: dict[str, str], body: bytes, content_type: str) -> bytes:
    """MMS's inference command for one request: its headers, and the body as input "body"."""
    parts = [b"I", _field("0")]
    parts += [_field(name) + _field(value) for name, value in headers.items()]
    parts += [struct.pack("!i", -1), _field("body"), _field(content_type), _field(body), struct.pack("!ii", -1, -1)]
    return b"".join(parts)


class _Reader:
    """Reads MMS's length-prefixed answer from a buffered socket file."""

    def __init__(self, stream):
        self.stream = stream

    def exact(self, n: int) -> bytes:
        data = self.stream.read(n)
        if data is None or len(data) < n:
            raise WorkerError("the worker closed its connection")
        return data

    def int(self) -> int:
        return struct.unpack("!i", self.exact(4))[0]

    def text(self) -> str:
        n = self.int()
        return self.exact(n).decode("utf-8", "replace") if n > 0 else ""


def read_reply(reader: _Reader) -> Reply:
    """An inference answer (one request): the batch's code and message, then the request's own.
    A batch that failed (the handler raised, or returned no list) carries MMS's message, as
    MMS's frontend answered it, not each request's placeholder body "error"."""
    code, message = reader.int(), reader.text()
    replies = []
    while (length := reader.int()) != -1:
        reader.exact(length)  # request id
        content_type, status, phrase = reader.text(), reader.int(), reader.text()
        for _ in range(reader.int()):  # response headers: ours set none
            reader.text(), reader.text()
        size = reader.int()
        if size > MAX_RESPONSE_BYTES:
            raise WorkerError(f"the worker's answer of {size} bytes is over {MAX_RESPONSE_BYTES}")
        replies.append(Reply(status, phrase, content_type, reader.exact(size)))
    if code != 200:
        return Reply(code, message, "application/json", json.dumps({"message": message}).encode())
    if not replies:
        raise WorkerError(f"the worker answered {code} without a response: {message}")
    return replies[0]


class Worker:
    """One ``mms.model_service_worker`` (a listener and the child it forks for our connection,
    in a process group of their own) with the model loaded."""

    def __init__(self, index: int, model_dir: Path, scratch: Path, gpu: int, timeout: float):
        self.index, self.model_dir, self.scratch, self.gpu, self.timeout = index, model_dir, scratch, gpu, timeout
        self.generation, self.process, self.sock, self.reader, self.ready = 0, None, None, None, False
        self.child: int | None = None  # the process the listener forked for our connection
        self.killed = threading.Event()  # this generation's: its log is not relayed after it
        self.lock = threading.Lock()  # one replacement per generation

    def start(self) -> None:
        """Start the process, connect, load the model; raises WorkerError if it fails."""
        self.generation += 1
        self.killed, self.child = threading.Event(), None
        path = self.scratch / f"worker-{self.index}.sock"
        command = [sys.executable, "-P", "-m", "mms.model_service_worker", "--sock-type", "unix",
                   "--sock-name", str(path), "--handler", HANDLER, "--model-path", str(self.model_dir),
                   "--model-name", SINGLE_MODEL_NAME, "--preload-model", "false",
                   "--tmp-dir", str(self.scratch)]  # fmt: skip
        # as serve.mms.start gave MMS's frontend, whose workers inherited it; -P: the scratch
        # folder (the working directory) is not on the import path
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MMS_")}
        env |= {"TEMP": str(self.scratch), "TMPDIR": str(self.scratch), "HOME": str(self.scratch)}
        env["MMS_DECODE_INPUT_REQUEST"] = "false"  # the handler reads the raw body, as from MMS
        self.process = subprocess.Popen(command, env=env, cwd=self.scratch, process_group=0)
        self.sock = self._connect(path)
        self.sock.sendall(load_message(self.model_dir, self.gpu, self.io_name))
        self.sock.settimeout(START_SECONDS)
        reader = _Reader(self.sock.makefile("rb"))
        try:
            code, message = reader.int(), reader.text()
            reader.int()  # end of the (empty) list of predictions
        except (OSError, WorkerError) as exc:
            raise WorkerError(f"worker {self.index} died while loading the model ({exc})") from None
        if code != 200:
            raise WorkerError(f"worker {self.index} could not load the model: {code} {message}")
        self.child = _forked_child(self.process.pid)
        for fifo in self.fifos():  # the worker writes its log to these; they must be read
            relay = threading.Thread(target=_relay_log, args=(fifo, self.killed), daemon=True)
            relay.start()
        self.sock.settimeout(self.timeout)
        self.reader = reader

    @property
    def io_name(self) -> str:
        """This generation's name for its log fifos (``fifos``)."""
        return f"worker-{self.index}-{self.generation}"

    def fifos(self) -> list[Path]:
        """The log fifos MMS's worker makes from ``io_name``: its stdout and its stderr."""
        return [self.scratch / f"{self.io_name}-{stream}" for stream in ("stdout", "stderr")]

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerError(f"worker {self.index} exited with {self.process.returncode} before it listened")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except OSError:
                sock.close()
                time.sleep(0.05)
        raise WorkerError(f"worker {self.index} did not listen within 60 s")

    def predict(self, headers: dict[str, str], body: bytes, content_type: str) -> Reply:
        """One request, answered within the timeout; WorkerError if the worker failed."""
        try:
            self.sock.sendall(predict_message(headers, body, content_type))
            return read_reply(self.reader)
        except TimeoutError:
            reason = f"the model took longer than {self.timeout:.0f} s (SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS)"
            raise WorkerError(reason, 504) from None
        except WorkerError:
            raise
        except Exception as exc:  # a broken connection, or an answer that is not MMS's protocol
            raise WorkerError(f"the worker's connection failed ({type(exc).__name__})") from None

    def alive(self) -> bool:
        """Both processes running: the listener, and the forked one whose end closes our connection."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            readable = select.select([self.sock], [], [], 0)[0]
            return not readable or self.sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the worker's processes; the forked one also sees its connection end, and exits
        (its "Frontend disconnected" traceback is not relayed)."""
        self.killed.set()
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
    """``count`` workers; a request takes an idle one (waiting up to the timeout) and returns it."""

    def __init__(self, model_dir: Path, scratch: Path, count: int, gpus: int, timeout: float):
        self.timeout = timeout
        self.workers = [Worker(i, model_dir, scratch, i % gpus if gpus else -1, timeout) for i in range(count)]
        self.idle: queue.Queue[tuple[Worker, int]] = queue.Queue()  # (worker, its generation when it was put)
        self.stopped = threading.Event()

    def start(self, on_failure) -> None:
        """Start every worker in the background; ``on_failure(reason)`` if one cannot load, at
        start or when it replaces one that died (the server then stops: its log says why)."""
        self.on_failure = on_failure
        for worker in self.workers:
            threading.Thread(target=self._start, args=(worker,), daemon=True).start()

    def _start(self, worker: Worker) -> None:
        try:
            worker.start()
        except Exception as exc:  # WorkerError, or the OS refusing a process, a socket, a write
            worker.kill()
            if not self.stopped.is_set():
                self.on_failure(str(exc) if isinstance(exc, WorkerError) else f"worker {worker.index}: {exc!r}")
            return
        if self.stopped.is_set():
            worker.kill()
            return
        worker.ready = True
        self.idle.put((worker, worker.generation))
        log.info("worker %d ready (pid %d)", worker.index, worker.process.pid)

    def predict(self, headers: dict[str, str], body: bytes, content_type: str) -> Reply:
        """The answer of the next idle worker; WorkerError when none answered."""
        worker, generation = self._take()
        try:
            reply = worker.predict(headers, body, content_type)
        except WorkerError as exc:
            if self.stopped.is_set():
                raise WorkerError("the server is stopping", 503) from None
            self._replace(worker, generation, str(exc))
            raise
        except BaseException:  # never lose a worker: it may be mid-answer
            self._replace(worker, generation, "a request was interrupted")
            raise
        self.idle.put((worker, generation))
        return reply

    def _take(self) -> tuple[Worker, int]:
        """An idle worker that is still running: one that died while idle is replaced, not used."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0 and not self.stopped.is_set():
            try:
                worker, generation = self.idle.get(timeout=left)
            except queue.Empty:
                break
            if generation != worker.generation or not worker.ready:
                continue  # its replacement puts itself in the queue
            if worker.alive():
                return worker, generation
            self._replace(worker, generation, "its process ended")
        raise WorkerError("the server is busy; try again", 503)

    def _replace(self, worker: Worker, generation: int, reason: str) -> None:
        with worker.lock:
            if generation != worker.generation or not worker.ready or self.stopped.is_set():
                return  # replaced already, or the server is stopping
            worker.ready = False
        worker.kill()
        log.warning("worker %d stopped (%s): starting a new one", worker.index, reason)
        threading.Thread(target=self._restart, args=(worker,), daemon=True).start()

    def _restart(self, worker: Worker) -> None:
        worker.process.wait()
        worker.clean_up()
        time.sleep(RESTART_PAUSE)
        if not self.stopped.is_set():
            self._start(worker)

    def healthy(self) -> bool:
        """Every worker loaded and running; a worker found dead is replaced."""
        for worker in self.workers:
            generation = worker.generation
            if worker.ready and not worker.alive():
                self._replace(worker, generation, "its process ended")
        return all(worker.ready for worker in self.workers)

    def signal(self, signum: int) -> None:
        """Stop (SIGTERM) or kill every worker; ``wait`` returns. Requests in flight are
        answered 500, and no new one is taken."""
        self.stopped.set()
        for worker in self.workers:
            worker.ready = False
            worker.kill(signum)

    def wait(self) -> None:
        """Until ``signal`` was called and every worker has exited."""
        self.stopped.wait()
        for worker in self.workers:
            if worker.process is not None:
                worker.process.wait()
