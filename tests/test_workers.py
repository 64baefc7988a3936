"""serve.workers: the batch queue, and a real pool of MMS workers running our handler: answers,
batches, a worker that dies, one that overruns the timeout, one that cannot be replaced."""

from __future__ import annotations

import io
import json
import shutil
import signal
import threading
import time

import psutil
import pytest
from PIL import Image

from serve import workers
from serve.mms import Job, Reply

PNG = "image/png"


def png(color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, "PNG")
    return out.getvalue()


class Answer:
    """What a Pending's ``answer`` callback got, and when."""

    def __init__(self):
        self.done, self.value = threading.Event(), None

    def __call__(self, value):
        self.value = value
        self.done.set()

    def wait(self, seconds: float = 60):
        assert self.done.wait(seconds), "no answer"
        return self.value


def pending(body: bytes = b"x", content_type: str = PNG, seconds: float = 60, batchable: bool = True):
    answer = Answer()
    job = Job({"Content-Type": content_type}, body, content_type)
    return workers.Pending(job, answer, time.monotonic() + seconds, batchable), answer


def test_a_batch_is_the_oldest_request_and_the_single_images_behind_it_up_to_the_batch_size():
    queue = workers.BatchQueue(batch_size=3, delay_seconds=0)
    items = [pending()[0] for _ in range(4)]
    for item in items:
        queue.put(item)
    assert queue.take(1) == items[:3] and queue.take(1) == items[3:]


def test_a_request_that_is_not_one_image_goes_alone_and_ends_the_batch_before_it():
    queue = workers.BatchQueue(batch_size=8, delay_seconds=0)
    image, json_request, image2 = pending()[0], pending(batchable=False)[0], pending()[0]
    for item in (image, json_request, image2):
        queue.put(item)
    assert queue.take(1) == [image] and queue.take(1) == [json_request] and queue.take(1) == [image2]


def test_a_worker_waits_up_to_the_delay_for_a_batch_to_fill_and_no_longer():
    queue = workers.BatchQueue(batch_size=4, delay_seconds=0.3)
    first, second = pending()[0], pending()[0]
    queue.put(first)
    threading.Timer(0.1, queue.put, args=(second,)).start()
    started = time.monotonic()
    assert queue.take(1) == [first, second]
    assert 0.25 < time.monotonic() - started < 1.0  # waited the delay for 2 more, then went
    assert queue.take(0.05) == []


def test_closing_the_queue_answers_what_waits_with_503():
    queue = workers.BatchQueue(batch_size=4, delay_seconds=0)
    item, answer = pending()
    queue.put(item)
    queue.close()
    assert answer.wait(1).status == 503 and queue.take(0.01) == []
    late, late_answer = pending()
    queue.put(late)
    assert late_answer.wait(1).status == 503


def start_pool(model, scratch, batch_size=1, delay=0.0, timeout=30.0):
    pool = workers.WorkerPool(workers.ModelFiles("model", model), scratch, [-1], timeout, batch_size, delay)
    pool.failures = []
    pool.start(on_failure=pool.failures.append)
    assert wait_healthy(pool), pool.failures
    return pool


@pytest.fixture
def pool_parts(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_RUNTIME", "onnx")
    monkeypatch.setenv("SERVE_THREADS", "1")
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    return shutil.copytree(small_model, tmp_path / "model"), scratch


@pytest.fixture
def pool(pool_parts):
    made = start_pool(*pool_parts)
    made.model_dir, made.scratch = pool_parts
    yield made
    made.stop(signal.SIGKILL)
    made.wait(10)


def ask(pool: workers.WorkerPool, body: bytes, content_type: str = PNG, seconds: float = 60):
    item, answer = pending(body, content_type, seconds, content_type == PNG)
    pool.submit(item)
    return answer.wait()


def wait_healthy(pool: workers.WorkerPool, seconds: float = 120) -> bool:
    """Whether the pool becomes healthy within ``seconds`` (no longer waited for once a worker failed to load)."""
    deadline = time.monotonic() + seconds
    while not pool.healthy() and not pool.failures and time.monotonic() < deadline:
        time.sleep(0.1)
    return pool.healthy()


def test_the_pool_answers_with_our_handler_and_its_errors(pool):
    reply = ask(pool, png())
    assert isinstance(reply, Reply) and reply.status == 200 and reply.content_type == "application/json"
    assert json.loads(reply.body)["predictions"][0]["label"] in {"ant", "bee", "cat"}
    bad = ask(pool, b"a,b\n1,2", "text/csv")
    assert bad.status == 415 and json.loads(bad.body)["error"] and bad.phrase
    assert ask(pool, json.dumps({"instances": [{"b64": "QQ=="}]}).encode(), "application/json").status == 400


def test_batched_requests_get_the_answers_they_get_alone(pool_parts, pool):
    bodies = [png((40 * i, 200 - 30 * i, 90)) for i in range(5)] + [b"not an image"]
    alone = [ask(pool, body) for body in bodies]
    batching = start_pool(*pool_parts, batch_size=8, delay=0.5)
    try:
        items = [pending(body) for body in bodies]
        for item, _ in items:
            batching.submit(item)
        together = [answer.wait() for _, answer in items]
    finally:
        batching.stop(signal.SIGKILL)
        batching.wait(10)
    assert [r.status for r in together] == [200] * 5 + [400]
    for one, other in zip(alone, together, strict=True):
        assert json.loads(one.body) == json.loads(other.body)


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
    assert not pool.healthy()
    reply = ask(pool, png())  # waits for the replacement instead of failing
    assert reply.status == 200 and worker.generation == 2 and pool.healthy()
    assert not list(pool.scratch.glob(f"worker-{worker.serial}-1*")), "the first generation's files are left"


def test_a_worker_that_cannot_be_replaced_is_reported_once(pool):
    shutil.rmtree(pool.model_dir)  # the replacement cannot load the model
    kill_forked_worker(pool.workers[0])
    assert not pool.healthy()
    deadline = time.monotonic() + 60
    while not pool.failures and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    assert len(pool.failures) == 1 and "worker 0" in pool.failures[0]


def test_a_worker_that_dies_under_a_batch_answers_500_and_is_replaced(pool):
    worker = pool.workers[0]
    worker.ready = False  # the pool's thread keeps serving it: send it a batch ourselves
    kill_forked_worker(worker)
    with pytest.raises(workers.WorkerError) as failed:
        worker.predict([Job({}, png(), PNG)])
    assert failed.value.status == 500
    assert wait_healthy(pool) and worker.generation == 2
    assert ask(pool, png()).status == 200


def test_a_worker_over_the_timeout_answers_504_and_is_replaced(pool):
    worker = pool.workers[0]
    worker.sock.settimeout(0.001)
    failed = ask(pool, png())
    assert isinstance(failed, workers.WorkerError) and failed.status == 504
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS" in str(failed)
    assert wait_healthy(pool) and worker.generation == 2
    assert ask(pool, png()).status == 200


def test_a_request_still_queued_at_its_deadline_answers_503_unpredicted(pool):
    late = ask(pool, png(), seconds=-1)
    assert isinstance(late, workers.WorkerError) and late.status == 503
    assert ask(pool, png()).status == 200


def test_alive_never_reads_the_worker_s_own_socket_which_may_wait_up_to_the_timeout(pool):
    """/ping asks alive() on the event loop: a recv on the worker's socket (which has the
    timeout) could wait 60 s when the worker's thread takes the data first (it did, under load)."""

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"alive() used the worker's socket ({name})")

    worker = pool.workers[0]
    kept, worker.sock = worker.sock, Untouchable()
    try:
        started = time.monotonic()
        assert worker.alive() and time.monotonic() - started < 0.1
    finally:
        worker.sock = kept
    assert ask(pool, png()).status == 200
