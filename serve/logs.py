"""The server's logging: lines to stdout, and the access lines in batches.

Every line a container writes wakes its log pipeline (Docker's shim and daemon locally, the
log driver on SageMaker), on the same CPUs that answer requests. An access line per request,
written at once, puts that work right beside the next answer; written in batches, at most
``ACCESS_LOG_INTERVAL`` seconds late, it costs one wake-up per batch. Each
line keeps the time of its request; the batch still pending is written when the server exits
(a SIGKILL loses it: at most a second of access lines).
"""

from __future__ import annotations

import logging
import sys
import threading

ACCESS_LOG_INTERVAL = 1.0  # seconds an access line may wait to be written
ACCESS_LOG_CAPACITY = 1000  # lines that are written at once however recent
access_log = logging.getLogger("serve.access")


class BatchedHandler(logging.StreamHandler):
    """A stream handler that writes its lines together, every ``interval`` seconds (or when
    ``capacity`` lines wait), from a thread of its own."""

    def __init__(self, stream, interval: float = ACCESS_LOG_INTERVAL, capacity: int = ACCESS_LOG_CAPACITY):
        super().__init__(stream)
        self.pending: list[str] = []
        self.interval, self.capacity = interval, capacity
        self.closed = threading.Event()
        threading.Thread(target=self._write_every_interval, name="access-log", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            self.pending.append(line)
            full = len(self.pending) >= self.capacity
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self.pending = self.pending, []
            try:
                if lines:
                    self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stdout is gone: nobody is reading the lines
                pass

    def close(self) -> None:
        self.closed.set()
        self.flush()
        super().close()

    def _write_every_interval(self) -> None:
        while not self.closed.wait(self.interval):
            self.flush()


def configure() -> None:
    """Log lines to stdout, at INFO until the settings name a level; access lines at every
    level, marked ``[ACCESS]`` (as MMS marked its own), in batches."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s"
    )
    handler = BatchedHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s [ACCESS] %(message)s"))
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
