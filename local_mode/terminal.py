"""Terminal output for long local-mode runs: one line per phase, with progress and timings, on the
terminal; the SDK's and the containers' output, and the SDK's logging, in a log file.

    console = Console(Path("build/demo-local/containers.log"), phases=4)
    with console:  # from here sys.stdout, sys.stderr and the logging handlers write to the log
        with console.phase(1, "training", total=12, unit="epoch") as phase:
            ...
            phase.update(3)  # a progress bar on a terminal, a line per quarter otherwise
            phase.result = "best val accuracy 92%"  # shown after "done in 63 s"
        console.print("on the terminal")

SDK v2's local mode writes the training container's output with ``sys.stdout.write``, the local
endpoint's (MMS's access and worker lines) the same way from a thread, and logs through the
``sagemaker`` loggers: replacing ``sys.stdout`` and ``sys.stderr``, and pointing the logging
handlers that wrote to them at the log, catches all of it, from every thread.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BAR_WIDTH = 20
TICK_S = 0.5  # a terminal's phase line redraws its elapsed time this often
TAIL_LINES = 20
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s - %(message)s"
CLEAR_LINE = "\r\x1b[K"
# docker compose colours each container's prefix; the toolkit ends its lines with \r\n
TERMINAL_ONLY = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r(?=\n)")


class LogStream(io.TextIOBase):
    """A text stream into the log file, safe to share between threads; passes each complete line on."""

    encoding = "utf-8"

    def __init__(self, file, lock: threading.Lock, on_line: Callable[[str], None]):
        self._file, self._lock, self._on_line = file, lock, on_line
        self._partial = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # a subprocess handed sys.stdout writes into the log too
        return self._file.fileno()

    @property
    def mid_line(self) -> bool:
        return bool(self._partial)

    def write(self, text: str) -> int:
        written = len(text)
        with self._lock:
            if self._file.closed:  # a straggling thread after the run: nowhere to go
                return written
            text = TERMINAL_ONLY.sub("", text)
            self._file.write(text)
            self._file.flush()
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._on_line(line)
        return written

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()


class Phase:
    """One step of the run: ``[2/4] title``, its progress (``update``) and what it found (``result``)."""

    def __init__(self, console: Console, number: int, title: str, total: int | None, unit: str):
        self.console, self.number, self.title, self.total, self.unit = console, number, title, total, unit
        self.done = 0
        self.result = ""
        self.started = time.monotonic()
        self._quarter = 0  # off a terminal: the last quarter of the work reported

    @property
    def label(self) -> str:
        return f"[{self.number}/{self.console.phases}] {self.title}"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, done: int) -> None:
        """``done`` of ``total`` units are finished."""
        self.done = min(done, self.total) if self.total else done
        self.console._progress(self)

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def counter(self) -> str:
        count = f"{self.done}/{self.total}"
        return f"{self.unit} {count}" if self.unit else count

    def bar(self) -> str:
        filled = BAR_WIDTH * self.done // self.total if self.total else 0
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.counter()}"


class Console:
    """Phase lines on the terminal (``out``, by default ``sys.stdout`` when created); inside
    ``with console:`` everything else goes to ``log_path``, which each run starts afresh."""

    def __init__(self, log_path: Path, phases: int, out=None, tty: bool | None = None):
        self.log_path = Path(log_path)
        self.phases = phases
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.failure_tail: list[str] = []  # the log's last lines when the block raised
        self._term_lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._watchers: list[Callable[[str], None]] = []
        self._current: Phase | None = None
        self._drawn = ""  # a terminal's phase line as last drawn
        self._file = None

    # -- the log -----------------------------------------------------------------------------

    def __enter__(self) -> Console:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.log_path, "w", encoding="utf-8", errors="replace")
        self.failure_tail = []
        self.stdout = LogStream(self._file, self._file_lock, self._line)
        self.stderr = LogStream(self._file, self._file_lock, self._line)
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.stdout, self.stderr
        self._swapped = self._swap_handlers()
        self._handler = logging.StreamHandler(self.stderr)
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.root.addHandler(self._handler)
        sdk = logging.getLogger("sagemaker")
        self._sdk_level = sdk.level
        if sdk.level == logging.NOTSET:  # its INFO lines (compose file, docker command) belong in the log
            sdk.setLevel(logging.INFO)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.failure_tail = self.failure_tail or self.tail()
            self.stderr.write("".join(traceback.format_exception(exc_type, exc, tb)))
        logging.getLogger("sagemaker").setLevel(self._sdk_level)
        logging.root.removeHandler(self._handler)
        sys.stdout, sys.stderr = self._saved
        for handler, stream in self._swapped:
            handler.setStream(stream)
        # Handlers created inside the block (a module imported there) write to the log streams: not for long.
        for handler in _stream_handlers((self.stdout, self.stderr)):
            handler.setStream(sys.__stdout__ if handler.stream is self.stdout else sys.__stderr__)
        with self._file_lock:
            self._file.close()

    def _swap_handlers(self) -> list[tuple[logging.StreamHandler, object]]:
        """Point the logging handlers that write to the terminal at the log; returns what to undo."""
        out, err = self._saved
        swapped = []
        for handler in _stream_handlers((out, err, sys.__stdout__, sys.__stderr__)):
            swapped.append((handler, handler.stream))
            is_out = handler.stream is out or handler.stream is sys.__stdout__
            handler.setStream(self.stdout if is_out else self.stderr)
        return swapped

    def log(self, line: str) -> None:
        """A line of our own in the log, e.g. where a phase begins."""
        if self._file is not None and not self._file.closed:
            self.stdout.write(("\n" if self.stdout.mid_line else "") + f"{line}\n")  # after the SDK's "!"

    def tail(self, count: int = TAIL_LINES) -> list[str]:
        """The log's last lines."""
        self.stdout.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return [line.rstrip("\n") for line in deque(file, count)]

    @contextmanager
    def watch(self, on_line: Callable[[str], None]) -> Iterator[None]:
        """Call ``on_line`` with each line written to the log (from any thread) inside the block."""
        self._watchers.append(on_line)
        try:
            yield
        finally:
            self._watchers.remove(on_line)

    def _line(self, line: str) -> None:
        for watcher in list(self._watchers):
            watcher(line)

    # -- the terminal ------------------------------------------------------------------------

    def print(self, *values, sep: str = " ") -> None:
        """A line on the terminal, inside the block or not (above a phase's progress bar)."""
        with self._term_lock:
            current = self._current if self.tty else None
            self._write((CLEAR_LINE if current else "") + sep.join(map(str, values)) + "\n")
            if current:
                self._write(self._progress_line(current))

    @contextmanager
    def phase(self, number: int, title: str, total: int | None = None, unit: str = "", verb: str = "done"):
        """``[number/phases] title ...``, then ``... done in 12 s (result)`` or ``... failed after 3 s``."""
        phase = Phase(self, number, title, total, unit)
        self.log(f"===== {phase.label} =====")
        with self._term_lock:
            self._current = phase
            self._write(self._progress_line(phase) if self.tty else f"{phase.label} ...\n")
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(phase, stop), daemon=True) if self.tty else None
        if ticker:
            ticker.start()
        try:
            yield phase
            outcome = f"{verb} in {phase.elapsed:.0f} s" + (f" ({phase.result})" if phase.result else "")
        except Exception:
            outcome = f"failed after {phase.elapsed:.0f} s"
            self.failure_tail = self.failure_tail or self.tail()  # before the clean-up's lines
            raise
        except BaseException:  # Ctrl-C
            outcome = f"interrupted after {phase.elapsed:.0f} s"
            raise
        finally:
            stop.set()
            if ticker:
                ticker.join()
            with self._term_lock:
                self._current = None
                self._write((CLEAR_LINE if self.tty else "") + f"{phase.label} ... {outcome}\n")
            self.log(f"===== {phase.label}: {outcome} =====")

    def _progress(self, phase: Phase) -> None:
        with self._term_lock:
            if phase is not self._current:
                return
            if self.tty:
                self._write(self._progress_line(phase))
            elif phase.total and (quarter := 4 * phase.done // phase.total) > phase._quarter and quarter < 4:
                phase._quarter = quarter
                self._write(f"{phase.label}: {phase.counter()} ({phase.elapsed:.0f} s)\n")

    def _progress_line(self, phase: Phase) -> str:
        """The in-place line on a terminal: ``[1/4] training [#####...] epoch 3/12  18 s``."""
        shown = f"{phase.bar()}  " if phase.total else "... "
        return f"{CLEAR_LINE}{phase.label} {shown}{phase.elapsed:.0f} s"

    def _tick(self, phase: Phase, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self._term_lock:
                if phase is self._current:
                    self._write(self._progress_line(phase))

    def _write(self, text: str) -> None:
        if text.startswith(CLEAR_LINE) and "\n" not in text:  # a phase line: redraw it only when it changed
            if text == self._drawn:
                return
            self._drawn = text
        else:
            self._drawn = ""
        self.out.write(text)
        self.out.flush()


def _stream_handlers(streams) -> list[logging.StreamHandler]:
    """Every logger's stream handlers (files excluded) that write to one of ``streams``."""
    loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and any(handler.stream is stream for stream in streams)
    ]
