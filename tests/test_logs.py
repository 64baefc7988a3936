"""serve.logs: access lines written in batches, none lost at exit, a broken stdout harmless."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time

from serve.logs import BatchedHandler


def make_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.logs.{id(handler)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_lines_wait_for_the_batch_then_come_in_order():
    stream = io.StringIO()
    handler = BatchedHandler(stream, interval=2)
    logger = make_logger(handler)
    for i in range(5):
        logger.info("request %d", i)
    assert stream.getvalue() == ""  # not one write per line
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stream.getvalue() == "".join(f"request {i}\n" for i in range(5))
    handler.close()


def test_a_full_batch_is_written_at_once():
    stream = io.StringIO()
    handler = BatchedHandler(stream, interval=60, capacity=3)
    logger = make_logger(handler)
    logger.info("a")
    logger.info("b")
    assert stream.getvalue() == ""
    logger.info("c")
    assert stream.getvalue() == "a\nb\nc\n"
    handler.close()


def test_pending_lines_are_written_when_the_process_exits():
    code = (
        "import logging, sys\n"
        "from serve import logs\n"
        "logs.configure()\n"
        "logs.access_log.info('the last request')\n"
        "sys.exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.endswith(" [ACCESS] the last request\n"), out


def test_a_closed_stdout_loses_the_lines_not_the_request():
    stream = io.StringIO()
    handler = BatchedHandler(stream, interval=60, capacity=1)
    logger = make_logger(handler)
    stream.close()
    logger.info("nobody reads this")  # the capacity flush writes to a closed stream: no exception
    handler.closed.set()
