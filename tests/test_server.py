"""The real server over HTTP: content types, batches, top-k, parity with training, errors; on
both runtimes (``SERVE_RUNTIME`` onnx and torch)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
import struct
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

import model_artifact
from tests.serving import RUNTIMES, Server, predict, request
from train import crops, data

pytestmark = pytest.mark.slow


TOLERANCE = {"torch": 1e-5, "onnx": model_artifact.ONNX_TOLERANCE}  # of a probability, against eager PyTorch


@pytest.fixture(scope="module", params=RUNTIMES)
def served(trained_job, tmp_path_factory, request):
    base = tmp_path_factory.mktemp("serve")
    shutil.copytree(trained_job[0] / "model", base / "model")
    (base / "model" / "model.tar.gz").write_bytes(b"SDK v2 local mode leaves the tarball here")
    server = Server(
        base, SAGEMAKER_MAX_PAYLOAD_IN_MB="1", SERVE_MAX_IMAGES="4", SERVE_MAX_PIXELS="1000000", SERVE_TOP_K="3",
        SERVE_RUNTIME=request.param, SERVE_PRECISION="fp32",  # eager PyTorch's answers (int8: test_quantize.py)
    )  # fmt: skip
    server.runtime = request.param
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill_leftovers()


def sample_bytes(sample_data, name="test/ball/ball_000.jpg", fmt=None) -> bytes:
    path = sample_data / name
    if fmt is None:
        return path.read_bytes()
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    "content_type,fmt",
    [("image/jpeg", None), ("image/png", "PNG"), ("image/webp", "WEBP"), ("application/x-image", None)],
)
def test_each_image_content_type(served, sample_data, content_type, fmt):
    status, body = predict(served.port, sample_bytes(sample_data, fmt=fmt), content_type)
    assert status == 200, body
    (prediction,) = body["predictions"]
    assert prediction["label"] in {"ball", "box", "cone", "ring"} and len(prediction["top_k"]) == 3
    assert 0 < prediction["probability"] <= 1


def test_json_batch_and_top_k(served, sample_data):
    names = ["test/ball/ball_001.jpg", "test/box/box_001.jpg", "test/ring/ring_003.png"]
    instances = [{"b64": base64.b64encode(sample_bytes(sample_data, n)).decode()} for n in names]
    status, body = predict(served.port, json.dumps({"instances": instances, "top_k": 2}).encode(), "application/json")
    assert status == 200, body
    assert len(body["predictions"]) == 3 and all(len(p["top_k"]) == 2 for p in body["predictions"])
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "top_k=1", "Accept": "*/*"}
    status, body = predict(served.port, sample_bytes(sample_data), **headers)
    assert status == 200 and len(body["predictions"][0]["top_k"]) == 1


def test_http_gives_the_probabilities_of_training_evaluation(served, sample_data):
    model, meta = model_artifact.load(served.base / "model")
    prep = meta.preprocessing
    for name in ("test/cone/cone_002.jpg", "test/ring/ring_003.png"):
        dataset = data.ImageDataset([(sample_data / name, 0)], crops.EvalCrop(prep))
        with torch.no_grad():
            expected = model(model_artifact.normalize(dataset[0][0], prep).unsqueeze(0)).softmax(1)[0]
        status, body = predict(served.port, (sample_data / name).read_bytes(), "image/jpeg", Accept="application/json")
        assert status == 200
        got = {p["label"]: p["probability"] for p in body["predictions"][0]["top_k"]}
        for label, probability in got.items():
            expected_probability = expected[meta.class_names.index(label)].item()
            assert probability == pytest.approx(expected_probability, abs=TOLERANCE[served.runtime])


def test_the_log_names_the_runtime_each_worker_runs(served):
    name = {"onnx": "onnxruntime", "torch": "torch"}[served.runtime]
    served_file = {"onnx": r", model\.onnx \(fp32: SERVE_PRECISION=fp32; .*\)", "torch": " on cpu"}[served.runtime]
    assert re.search(rf"pre-flight: resnet18 with 4 classes on {name} \S+{served_file} loads and predicts", served.log)
    assert re.search(rf"model resnet18 \(4 classes\) ready on {name} \S+{served_file} in ", served.log)


def _big_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (2000, 1000)).save(out, "PNG")  # 2 Mpx in a few kB: a small decompression bomb
    return out.getvalue()


ERRORS = [
    ("malformed image", b"\x89PNG garbage", "image/png", {}, 400),
    ("empty body", b"", "image/jpeg", {}, 400),
    ("wrong content type", b"a,b\n1,2", "text/csv", {}, 415),
    ("bad JSON", b'{"instances": [', "application/json", {}, 400),
    ("too many images", json.dumps({"instances": [{"b64": "QQ=="}] * 5}).encode(), "application/json", {}, 400),
    ("pixel limit", _big_png(), "image/png", {}, 413),
    ("unanswerable Accept", b"x", "image/png", {"Accept": "text/csv"}, 406),
    ("deep JSON nesting", b"[" * 100_000, "application/json", {}, 400),
    ("top_k out of range", b'{"instances": [{"b64": "QQ=="}], "top_k": 1e999}', "application/json", {}, 400),
    ("unidentifiable image", b"\x00" * 100, "image/png", {}, 400),
]


@pytest.mark.parametrize("case,body,content_type,headers,status", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_4xx_and_the_worker_keeps_serving(
    served, sample_data, case, body, content_type, headers, status
):
    got, answer = predict(served.port, body, content_type, **headers)
    assert got == status, answer
    assert isinstance(answer, dict) and answer["status"] == status and "\n" not in answer["error"]
    assert "Traceback" not in json.dumps(answer) and " at 0x" not in answer["error"]
    assert request(served.port, "/ping", method="GET")[0] == 200
    assert predict(served.port, sample_bytes(sample_data))[0] == 200


def test_truncated_image_is_a_400(served, sample_data):
    whole = sample_bytes(sample_data)
    status, answer = predict(served.port, whole[: len(whole) // 2])
    assert status == 400 and "not a readable image" in answer["error"]


def test_payload_above_the_limit_is_413(served, sample_data):
    status, answer = predict(served.port, b"\xff" * (1024 * 1024 + 10), "image/jpeg")
    assert status == 413, answer
    assert "Traceback" not in str(answer)
    assert predict(served.port, sample_bytes(sample_data))[0] == 200


def test_a_client_that_leaves_before_its_answer_gets_one_access_line_and_no_error(served, sample_data):
    body = sample_bytes(sample_data)
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        head = b"POST /invocations?left HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
        sock.sendall(head % len(body) + body)
    deadline = time.monotonic() + 10
    while "?left" not in served.log and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # a second line, if any, would be in the same batch or the next
    assert served.log.count('"POST /invocations?left HTTP/1.1"') == 1
    assert "gateway error" not in served.log and "Traceback" not in served.log
    assert predict(served.port, body)[0] == 200


def test_the_workers_listen_on_private_sockets_and_no_java_frontend_runs(served):
    processes = psutil.Process(served.process.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in processes]
    assert not [c for c in commands if "com.amazonaws.ml.mms" in c]  # no Java frontend
    workers = [c for c in commands if "mms.model_service_worker" in c]
    assert workers, commands
    folder = Path(re.search(r"--sock-name (\S+)", workers[0]).group(1)).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    listening = {c.laddr.port for p in [psutil.Process(served.process.pid), *processes]
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}  # fmt: skip
    assert listening == {served.port}


def test_the_gateway_writes_one_access_line_per_request_but_ping(served, sample_data):
    for _ in range(3):
        request(served.port, "/ping", method="GET")
    predict(served.port, sample_bytes(sample_data))
    with socket.create_connection(("127.0.0.1", served.port)) as sock:  # a terminal escape in the path
        sock.sendall(b"GET /x\x1b[2J HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.makefile("rb").read().startswith(b"HTTP/1.1 400")  # not a valid request target
    with socket.create_connection(("127.0.0.1", served.port)) as sock:  # a ping, then garbage, kept alive
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET http://[/ HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n")
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", sock.makefile("rb").read()) == [b"200", b"400", b"400"]
    deadline = time.monotonic() + 10  # written after the answer: it may trail the response a little
    while '"BAD"' not in served.log and time.monotonic() < deadline:
        time.sleep(0.1)
    log = served.log
    assert re.search(r'\[ACCESS\] 127\.0\.0\.1 "POST /invocations HTTP/1\.1" 200 \d+\n', log), log[-2000:]
    assert '[ACCESS] 127.0.0.1 "GET /x\\\\x1b[2J HTTP/1.1" 400 ' in log and "\x1b" not in log
    assert '[ACCESS] 127.0.0.1 "GET http://[/ HTTP/1.1" 400 ' in log and '[ACCESS] 127.0.0.1 "BAD" 400 ' in log
    assert "GET /ping" not in log and "Traceback" not in log
