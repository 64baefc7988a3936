"""The failure file: SageMaker shows its first 1024 characters as the job's FailureReason."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
FAILURE_FILE = "failure"
MAX_REASON = 1024
LOADER_WORKER_ERROR = re.compile(r"Caught (\w+) (in DataLoader worker process \d+)\.$")  # torch's ExceptionWrapper


class TrainingError(Exception):
    """A failure the user can fix; its message is the whole failure reason."""


class Stopped(Exception):
    """The job was asked to stop (SIGTERM) and saved its checkpoint."""


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and runs of white space become single spaces."""
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The first non-blank line of ``text`` (an exception message can run to many lines)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def internal_reason(exc: BaseException) -> str:
    """The one-line reason for a bug or an environment problem: type and first line of the message
    (for an error raised in a loader worker, the worker's own error, not PyTorch's wrapper)."""
    message = first_line(str(exc))
    worker = LOADER_WORKER_ERROR.match(message)
    if worker:  # "Caught X in DataLoader worker process 0." then the worker's traceback, its error last
        kind, where = worker.groups()
        original = str(exc).strip().splitlines()[-1].strip().removeprefix(f"{kind}: ")
        return f"internal error: {kind} {where}: {original} (see the log)"
    return f"internal error: {type(exc).__name__}{': ' + message if message else ''} (see the log)"


def write_failure(output_dir: Path, reason: str) -> None:
    """Write ``reason`` as the job's one-line failure file, unless another process already did."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FAILURE_FILE
    if not path.exists():
        path.write_text(one_line(reason)[:MAX_REASON] + "\n")


@contextlib.contextmanager
def reported(output_dir: Path, exit_code_on_stop: int = 143) -> Iterator[None]:
    """Turn any exception into a short failure file, a full log traceback and an exit."""
    try:
        yield
    except Stopped as exc:
        log.warning("%s", exc)
        write_failure(output_dir, str(exc))
        sys.exit(exit_code_on_stop)
    except TrainingError as exc:
        log.error("training failed: %s", exc)
        write_failure(output_dir, str(exc))
        sys.exit(1)
    except Exception as exc:  # everything else: a bug or an environment problem
        log.error("training crashed:\n%s", traceback.format_exc())
        write_failure(output_dir, internal_reason(exc))
        sys.exit(1)
