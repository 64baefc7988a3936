"""Latency and throughput of the real server (``serve``: MMS + our handler) on this machine.

    python bench/serve_latency.py [--requests 120]

For the sample model's shape (resnet18, 64 px, 4 classes) and resnet18 at 224 px with 257
classes (Caltech-256), it starts ``serve``, sends a JPEG photo-sized image with 1 and with 8
concurrent clients, and prints p50/p99 latency and requests per second, then the gateway's
cost: the same request through the serving port and straight to MMS's Unix socket,
interleaved (the baseline measured in the same run). Prints, never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model_artifact
from bench.serve_process import Server, predict

MODELS = {"sample (resnet18, 64 px, 4 classes)": (64, 4), "resnet18, 224 px, 257 classes": (224, 257)}


def make_artifact(folder: Path, image_size: int, classes: int) -> None:
    torch.manual_seed(0)
    net = model_artifact.build_model("resnet18", classes)
    prep = model_artifact.Preprocessing.for_image_size(image_size)
    meta = model_artifact.Metadata("resnet18", [f"class {i}" for i in range(classes)], prep)
    model_artifact.save(folder / "model", net.state_dict(), meta)


def photo() -> bytes:
    """A 500x375 JPEG, the typical size of a Caltech-256 photo."""
    out = io.BytesIO()
    Image.effect_noise((500, 375), 40).convert("RGB").resize((500, 375)).save(out, "JPEG", quality=90)
    return out.getvalue()


def measure(port: int, body: bytes, clients: int, requests: int) -> str:
    def one(_):
        start = time.perf_counter()
        status, _ = predict(port, body)
        assert status == 200
        return time.perf_counter() - start

    for _ in range(5):  # warm up
        one(None)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return f"{clients} client(s): p50 {p50:.1f} ms, p99 {p99:.1f} ms, {requests / elapsed:.1f} req/s"


def gateway_overhead(server: Server, body: bytes, requests: int) -> str:
    """p50 of the same request through the serving port and straight to MMS's socket, interleaved."""
    from serve import mms

    socket_path = Path(re.search(r"Inference address: unix:(\S+)", server.log).group(1))
    through, direct = http.client.HTTPConnection("127.0.0.1", server.port), mms.UnixHTTPConnection(socket_path, 60)

    def once(connection) -> float:
        start = time.perf_counter()
        connection.request("POST", "/invocations", body, {"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"gateway": [], "direct": []}
    for i in range(requests + 5):
        for name, connection in (("gateway", through), ("direct", direct)):
            elapsed = once(connection)
            if i >= 5:
                times[name].append(elapsed * 1000)
    gateway, direct_p50 = statistics.median(times["gateway"]), statistics.median(times["direct"])
    return (
        f"through the gateway p50 {gateway:.1f} ms, straight to MMS p50 {direct_p50:.1f} ms: "
        f"overhead {gateway - direct_p50:+.1f} ms ({gateway / direct_p50:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--workers", default="", help="SAGEMAKER_MODEL_SERVER_WORKERS (default: serve's)")
    parser.add_argument("--threads", default="", help="SERVE_THREADS (default: serve's)")
    args = parser.parse_args()
    body = photo()
    for name, (size, classes) in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            make_artifact(Path(tmp), size, classes)
            env = {"SAGEMAKER_MODEL_SERVER_WORKERS": args.workers, "SERVE_THREADS": args.threads}
            server = Server(Path(tmp), **{k: v for k, v in env.items() if v})
            try:
                server.wait_healthy()
                predict(server.port, body)  # the worker may still be loading when /ping turns 200
                for clients in (1, 8):
                    figures = measure(server.port, body, clients, args.requests)
                    print(f"serve {name}, {args.workers or 'default'} workers: {figures}", flush=True)
                print(f"serve {name}: {gateway_overhead(server, body, args.requests // 2)}", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
