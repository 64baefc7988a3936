"""The GPU serving path on a GPU machine: batch 1 against batching, img/s and GPU utilisation.

Prepared for the device machine (PyTorch and torchvision installed, no network):

    make gpu-serving-deps        # here: build/gpu-deps (uvicorn, h11, click, psutil, MMS's workers)
    # then, with the device tool: carry ["build/gpu-deps"], timeout 420 s
    python bench/gpu_serving.py

Part 1, the ceiling: resnet18 (224 px, 257 classes) forward passes on synthetic float batches
of 1 and 32 (fp32, eval, inference mode). Part 2, the real server: ``serve`` (this checkout's
serve/ on ``PYTHONPATH`` with build/gpu-deps) on GPU 0 with a seeded artifact, 64 keep-alive
clients sending a 500x375 JPEG each, with ``SERVE_BATCH_SIZE=1`` and then the GPU default
(32, 5 ms), each with 1 and 4 workers on the GPU. Prints img/s and the GPU's mean utilisation
(``nvidia-smi`` sampled every 200 ms) for each; never asserts.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPS = REPO / "build" / "gpu-deps"
sys.path[:0] = [str(REPO), str(DEPS)]


class Utilisation:
    """The GPU's utilisation, sampled by nvidia-smi while the block runs (NaN without nvidia-smi)."""

    def __enter__(self) -> Utilisation:
        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:  # a machine without a GPU (bench/gpu_input.py's CPU smoke test)
            self.process = None
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            self.mean = float("nan")
            return
        self.process.terminate()
        out = self.process.communicate()[0]
        samples = [int(line.split(",")[0]) for line in out.split() if line.strip().isdigit()]
        self.mean = sum(samples) / len(samples) if samples else float("nan")


def ceiling() -> None:
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=257).cuda().eval()
    for batch in (1, 32):
        inputs = torch.randn(batch, 3, 224, 224, device="cuda")
        with torch.inference_mode():
            for _ in range(10):
                model(inputs)
            torch.cuda.synchronize()
            steps, started = 0, time.perf_counter()
            with Utilisation() as gpu:
                while time.perf_counter() - started < 5:
                    model(inputs)
                    steps += 1
                torch.cuda.synchronize()
        rate = steps * batch / (time.perf_counter() - started)
        print(f"ceiling, forward only, batch {batch:2d}: {rate:8.0f} img/s, GPU {gpu.mean:.0f}%")


def artifact(folder: Path) -> Path:
    import torch

    import model_artifact
    from train.artifact import save

    torch.manual_seed(0)
    net = model_artifact.build_model("resnet18", 257)
    meta = model_artifact.Metadata("resnet18", [f"c{i}" for i in range(257)],
                                   model_artifact.Preprocessing.for_image_size(224))  # fmt: skip
    return save(folder / "model", net.state_dict(), meta, onnx=False)


def drive(port: int, body: bytes, clients: int = 64, seconds: float = 20) -> float:
    """Images/s of ``clients`` keep-alive clients posting ``body`` for ``seconds``."""
    done, stop = [0] * clients, time.monotonic() + seconds

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            connection.request("POST", "/invocations", body, {"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            done[i] += response.status == 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def serve_once(base: Path, body: bytes, port: int, env: dict[str, str]) -> None:
    environment = os.environ | env | {"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
                                      "PYTHONPATH": f"{REPO}:{DEPS}", "SERVE_RUNTIME": "torch"}  # fmt: skip
    with open(base / f"serve-{port}.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "serve.server"], env=environment, stdout=log, stderr=log)
        try:
            measure(server, port, body, env)
        finally:
            server.terminate()
            server.wait(60)


def measure(server: subprocess.Popen, port: int, body: bytes, env: dict[str, str]) -> None:
    """Once ``server`` answers /ping: img/s under 64 clients and the GPU's utilisation meanwhile."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    drive(port, body, seconds=3)  # warm
    with Utilisation() as gpu:
        rate = drive(port, body)
    print(f"serve, {env}: {rate:7.0f} img/s, GPU {gpu.mean:.0f}%")


def main() -> None:
    import torch

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    ceiling()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        artifact(base)
        from bench.serve_runtimes import photo

        body = photo()
        for port, (batch, workers) in enumerate([("1", "1"), ("32", "1"), ("1", "4"), ("32", "4")], 18080):
            serve_once(base, body, port, {"SERVE_BATCH_SIZE": batch, "SAGEMAKER_MODEL_SERVER_WORKERS": workers})


if __name__ == "__main__":
    main()
