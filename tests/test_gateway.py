"""The serving port against an attacker: no management door, no download, bounded requests."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
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
    server = Server(base, SAGEMAKER_MAX_PAYLOAD_IN_MB="1", SERVE_MAX_CONNECTIONS="4", SERVE_HEADER_TIMEOUT="2")
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


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP answer in ``raw``."""
    found, rest = [], raw
    while rest.startswith(b"HTTP/1.1 "):
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        found.append((int(head[9:12]), rest[:length]))
        rest = rest[length:]
    return found


def exchange(port: int, raw: bytes) -> list[tuple[int, bytes]]:
    """Send ``raw`` on one connection and read every answer until the server closes it (the
    last request must ask it to, or be one it closes after)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(raw)
        return answers(read_all(sock))


def test_request_bounds(single):
    status, answer = request(single.port, "/invocations", b"x" * 2_000_000, **{"Content-Type": PNG})
    assert status == 413 and "limit" in answer["error"]
    status, answer = request(single.port, "/invocations", png_bytes(), **{"Content-Type": PNG, "X-Big": "a" * 20000})
    assert status == 431
    status, answer = request(single.port, "/invocations", b"", **{"Content-Type": PNG, "Content-Length": "9" * 5000})
    assert status == 400
    with socket.create_connection(("127.0.0.1", single.port)) as sock:  # a refused request's body is not a request
        body = b"GET /models HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(b"POST /predictions/model HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        replies = answers(read_all(sock))
        assert [status for status, _ in replies] == [404]
    with socket.create_connection(("127.0.0.1", single.port)) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 400") and b'"error"' in reply and b"<html" not in reply.lower()


SMUGGLED = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 5\r\nContent-Length: 6", b"Content-Length: 5\r\nTransfer-Encoding: chunked",
     b"Transfer-Encoding: chunked\r\nContent-Length: 5", b"Content-Length: 5, 6"],
)  # fmt: skip
def test_ambiguous_framing_is_a_400_and_nothing_behind_it_is_answered(single, framing):
    raw = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n" + framing + b"\r\n\r\n"
    replies = exchange(single.port, raw + b"0\r\n\r\n" + SMUGGLED)
    assert [status for status, _ in replies] == [400], replies  # RFC 9112 6.3: answered, then closed
    assert b"Healthy" not in b"".join(body for _, body in replies)


def chunked(data: bytes, size: int = 100) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_a_chunked_body_is_accepted_within_the_payload_limit(single):
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
    last = head + b"Connection: close\r\n\r\n" + chunked(png_bytes())
    (status, body), (again, _) = exchange(single.port, head + b"\r\n" + chunked(png_bytes()) + last)
    assert status == again == 200 and json.loads(body)["predictions"]
    (status, body), *_ = exchange(single.port, head + b"\r\n" + chunked(b"x" * 1_100_000, 65536))
    assert status == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in json.loads(body)["error"]


def test_pipelined_requests_are_answered_in_order(single):
    post = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
    bad = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\na,b"
    last = b"GET /execution-parameters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    image = png_bytes()
    replies = exchange(single.port, (post % len(image)) + image + SMUGGLED + bad + last)
    assert [status for status, _ in replies] == [200, 200, 415, 200]
    assert b"predictions" in replies[0][1] and b"Healthy" in replies[1][1] and b"MaxPayloadInMB" in replies[3][1]


def test_expect_100_continue_gets_a_100_before_the_body_and_a_refusal_gets_none(single):
    image = png_bytes()
    with socket.create_connection(("127.0.0.1", single.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(image))  # fmt: skip
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(image)
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", single.port)) as sock:  # over the limit: no 100, no body sent
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 2000000\r\n\r\n")  # fmt: skip
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply


def test_slow_clients_hold_no_worker_and_a_trickled_head_is_cut_off(single):
    image = png_bytes()
    trickler = socket.create_connection(("127.0.0.1", single.port))
    slow_body = socket.create_connection(("127.0.0.1", single.port))
    try:
        slow_body.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(image), image[:10]))  # fmt: skip
        started = time.monotonic()
        trickler.sendall(b"POST /invocations HTTP/1.1\r\n")
        for _ in range(3):  # one header byte at a time: SERVE_HEADER_TIMEOUT=2 s cuts it off
            trickler.sendall(b"X")
            time.sleep(0.5)
        assert predict(single.port, image, PNG)[0] == 200  # the only worker is free for others
        reply = read_all(trickler)
        assert reply.startswith(b"HTTP/1.1 408 ") and 1.5 < time.monotonic() - started < 8
        slow_body.sendall(image[10:])  # the slow body still gets its answer
        assert read_until_answer(slow_body).startswith(b"HTTP/1.1 200 ")
    finally:
        trickler.close()
        slow_body.close()


def test_an_idle_kept_alive_connection_outlives_the_header_timeout(single):
    """Only a head that has begun has SERVE_HEADER_TIMEOUT (2 s here); an idle connection is kept
    for the timeout, so that a client reusing it after a pause is not met by a closed socket."""
    connection = http.client.HTTPConnection("127.0.0.1", single.port, timeout=10)
    try:
        for pause in (0, 3):
            time.sleep(pause)
            connection.request("GET", "/ping")  # http.client does not reconnect: a closed socket raises
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b'{"status": "Healthy"}'
    finally:
        connection.close()


def read_until_answer(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    return data


def test_connections_over_the_cap_get_a_503_with_retry_after_and_the_server_lives(single):
    held = [socket.create_connection(("127.0.0.1", single.port)) for _ in range(4)]
    try:
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", single.port)) as extra:
            reply = read_all(extra)
            assert reply.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in reply and b'"error"' in reply
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert predict(single.port, png_bytes(), PNG)[0] == 200


def test_a_full_queue_answers_503_with_retry_after(small_model, tmp_path):
    shutil.copytree(small_model, tmp_path / "model")
    server = Server(tmp_path, SERVE_MAX_QUEUE="1")
    image = png_bytes()
    try:
        server.wait_healthy()
        with socket.create_connection(("127.0.0.1", server.port)) as waiting:  # admitted, its body still coming
            waiting.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(image))  # fmt: skip
            time.sleep(0.5)
            status, answer = predict(server.port, image, PNG)
            assert status == 503 and "busy" in answer["error"]
            raw = exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
            assert raw[0][0] == 503
            waiting.sendall(image)
            assert read_until_answer(waiting).startswith(b"HTTP/1.1 200 ")
        assert predict(server.port, image, PNG)[0] == 200
    finally:
        server.stop()


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


def test_multi_model_listing_is_paginated_and_describes_workers(multi):
    server, base = multi
    for name in ("a", "b", "c"):
        shutil.copytree(base / "models" / "good" / "model", base / "models" / name / "model")
        assert register(server.port, model_name=name, url=str(base / "models" / name / "model"))[0] == 200
    first = request(server.port, "/models?limit=2", method="GET")[1]
    assert [m["modelName"] for m in first["models"]] == ["a", "b"] and first["nextPageToken"]
    rest = request(server.port, f"/models?limit=2&next_page_token={first['nextPageToken']}", method="GET")[1]
    assert [m["modelName"] for m in rest["models"]] == ["c"] and "nextPageToken" not in rest
    assert request(server.port, "/models?limit=0", method="GET")[0] == 400
    described = request(server.port, "/models/b", method="GET")[1]
    assert described["modelName"] == "b" and described["workers"][0]["status"] == "READY"
    assert described["batchSize"] >= 1
    assert request(server.port, "/models/nothere", method="GET")[0] == 404
    assert request(server.port, "/models/nothere", method="DELETE")[0] == 404


def test_a_model_that_would_not_fit_in_memory_is_a_507_and_nothing_is_loaded(small_model, tmp_path):
    shutil.copytree(small_model, tmp_path / "models" / "big" / "model")
    server = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true", SERVE_MEMORY_HEADROOM_MB=str(1 << 30))
    try:
        server.wait_healthy()
        status, answer = register(server.port, model_name="big", url=str(tmp_path / "models" / "big" / "model"))
        assert status == 507 and "SERVE_MEMORY_HEADROOM_MB" in answer["error"] and "\n" not in answer["error"]
        assert request(server.port, "/models", method="GET") == (200, {"models": []})
        assert "model_service_worker" not in " ".join(
            " ".join(p.cmdline()) for p in psutil.Process(server.process.pid).children(recursive=True)
        )
    finally:
        assert server.stop() < 30


def test_a_model_whose_worker_cannot_be_replaced_is_unloaded_and_can_be_loaded_again(multi):
    server, base = multi
    url = str(base / "models" / "good" / "model")
    assert register(server.port, model_name="good", url=url)[0] == 200
    worker = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                  if "model_service_worker" in " ".join(p.cmdline()))  # fmt: skip
    staged = re.search(r"--model-path (\S+)", " ".join(worker.cmdline())).group(1)
    shutil.rmtree(staged)  # its replacement cannot load the model
    for child in worker.children():
        child.kill()  # the process that holds the model, as the OOM killer would
    deadline = time.monotonic() + 30
    while request(server.port, "/models", method="GET")[1]["models"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert request(server.port, "/models", method="GET") == (200, {"models": []})
    assert "unloading model good" in server.log
    assert request(server.port, "/ping", method="GET")[0] == 200 and server.process.poll() is None
    assert register(server.port, model_name="good", url=url)[0] == 200  # SageMaker loads it again
    assert request(server.port, "/models/good/invoke", png_bytes(), **{"Content-Type": PNG})[0] == 200
