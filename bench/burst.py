"""A burst of keep-alive clients against a serving endpoint: every request must be answered.

Each client opens its own connection (all at once), then sends its requests one after the
other on it, reading each answer. Counted: answers per status, 503s without ``Retry-After``,
and requests that got no answer (the connection was reset or closed first). Loopback or a
container's own address only.

    .venv/bin/python bench/burst.py --image byoc-classifier-serving-cpu:latest --model build/demo/model \\
        --clients 512 --requests 4

``run_burst`` is what ``tests/test_burst.py`` calls with a smaller burst.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_runtimes import photo


@dataclass
class BurstResult:
    """What a burst got back."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    unanswered: int = 0  # requests whose connection ended before their answer
    not_sent: int = 0  # requests a client did not send: the server closed after answering (a 503)
    no_retry_after: int = 0  # 503s without Retry-After
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    seconds: float = 0.0

    def line(self) -> str:
        counts = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        p50 = statistics.median(self.latencies) * 1000 if self.latencies else 0
        p99 = sorted(self.latencies)[int(len(self.latencies) * 0.99) - 1] * 1000 if self.latencies else 0
        return (f"answers {counts or 'none'}; unanswered (reset or closed): {self.unanswered}; "
                f"not sent after a closing answer: {self.not_sent}; "
                f"503 without Retry-After: {self.no_retry_after}; p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
                f"{sum(self.statuses.values()) / self.seconds:.1f} answers/s over {self.seconds:.1f} s")  # fmt: skip


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


async def _client(host: str, port: int, requests: int, request: bytes, start: asyncio.Event, result: BurstResult):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        result.unanswered += requests
        return
    await start.wait()
    answered = 0
    try:
        for _ in range(requests):
            sent = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, headers = await _read_answer(reader)
            answered += 1
            result.statuses[status] += 1
            result.latencies.append(time.perf_counter() - sent)
            if status == 503 and "retry-after" not in headers:
                result.no_retry_after += 1
            if headers.get("connection", "").lower() == "close":
                result.not_sent += requests - answered
                break
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        result.unanswered += requests - answered
    finally:
        writer.close()


async def _burst(host: str, port: int, clients: int, requests: int, body: bytes, timeout: float) -> BurstResult:
    head = f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    request, result, start = head.encode() + body, BurstResult(), asyncio.Event()
    tasks = [asyncio.create_task(_client(host, port, requests, request, start, result)) for _ in range(clients)]
    await asyncio.sleep(0.5)  # every connection open, then every client sends at once
    started = time.perf_counter()
    start.set()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    result.seconds = time.perf_counter() - started
    result.unanswered += sum(requests for _ in pending)
    return result


def run_burst(host: str, port: int, clients: int, requests: int, body: bytes | None = None,
              timeout: float = 600) -> BurstResult:  # fmt: skip
    """``clients`` keep-alive connections opened at once, each sending ``requests`` JPEGs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, clients + 256)), hard))
    return asyncio.run(_burst(host, port, clients, requests, body or photo(), timeout))


def main() -> None:
    from bench.fuzz import Container

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="byoc-classifier-serving-cpu:latest")
    parser.add_argument("--model", type=Path, default=Path("build/demo/model"))
    parser.add_argument("--clients", type=int, default=512)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the container")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with Container(args.image, args.model, "4g", env, network="host") as container:  # loopback only
        container.wait_ready()
        result = run_burst("127.0.0.1", container.port, args.clients, args.requests)
    print(f"{args.image}, {args.clients} clients x {args.requests} requests: {result.line()}")


if __name__ == "__main__":
    main()
