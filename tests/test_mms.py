"""serve.mms: MMS's worker protocol, checked against MMS's own codec."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading

import pytest

from serve import mms
from tests.serving import mms_context


def test_mms_reads_a_batch_of_our_requests_as_its_frontend_would_send_it(monkeypatch):
    from mms.protocol.otf_message_handler import retrieve_msg

    monkeypatch.setenv("MMS_DECODE_INPUT_REQUEST", "false")  # as serve.workers starts them: raw bodies

    ours, theirs = socket.socketpair()
    headers = {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}
    jobs = [mms.Job(headers, b"\x00body", "image/png"), mms.Job({}, b"second", "application/json")]
    threading.Thread(target=ours.sendall, args=(mms.predict_message(jobs),)).start()
    command, batch = retrieve_msg(theirs)
    assert command == b"I" and len(batch) == 2
    assert [request["requestId"] for request in batch] == [b"0", b"1"]
    assert {h["name"].decode(): h["value"].decode() for h in batch[0]["headers"]} == headers
    assert batch[0]["parameters"] == [{"name": "body", "contentType": "image/png", "value": b"\x00body"}]
    assert batch[1]["parameters"][0]["value"] == b"second" and batch[1]["headers"] == []


def test_mms_reads_our_load_command():
    from mms.protocol.otf_message_handler import retrieve_msg

    ours, theirs = socket.socketpair()
    ours.sendall(mms.load_message("m", "/models/m", 1, "worker-m-0-1", 8))
    command, load = retrieve_msg(theirs)
    assert command == b"L" and load["modelPath"] == b"/models/m" and load["gpu"] == 1 and load["batchSize"] == 8
    assert load["modelName"] == b"m" and load["handler"] == b"serve.handler:handle"
    assert load["ioFileDescriptor"] == b"worker-m-0-1"


def reader(raw) -> mms.Reader:
    return mms.Reader(io.BytesIO(bytes(raw)))


def test_we_read_the_answers_mms_workers_write_in_the_batch_s_order():
    from mms.protocol.otf_message_handler import create_predict_response

    context = mms_context("/m", [{}, {}])
    context.set_response_content_type(0, "application/json")
    context.set_response_status(415, "unsupported content type", idx=0)
    context.set_response_content_type(1, "application/jsonlines")
    raw = create_predict_response(['{"error": "x"}', "ok"], {1: "1", 0: "0"}, "Prediction success", 200, context)
    first, second = mms.read_replies(reader(raw), 2)
    assert first == mms.Reply(415, "unsupported content type", "application/json", b'{"error": "x"}')
    assert second == mms.Reply(200, "", "application/jsonlines", b"ok")


def test_a_failed_batch_answers_each_request_with_mms_s_message_not_its_placeholder_body():
    from mms.protocol.otf_message_handler import create_predict_response

    raw = create_predict_response(None, {0: "0", 1: "1"}, "Prediction failed", 503)
    replies = mms.read_replies(reader(raw), 2)
    assert [(r.status, r.phrase) for r in replies] == [(503, "Prediction failed")] * 2
    assert json.loads(replies[1].body) == {"message": "Prediction failed"}


def test_an_answer_missing_a_request_is_a_protocol_error():
    from mms.protocol.otf_message_handler import create_predict_response

    raw = create_predict_response(["a"], {0: "0"}, "Prediction success", 200, mms_context("/m", [{}]))
    with pytest.raises(mms.ProtocolError, match="1 of 2"):
        mms.read_replies(reader(raw), 2)


def test_an_answer_over_the_response_limit_is_refused_before_it_is_read():
    fields = [struct.pack("!ii", 200, 0), struct.pack("!i", 1) + b"0", struct.pack("!iiii", 0, 200, 0, 0)]
    raw = b"".join(fields) + struct.pack("!i", mms.MAX_RESPONSE_BYTES + 1)
    with pytest.raises(mms.ProtocolError, match="over"):
        mms.read_replies(reader(raw), 1)


def test_a_truncated_answer_is_a_protocol_error():
    with pytest.raises(mms.ProtocolError, match="closed"):
        mms.read_replies(reader(b"\x00\x00\x00\xc8\x00"), 1)
