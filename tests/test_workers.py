"""serve.workers: MMS's worker protocol spoken by MMS's own codec, and a real pool of workers
running our handler: answers, a worker that dies, one that overruns the timeout."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import struct
import threading
import time

import psutil
import pytest
from PIL import Image

from serve import workers
from tests.serving import mms_context


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_mms_reads_our_inference_command_as_its_frontend_would_send_it():
    from mms.protocol.otf_message_handler import retrieve_msg

    ours, theirs = socket.socketpair()
    headers = {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}
    threading.Thread(target=ours.sendall, args=(workers.predict_message(headers, b"\x00body", "image/png"),)).start()
    command, batch = retrieve_msg(theirs)
    assert command == b"I" and len(batch) == 1
    assert {h["name"].decode(): h["value"].decode() for h in batch[0]["headers"]} == headers
    assert batch[0]["parameters"] == [{"name": "body", "contentType": "image/png", "value": b"\x00body"}]


def test_mms_reads_our_load_command():
    from mms.protocol.otf_message_handler import retrieve_msg

    ours, theirs = socket.socketpair()
    ours.sendall(workers.load_message("/models/m", 1, "worker-0-1"))
    command, load = retrieve_msg(theirs)
    assert command == b"L" and load["modelPath"] == b"/models/m" and load["gpu"] == 1 and load["batchSize"] == 1
    assert load["handler"] == b"serve.handler:handle" and load["ioFileDescriptor"] == b"worker-0-1"


def test_we_read_the_answer_mms_workers_write():
    from mms.protocol.otf_message_handler import create_predict_response

    context = mms_context("/m", [{}])
    context.set_response_content_type(0, "application/json")
    context.set_response_status(415, "unsupported content type", idx=0)
    raw = create_predict_response(['{"error": "x"}'], {0: "req-1"}, "Prediction success", 200, context=context)
    reply = workers.read_reply(workers._Reader(io.BytesIO(bytes(raw))))
    assert reply == workers.Reply(415, "unsupported content type", "application/json", b'{"error": "x"}')


def test_a_failed_batch_answers_with_mms_s_message_not_its_placeholder_body():
    from mms.protocol.otf_message_handler import create_predict_response

    raw = create_predict_response(None, {0: "req-1"}, "Prediction failed", 503)
    reply = workers.read_reply(workers._Reader(io.BytesIO(bytes(raw))))
    assert (reply.status, reply.phrase) == (503, "Prediction failed")
    assert json.loads(reply.body) == {"message": "Prediction failed"}


def test_an_answer_over_the_response_limit_is_refused_before_it_is_read():
    fields = [struct.pack("!ii", 200, 0), struct.pack("!i", 1) + b"r", struct.pack("!iiii", 0, 200, 0, 0)]
    raw = b"".join(fields) + struct.pack("!i", workers.MAX_RESPONSE_BYTES + 1)
    with pytest.raises(workers.WorkerError, match="over"):
        workers.read_reply(workers._Reader(io.BytesIO(raw)))


def test_a_truncated_answer_is_a_worker_error():
    with pytest.raises(workers.WorkerError, match="closed"):
        workers.read_reply(workers._Reader(io.BytesIO(b"\x00\x00\x00\xc8\x00")))


@pytest.fixture
def pool(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_RUNTIME", "onnx")
    monkeypatch.setenv("SERVE_THREADS", "1")
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    model = shutil.copytree(small_model, tmp_path / "model")
    failures: list[str] = []
    made = workers.WorkerPool(model, scratch, 1, 0, timeout=30)
    made.start(on_failure=failures.append)
    made.failures, made.scratch, made.model = failures, scratch, model
    assert wait_healthy(made), failures
    yield made
    made.signal(signal.SIGKILL)
    made.wait()


def ask(pool: workers.WorkerPool, body: bytes, content_type: str = "image/png") -> workers.Reply:
    return pool.predict({"Content-Type": content_type}, body, content_type)


def wait_healthy(pool: workers.WorkerPool, seconds: float = 120) -> bool:
    """Whether the pool becomes healthy within ``seconds`` (no longer waited for once a worker failed to load)."""
    deadline = time.monotonic() + seconds
    while not pool.healthy() and not pool.failures and time.monotonic() < deadline:
        time.sleep(0.1)
    return pool.healthy()


def test_the_pool_answers_with_our_handler_and_its_errors(pool):
    reply = ask(pool, png())
    assert reply.status == 200 and reply.content_type == "application/json"
    assert json.loads(reply.body)["predictions"][0]["label"] in {"ant", "bee", "cat"}
    bad = ask(pool, b"a,b\n1,2", "text/csv")
    assert bad.status == 415 and json.loads(bad.body)["error"] and bad.phrase
    assert ask(pool, json.dumps({"instances": [{"b64": "QQ=="}]}).encode(), "application/json").status == 400


def kill_forked_worker(worker: workers.Worker) -> None:
    """SIGKILL the process that MMS's worker forked for our connection (it holds the model: the
    one the kernel's OOM killer would pick), and wait until it is gone."""
    psutil.Process(worker.process.pid).children()[0].kill()
    deadline = time.monotonic() + 10
    while worker.alive() and time.monotonic() < deadline:  # until its end has closed our connection
        time.sleep(0.01)


def test_a_worker_that_died_while_idle_is_replaced_before_a_request_reaches_it(pool):
    worker = pool.workers[0]
    kill_forked_worker(worker)
    reply = ask(pool, png())  # waits for the replacement instead of failing
    assert reply.status == 200 and worker.generation == 2 and pool.healthy()
    assert not list(pool.scratch.glob("worker-0-1-*")), "the first generation's log fifos are left"


def test_a_worker_that_cannot_be_replaced_stops_the_server(pool):
    shutil.rmtree(pool.model)  # the replacement cannot load the model
    kill_forked_worker(pool.workers[0])
    assert not pool.healthy()
    deadline = time.monotonic() + 60
    while not pool.failures and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.failures and "worker 0" in pool.failures[0]


def test_a_worker_that_dies_under_a_request_is_a_500_and_ping_tells(pool):
    worker = pool.workers[0]
    kill_forked_worker(worker)
    with pytest.raises(workers.WorkerError) as failed:
        worker.predict({}, png(), "image/png")  # the pool would not hand it out: ask it directly
    assert failed.value.status == 500
    assert not pool.healthy()  # and it is being replaced
    assert wait_healthy(pool) and worker.generation == 2
    assert ask(pool, png()).status == 200


def test_a_worker_over_the_timeout_is_a_504_and_replaced(pool):
    pool.workers[0].timeout = 0.001
    pool.workers[0].sock.settimeout(0.001)
    with pytest.raises(workers.WorkerError) as failed:
        ask(pool, png())
    pool.workers[0].timeout = 30  # the replacement (a second from now) sets its socket's timeout from this
    assert failed.value.status == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS" in str(failed.value)
    assert wait_healthy(pool)
    assert ask(pool, png()).status == 200


def test_a_busy_pool_answers_503_after_the_timeout(pool):
    pool.timeout = 0.2
    taken = pool.idle.get()
    try:
        with pytest.raises(workers.WorkerError) as failed:
            ask(pool, png())
        assert failed.value.status == 503
    finally:
        pool.idle.put(taken)
