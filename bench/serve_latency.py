"""Latency and throughput of both serving images, with and without batching across requests.

    python bench/serve_latency.py [--requests 120] [--rounds 2] [--images CPU_IMAGE GPU_IMAGE]
                                  [--baseline IMAGE]

Serves a seeded resnet18 (224 px, 257 classes; ``serve_runtimes.make_artifact``) from each
image twice, with ``SERVE_BATCH_SIZE=1`` (no batching) and with the image's defaults, every
container under ``--cpus 2`` on the host network (loopback only). Then, in rounds whose order
is shuffled: p50/p99 of one 500x375 JPEG at a time (1 client, keep-alive), and images/s with
1, 8 and 32 concurrent clients. ``--baseline IMAGE`` adds another image's row (e.g. the
previous release, for the "1-client p50 no more than 1 ms worse" check). Prints a table and
the ratios of batching on against off from this same run; never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fuzz import Container
from bench.serve_runtimes import cpu_model, invoke, make_artifact, photo

IMAGES = ("byoc-classifier-serving-cpu:latest", "byoc-classifier-serving-gpu:latest")
CLIENTS = (1, 8, 32)


def post(connection: http.client.HTTPConnection, body: bytes) -> float:
    """Seconds for one answered request."""
    started = time.perf_counter()
    invoke(connection, body)
    return time.perf_counter() - started


def sequential(port: int, body: bytes, requests: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        return [post(connection, body) for _ in range(requests)]
    finally:
        connection.close()


def throughput(port: int, body: bytes, clients: int, each: int) -> float:
    """Images/s of ``clients`` keep-alive clients sending ``each`` requests at once."""
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        post(connection, body)  # connected and warm
        barrier.wait()
        for _ in range(each):
            post(connection, body)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return clients * each / (time.perf_counter() - started)


def servers(args, model: Path) -> list[tuple[str, str, dict]]:
    """(label, image, environment) of each server to measure."""
    rows = []
    for image in args.images:
        rows.append((f"{image.split(':')[0].rsplit('-', 1)[-1]}, no batching", image, {"SERVE_BATCH_SIZE": "1"}))
        rows.append((f"{image.split(':')[0].rsplit('-', 1)[-1]}, batching", image, {}))
    if args.baseline:
        rows.append((f"baseline {args.baseline}", args.baseline, {}))
    return rows


def measure(args, body: bytes, started: dict[str, Container]) -> dict[str, dict]:
    """Every figure of every server, in rounds of shuffled order."""
    results = {label: {"latency": [], **{c: [] for c in CLIENTS}} for label in started}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for label in rng.sample(list(started), len(started)):
            port = started[label].port
            sequential(port, body, 3)  # warm
            results[label]["latency"] += sequential(port, body, args.requests // args.rounds)
        for clients in CLIENTS:
            for label in rng.sample(list(started), len(started)):
                each = max(4, args.requests // (4 * clients))
                results[label][clients].append(throughput(started[label].port, body, clients, each))
    return results


def report(results: dict[str, dict]) -> None:
    print(f"\n{'server':32} {'p50 ms':>8} {'p99 ms':>8} " + " ".join(f"{f'img/s @{c}':>10}" for c in CLIENTS))
    for label, figures in results.items():
        latencies = sorted(figures["latency"])
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        rates = " ".join(f"{statistics.median(figures[c]):>10.1f}" for c in CLIENTS)
        print(f"{label:32} {statistics.median(latencies) * 1000:>8.1f} {p99 * 1000:>8.1f} {rates}")
    print("\nbatching against no batching (same image, same run):")
    for label in [name for name in results if name.endswith(", batching")]:
        off, on = results[label.replace(", batching", ", no batching")], results[label]
        p50 = (statistics.median(on["latency"]) - statistics.median(off["latency"])) * 1000
        rates = ", ".join(f"@{c} {statistics.median(on[c]) / statistics.median(off[c]):.2f}x" for c in CLIENTS)
        print(f"  {label.split(',')[0]}: 1-client p50 {p50:+.1f} ms; img/s {rates}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="1-client requests per server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", nargs="+", default=list(IMAGES))
    parser.add_argument("--baseline", default="", help="another serving image to measure beside them")
    args = parser.parse_args()
    print(cpu_model())
    body = photo()
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        model = make_artifact(Path(folder))
        started: dict[str, Container] = {}
        for label, image, env in servers(args, model):
            container = Container(image, model, "4g", env | {"SERVE_THREADS": "2"}, network="host")
            started[label] = stack.enter_context(container)
            subprocess.run(["docker", "update", "--cpus", "2", container.cid], capture_output=True, check=True)
        for container in started.values():
            container.wait_predicting()
        results = measure(args, body, started)
    report(results)


if __name__ == "__main__":
    main()
