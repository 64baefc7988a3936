"""Eager PyTorch against ONNX Runtime through the real server: issue 11's speed criteria.

    python bench/serve_runtimes.py [--requests 120] [--clients 8] [--starts 3] [--host]
                                   [--images GPU_IMAGE CPU_IMAGE]

Builds a seeded resnet18 (224 px, 257 classes) with ``train.artifact.save`` (model.pt and
model.onnx) and serves it with each runtime: the GPU serving image (eager PyTorch on a host
without a GPU) and the CPU serving image (ONNX Runtime), under ``--cpus 2``; with ``--host``,
this venv's ``serve`` with SERVE_RUNTIME=torch and onnx. Times start to the first 200 of
/invocations through the published port (median of ``--starts``, one server at a time), then
with both servers up, one 500x375 JPEG at a time over HTTP, in blocks of consecutive
requests that take turns between the servers (``in_blocks``), to each container's own
address, as SageMaker's traffic reaches a container (the published 127.0.0.1 port adds
Docker's userland proxy, a process of local mode only: measured too, for ONNX). Taking
turns with them, in the same rounds, the baseline of the HTTP overhead: serve.handler's
decode + preprocess + forward + encode of the same body in a process inside each container
(its CPU limit and libraries; ``--host``: in this process). Last, images/s with
``--clients`` concurrent clients, in bursts that take turns between the servers. Taking
turns spreads the load of other processes on the machine over all alike.
Prints a table and the ratios against eager PyTorch from this same run, PASS or MISS; never
asserts.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model_artifact
from train import artifact

IMAGES = ("byoc-classifier-serving-gpu:latest", "byoc-classifier-serving-cpu:latest")
RUNTIMES = ("torch", "onnx")  # what each image runs on a host without a GPU


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(text.split())
    isa = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile"))
    return f"CPU: {name}, {os.cpu_count()} logical CPUs; {isa}; load average {os.getloadavg()[0]:.2f}"


def make_artifact(base: Path) -> Path:
    import torch

    torch.manual_seed(0)
    net = model_artifact.build_model("resnet18", 257)
    meta = model_artifact.Metadata(
        "resnet18", [f"class {i}" for i in range(257)], model_artifact.Preprocessing.for_image_size(224)
    )
    model = artifact.save(base / "model", net.state_dict(), meta)
    for path in [base, model, *model.rglob("*")]:  # the container serves as an unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def photo() -> bytes:
    """A 500x375 JPEG, the typical size of a Caltech-256 photo."""
    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((500, 375), 40).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def free_port() -> int:
    """A free port below Linux's ephemeral range, so that no outgoing connection takes it meanwhile."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


def invoke(connection: http.client.HTTPConnection, body: bytes, check: bool = True) -> int:
    connection.request("POST", "/invocations", body, {"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    response.read()
    if check and response.status != 200:
        raise RuntimeError(f"/invocations answered {response.status}")
    return response.status


def container_address(cid: str, port: int) -> tuple[str, int]:
    """The container's own address on Docker's bridge when this host reaches it, else the
    published port (Docker Desktop, or another network setup)."""
    inspect = ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid]
    ip = subprocess.run(inspect, capture_output=True, text=True).stdout.strip()
    if ip:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((ip, 8080)) == 0:
                return ip, 8080
    return "127.0.0.1", port


def start_container(image: str, model: Path, port: int, args, env: dict | None = None) -> tuple:
    command = ["docker", "run", "-d", "--cpus", str(args.threads), "-p", f"127.0.0.1:{port}:8080"]
    command += ["-e", f"SERVE_THREADS={args.threads}", "-v", f"{model}:/opt/ml/model:ro"]
    command += [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
    command += ["-e", f"SAGEMAKER_MODEL_SERVER_WORKERS={args.workers}"] if args.workers else []
    command += [image, "serve"]
    cid = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    logs = lambda: subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stdout  # noqa: E731
    return lambda: subprocess.run(["docker", "rm", "-f", cid], capture_output=True), logs, cid


def start_host(runtime: str, model: Path, port: int, args, extra: dict | None = None) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "SERVE_"))}
    env |= {"SAGEMAKER_BASE_DIR": str(model.parent), "SAGEMAKER_BIND_TO_PORT": str(port)}
    env |= {"SERVE_RUNTIME": runtime, "SERVE_THREADS": str(args.threads)} | (extra or {})
    log = model.parent / f"serve-{runtime}-{'-'.join((extra or {}).values()) or 'default'}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([Path(sys.executable).parent / "serve"], env=env, cwd=model.parent,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def stop() -> None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the frontend and its workers
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    return stop, log.read_text, None


def start(target: str, model: Path, body: bytes, args, env: dict | None = None) -> tuple:
    """Start ``target`` with the extra environment ``env``; (seconds to the first 200 of
    /invocations, stop(), logs(), port, container id)."""
    port, started = free_port(), time.perf_counter()
    stop, logs, cid = (start_host if args.host else start_container)(target, model, port, args, env)
    while time.perf_counter() - started < 180:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            if invoke(connection, body, check=False) == 200:
                return time.perf_counter() - started, stop, logs, port, cid
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.02)
    print(logs()[-3000:])
    stop()
    raise SystemExit(f"{target}: no 200 from /invocations within 180 s")


def cold_starts(row: dict, model: Path, body: bytes, args) -> None:
    """Start ``row``'s server ``args.starts`` times, timed one at a time; the last one keeps running."""
    row["starts"] = []
    for i in range(args.starts):
        started = start(row["launch"], model, body, args, row.get("env"))
        seconds, row["stop"], row["logs"], row["port"], row["cid"] = started
        row["starts"].append(seconds)
        if i < args.starts - 1:
            row["stop"]()
    row["start"] = statistics.median(row["starts"])
    row["address"] = container_address(row["cid"], row["port"]) if row["cid"] else ("127.0.0.1", row["port"])
    lines = row["logs"]().splitlines()
    row["served_on"] = next((line.split("ready on ", 1)[1] for line in lines if "ready on " in line), "?")


def timed(call: Callable[[], object]) -> Callable[[], float]:
    """``call`` as a function that returns the milliseconds it took."""

    def run() -> float:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1000

    return run


def in_process(model: Path, runtime: str, body: bytes, args) -> Callable[[], float]:
    """serve.handler's decode + preprocess + forward + encode of ``body`` in this process, as a
    function that returns its milliseconds."""
    os.environ |= {"SERVE_RUNTIME": runtime, "SERVE_THREADS": str(args.threads)}
    from serve import codecs
    from serve.handler import ClassifierService
    from serve.settings import Settings

    service = ClassifierService()
    service.initialize(str(model), None, Settings.from_env())

    def once() -> None:
        request = codecs.decode(body, "image/jpeg", service.options)
        codecs.encode_response(request, service.predict(request.inputs), service.meta.class_names, 5)

    return timed(once)


INSIDE = """
import sys, time
from serve import codecs
from serve.handler import ClassifierService
from serve.settings import Settings
stdin, stdout = sys.stdin.buffer, sys.stdout
body = stdin.read(int(sys.argv[1]))
service = ClassifierService()
service.initialize("/opt/ml/model", None, Settings.from_env())
print("ready", flush=True)
while stdin.readline():
    started = time.perf_counter()
    request = codecs.decode(body, "image/jpeg", service.options)
    codecs.encode_response(request, service.predict(request.inputs), service.meta.class_names, 5)
    print((time.perf_counter() - started) * 1000, flush=True)
"""


def in_container(row: dict, body: bytes) -> Callable[[], float]:
    """The same in-process work in a process inside ``row``'s serving container (its CPU limit,
    its libraries) beside its server, as a function that returns the milliseconds the process
    measured (the pipe through ``docker exec`` is outside them)."""
    command = ["docker", "exec", "-i", row["cid"], "python", "-c", INSIDE, str(len(body))]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    row["stop"] = lambda stop=row["stop"]: (process.kill(), process.wait(), stop())
    process.stdin.write(body)
    process.stdin.flush()
    if process.stdout.readline().strip() != b"ready":
        raise SystemExit(f"{row['target']}: the in-container baseline did not start")

    def once() -> float:
        process.stdin.write(b"\n")
        process.stdin.flush()
        return float(process.stdout.readline())

    return once


def in_blocks(calls: dict, requests: int, block: int = 12, warm: int = 3) -> dict:
    """ms of ``requests`` calls of each function (each returns its ms), one client with 50 ms
    between calls: in rounds, each function takes a block of ``warm`` + ``block`` calls in turn
    and its first ``warm`` are dropped. An endpoint serves one model in a row; alternating call
    by call would measure each runtime with its weights evicted from the CPU caches by the
    other's (about 5 ms each here). The order is shuffled each round (seeded): a block runs
    slower after some others (eager PyTorch's, by up to 2 ms at p50), so no function may
    always follow the same one (an order that only turns keeps each one's predecessor)."""
    times: dict = {name: [] for name in calls}
    names, shuffle = list(calls), random.Random(0).sample
    for _ in range(-(-requests // block)):
        for name in shuffle(names, len(names)):
            call = calls[name]
            for i in range(warm + block):
                time.sleep(0.05)  # the last call's spinning threads (ORT's, OpenMP's) go back to sleep
                ms = call()
                if i >= warm:
                    times[name].append(ms)
    return times


def latency(rows: list[dict], body: bytes, args) -> None:
    """p50/p99 of 1 client over HTTP and p50 of the in-process baseline, servers in turn; the
    last server also through its published port when its own address is another."""
    connections = [http.client.HTTPConnection(*row["address"], timeout=60) for row in rows]
    calls = {(n, "http"): timed(lambda c=connection: invoke(c, body)) for n, connection in enumerate(connections)}
    calls |= {(n, "inproc"): row["once"] for n, row in enumerate(rows)}
    last, published = rows[-1], (len(rows) - 1, "published")
    if last["address"] != ("127.0.0.1", last["port"]):
        connection = http.client.HTTPConnection("127.0.0.1", last["port"], timeout=60)
        calls[published] = timed(lambda: invoke(connection, body))
    times = in_blocks(calls, args.requests)
    if published in times:
        last["p50_published"] = statistics.median(times[published])
    for n, row in enumerate(rows):
        http_ms = sorted(times[n, "http"])
        row["p50"], row["p99"] = statistics.median(http_ms), http_ms[min(len(http_ms) - 1, int(len(http_ms) * 0.99))]
        row["http_best"] = http_ms[0]
        row["inproc"], row["inproc_best"] = statistics.median(times[n, "inproc"]), min(times[n, "inproc"])


def burst(address: tuple[str, int], body: bytes, clients: int, each: int) -> tuple[int, float]:
    """(images, seconds) of ``clients`` keep-alive connections sending ``each`` requests at once."""
    ready = threading.Barrier(clients + 1)

    def client() -> None:
        connection = http.client.HTTPConnection(*address, timeout=120)
        invoke(connection, body)
        ready.wait()
        for _ in range(each):
            invoke(connection, body)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return each * clients, time.perf_counter() - started


def throughput(rows: list[dict], body: bytes, args, rounds: int = 6) -> None:
    """Images/s of ``args.clients`` clients, in bursts that take turns between the servers
    (which goes first alternates), each client sending ``requests / clients / 2`` per burst."""
    each = max(2, args.requests // args.clients // 2)
    totals = [[0, 0.0] for _ in rows]
    for turn in range(rounds):
        for row, total in list(zip(rows, totals, strict=True))[:: 1 if turn % 2 == 0 else -1]:
            images, seconds = burst(row["address"], body, args.clients, each)
            total[0], total[1] = total[0] + images, total[1] + seconds
    for row, (images, seconds) in zip(rows, totals, strict=True):
        row["ips"] = images / seconds


def image_size(image: str) -> str:
    inspect = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True)
    return f"{int(inspect.stdout) / 1e6:.0f} MB" if inspect.returncode == 0 else "absent"


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    return "PASS" if (value >= target if higher_is_better else value <= target) else "MISS"


def report(rows: list[dict], args) -> None:
    print(f"\n{'runtime':8s} {'served by':36s} {'start s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{f'img/s@{args.clients}':>9s} {'in-proc p50':>11s} {'HTTP +ms':>8s}  served on")  # fmt: skip
    for r in rows:
        print(f"{r['runtime']:8s} {r['target']:36s} {r['start']:7.2f} {r['p50']:7.1f} {r['p99']:7.1f} "
              f"{r['ips']:9.1f} {r['inproc']:11.1f} {r['p50'] - r['inproc']:+8.1f}  {r['served_on']} "
              f"(starts {', '.join(f'{s:.2f}' for s in r['starts'])} s)")  # fmt: skip
    torch, onnx = rows
    latency, speed, overhead = onnx["p50"] / torch["p50"], onnx["ips"] / torch["ips"], onnx["p50"] - onnx["inproc"]
    print(f"\np50 at 1 client, ONNX / eager: {latency:.2f}x (target <= 0.7x) {verdict(latency, 0.7)}")
    print(
        f"throughput at {args.clients} clients, ONNX / eager: {speed:.2f}x (target >= 1.4x) {verdict(speed, 1.4, True)}"
    )
    where = f"{onnx['address'][0]}:{onnx['address'][1]}"
    print(f"HTTP overhead of ONNX over its in-process p50, to {where}: {overhead:+.1f} ms (target <= 5 ms) "
          f"{verdict(overhead, 5)}; fastest HTTP minus fastest in process: "
          f"{onnx['http_best'] - onnx['inproc_best']:+.1f} ms")  # fmt: skip
    if "p50_published" in onnx:
        print(
            f"  through the published port 127.0.0.1:{onnx['port']} (Docker's userland proxy, local mode): "
            f"p50 {onnx['p50_published']:.1f} ms, {onnx['p50_published'] - onnx['inproc']:+.1f} ms over in-process"
        )
    where = " (host serve: the criterion is the container's)" if args.host else ""
    for r in rows:
        target = f"(target <= 5 s) {verdict(r['start'], 5)}" if r is onnx else "(eager reference: no target)"
        print(f"start to first 200 of /invocations, {r['target']}{where}, median of {len(r['starts'])}: "
              f"{r['start']:.2f} s {target}")  # fmt: skip
    for image in args.images:
        print(f"image size {image}: {image_size(image)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="1-client requests per server (and concurrent ones)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--starts", type=int, default=3, help="cold starts per runtime (the median is printed)")
    parser.add_argument("--threads", type=int, default=2, help="--cpus of the containers and SERVE_THREADS")
    parser.add_argument("--workers", type=int, default=0, help="SAGEMAKER_MODEL_SERVER_WORKERS (default: serve's)")
    parser.add_argument("--images", nargs=2, default=IMAGES, metavar=("EAGER_IMAGE", "ONNX_IMAGE"))
    parser.add_argument("--host", action="store_true", help="serve of this venv instead of containers")
    args = parser.parse_args()
    missing = [image for image in args.images if not args.host and image_size(image) == "absent"]
    if missing:
        raise SystemExit(f"{', '.join(missing)}: not built; run `make images`, or use --host")
    print(cpu_model())
    if os.getloadavg()[0] > 0.5:
        print("other processes are running: the figures swing with their load (the ratios, interleaved, less so)")
    body = photo()
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        model = make_artifact(Path(tmp))
        launch = RUNTIMES if args.host else args.images
        names = [f"host serve SERVE_RUNTIME={r}" for r in RUNTIMES] if args.host else args.images
        rows = [{"target": t, "launch": x, "runtime": r} for t, x, r in zip(names, launch, RUNTIMES, strict=True)]
        try:
            for row in rows:
                cold_starts(row, model, body, args)
                row["once"] = in_process(model, row["runtime"], body, args) if args.host else in_container(row, body)
            load = os.getloadavg()[0]
            latency(rows, body, args)
            throughput(rows, body, args)
            print(f"load average {load:.2f} before the measurements (theirs included), {os.getloadavg()[0]:.2f} after")
        finally:
            for row in rows:
                row.get("stop", lambda: None)()
    report(rows, args)


if __name__ == "__main__":
    main()
