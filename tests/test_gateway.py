"""The serving port against an attacker: no management door, no download, bounded requests."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import time

import psutil
import pytest

from serve import gateway
from tests.serving import Recorder, Server, png_bytes, predict, request

pytestmark = pytest.mark.slow
PNG = "image/png"


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def single(small_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("gateway")
    shutil.copytree(small_model, base / "model")
    server = Server(base, SAGEMAKER_MAX_PAYLOAD_IN_MB="1", SERVE_MAX_CONNECTIONS="4")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill_leftovers()


def test_only_ping_and_invocations_answer_on_the_serving_port(single, recorder):
    doors = [
        ("POST", f"/models?url={recorder.url}&model_name=evil&initial_workers=1", b""),
        ("POST", "/models", json.dumps({"model_name": "evil", "url": recorder.url}).encode()),
        ("DELETE", "/models/model", None),
        ("PUT", "/models/model?min_worker=50", None),
        ("GET", "/models", None),
        ("GET", "/models/model", None),
        ("POST", "/predictions/model", png_bytes()),
        ("POST", "/model/predict", png_bytes()),
        ("POST", "/models/model/invoke", png_bytes()),
        ("GET", "/api-description", None),
        ("OPTIONS", "/", None),
        ("GET", "/../../etc/passwd", None),
    ]
    for method, path, body in doors:
        status, answer = request(single.port, path, body, method=method, **{"Content-Type": PNG})
        assert status in (404, 405), (method, path, status, answer)
        assert set(answer) == {"error", "status"} and "\n" not in answer["error"]
    assert request(single.port, "/invocations", method="GET")[0] == 405
    for form in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer = request(single.port, "/invocations", b"\xff\xd8 a=b&c", **{"Content-Type": form})
        assert status == 415 and "\\x" not in answer["error"] and "a=b" not in answer["error"]
    assert predict(single.port, png_bytes(), PNG)[0] == 200  # the model is still registered
    assert request(single.port, "/ping", method="GET") == (200, {"status": "Healthy"})
    assert recorder.seen == []


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_request_bounds(single):
    status, answer = request(single.port, "/invocations", b"x" * 2_000_000, **{"Content-Type": PNG})
    assert status == 413 and "limit" in answer["error"]
    status, answer = request(single.port, "/invocations", png_bytes(), **{"Content-Type": PNG, "X-Big": "a" * 20000})
    assert status == 431
    with socket.create_connection(("127.0.0.1", single.port)) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        assert sock.recv(200).startswith(b"HTTP/1.1 411")
    status, answer = request(single.port, "/invocations", b"", **{"Content-Type": PNG, "Content-Length": "9" * 5000})
    assert status == 400 and "Content-Length" in answer["error"]
    with socket.create_connection(("127.0.0.1", single.port)) as sock:  # a refused request's body is not a request
        body = b"GET /models HTTP/1.1\r\n\r\n"
        sock.sendall(b"POST /predictions/model HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 404") and reply.count(b"HTTP/1.1") == 1
    with socket.create_connection(("127.0.0.1", single.port)) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 400") and b'"error"' in reply and b"<html" not in reply.lower()


def test_connections_over_the_cap_are_closed_and_the_server_lives(single):
    held = [socket.create_connection(("127.0.0.1", single.port)) for _ in range(4)]
    try:
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", single.port)) as extra:
            extra.settimeout(5)
            assert extra.recv(10) == b""  # closed at once, not queued
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert predict(single.port, png_bytes(), PNG)[0] == 200


@pytest.mark.parametrize(
    "value,expected",
    [("image/png", "image/png"), ("", "application/json"), ("text/csv\r\nX-Evil: 1", "application/json"),
     ("text/\u00e9", "application/json")],
)  # fmt: skip
def test_a_worker_s_content_type_is_sent_only_if_it_can_be_a_header(value, expected):
    assert gateway.header_value(value, "application/json") == expected


def test_ping_is_503_once_the_worker_is_gone_until_a_new_one_serves(small_model, tmp_path):
    shutil.copytree(small_model, tmp_path / "model")
    server = Server(tmp_path)
    try:
        server.wait_healthy()
        for worker in psutil.Process(server.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "model_service_worker" in " ".join(worker.cmdline()):
                    worker.send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 503 not in statuses:
            statuses.append(request(server.port, "/ping", method="GET")[0])
            time.sleep(0.1)
        assert 503 in statuses  # MMS itself answers 200 {"status": "Unhealthy"}
        server.wait_healthy()  # a new worker replaces it
        assert predict(server.port, png_bytes(), PNG)[0] == 200
        assert "worker 0 stopped (its process ended): starting a new one" in server.log
    finally:
        server.stop()


@pytest.fixture
def multi(small_model, tmp_path):
    shutil.copytree(small_model, tmp_path / "models" / "good" / "model")
    shutil.copytree(small_model, tmp_path / "elsewhere" / "model")
    (tmp_path / "models" / "sneaky").mkdir()
    (tmp_path / "models" / "sneaky" / "model").symlink_to(tmp_path / "elsewhere" / "model")
    server = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true")
    try:
        server.wait_healthy()
        yield server, tmp_path
    finally:
        assert server.stop() < 30


def register(port: int, **fields) -> tuple[int, dict]:
    return request(port, "/models", json.dumps(fields).encode(), **{"Content-Type": "application/json"})


def test_multi_model_registration_takes_only_local_folders_under_the_root(multi, recorder):
    server, base = multi
    refused = [
        ({"model_name": "evil", "url": recorder.url}, 400),
        ({"model_name": "evil", "url": str(base / "elsewhere" / "model")}, 400),
        (
            {"model_name": "evil", "url": str(base / "models" / "good" / "model" / ".." / ".." / ".." / "elsewhere")},
            400,
        ),
        ({"model_name": "evil", "url": str(base / "models" / "sneaky" / "model")}, 400),
        ({"model_name": "evil", "url": str(base / "models" / "good" / "model"), "handler": "os:system"}, 400),
        ({"model_name": "../evil", "url": str(base / "models" / "good" / "model")}, 400),
        ({"model_name": "evil", "url": "/nowhere"}, 404),
    ]
    for fields, status in refused:
        got, answer = register(server.port, **fields)
        assert got == status and "\n" not in answer["error"], (fields, got, answer)
    status, answer = request(server.port, f"/models?url={recorder.url}&model_name=evil", b"", **{"X": "y"})
    assert status == 400
    assert recorder.seen == []
    assert register(server.port, model_name="good", url=str(base / "models" / "good" / "model"))[0] == 200
    assert register(server.port, model_name="good", url=str(base / "models" / "good" / "model"))[0] == 409
    (listed,) = request(server.port, "/models", method="GET")[1]["models"]
    assert listed == {"modelName": "good", "modelUrl": str(base / "models" / "good" / "model")}  # as registered
    assert request(server.port, "/models/good", method="GET")[1]["modelUrl"] == listed["modelUrl"]
    assert request(server.port, "/models/good/invoke", png_bytes(), **{"Content-Type": PNG})[0] == 200
    assert request(server.port, "/models/good", method="PUT")[0] == 405
    assert request(server.port, "/models/good", method="DELETE")[0] == 200
    status, answer = request(server.port, "/models/good/invoke", png_bytes(), **{"Content-Type": PNG})
    assert status == 404 and "\n" not in answer["error"]
