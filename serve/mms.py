"""multi-model-server's Python worker protocol: what we send a worker and how we read its answers.

Every model (one on a single-model endpoint, each registered one on a multi-model endpoint)
runs in MMS's own Python workers (``mms.model_service_worker``), which run our handler
(``HANDLER``) in MMS's own ``Context``. MMS's Java frontend is not used: ``serve.workers``
starts the workers and speaks their binary protocol (length-prefixed fields, as MMS's
``otf_message_handler`` reads and writes them) on a Unix socket in the server's private
folder. tests/test_mms.py checks every message against MMS's own codec.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

HANDLER = "serve.handler:handle"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # as MMS's max_response_size; a user's output_fn could return more


class ProtocolError(Exception):
    """A worker's answer ended early or broke MMS's protocol."""


@dataclass
class Job:
    """One request for a model: what the worker gets (headers, body, content type)."""

    headers: dict[str, str]
    body: bytes
    content_type: str


@dataclass
class Reply:
    """One request's answer from a worker, as MMS would relay it."""

    status: int
    phrase: str
    content_type: str
    body: bytes


def _field(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack("!i", len(raw)) + raw


def load_message(model_name: str, model_dir: str, gpu: int, io_name: str, batch_size: int) -> bytes:
    """MMS's load command: model name and folder, batch size, handler, GPU (-1: none), log fifos."""
    return b"L" + _field(model_name) + _field(model_dir) + struct.pack("!i", batch_size) + _field(HANDLER) + \
        struct.pack("!i", gpu) + _field(io_name)  # fmt: skip


def predict_message(jobs: list[Job]) -> bytes:
    """MMS's inference command for a batch: each request's id (its index), headers, and body
    as the input "body"."""
    parts = [b"I"]
    for index, job in enumerate(jobs):
        parts.append(_field(str(index)))
        parts += [_field(name) + _field(value) for name, value in job.headers.items()]
        parts += [struct.pack("!i", -1), _field("body"), _field(job.content_type), _field(job.body)]
        parts.append(struct.pack("!i", -1))  # end of this request's parameters
    parts.append(struct.pack("!i", -1))  # end of the batch
    return b"".join(parts)


class Reader:
    """Reads MMS's length-prefixed answer from a buffered socket file."""

    def __init__(self, stream):
        self.stream = stream

    def exact(self, n: int) -> bytes:
        data = self.stream.read(n)
        if data is None or len(data) < n:
            raise ProtocolError("the worker closed its connection")
        return data

    def int(self) -> int:
        return struct.unpack("!i", self.exact(4))[0]

    def text(self) -> str:
        n = self.int()
        return self.exact(n).decode("utf-8", "replace") if n > 0 else ""


def read_load_answer(reader: Reader) -> tuple[int, str]:
    """A load command's (code, message)."""
    code, message = reader.int(), reader.text()
    reader.int()  # end of the (empty) list of predictions
    return code, message


def read_replies(reader: Reader, count: int) -> list[Reply]:
    """The answers to a batch of ``count`` requests, in the batch's order. A batch that failed
    (the handler raised, or returned no list) gives each request MMS's message, as MMS's
    frontend answered it, not the placeholder body "error"."""
    code, message = reader.int(), reader.text()
    replies: dict[int, Reply] = {}
    while (length := reader.int()) != -1:
        request_id = reader.exact(length).decode(errors="replace")
        content_type, status, phrase = reader.text(), reader.int(), reader.text()
        for _ in range(reader.int()):  # response headers: ours set none
            reader.text(), reader.text()
        size = reader.int()
        if size > MAX_RESPONSE_BYTES:
            raise ProtocolError(f"the worker's answer of {size} bytes is over {MAX_RESPONSE_BYTES}")
        body = reader.exact(size)
        if request_id.isdigit() and int(request_id) < count:
            replies[int(request_id)] = Reply(status, phrase, content_type, body)
    if code != 200:
        failed = Reply(code, message, "application/json", json.dumps({"message": message}).encode())
        return [failed] * count
    if len(replies) != count:
        raise ProtocolError(f"the worker answered {len(replies)} of {count} requests: {message}")
    return [replies[i] for i in range(count)]


def request_headers(context, idx: int) -> dict[str, str]:
    """Request ``idx``'s headers as an MMS worker's context holds them, names lowercased."""
    return {str(k).lower(): str(v) for k, v in (context.get_all_request_header(idx) or {}).items()}


def parse(raw: bytes) -> dict:
    """A worker's answer body as a dict: its JSON object, or ``{"message": text}``."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return {"message": raw.decode(errors="replace")}
    return answer if isinstance(answer, dict) else {"message": str(answer)}
