"""Batch transform: JSON Lines in the codec and the handler, ``/execution-parameters``, and SDK
v2 local mode's ``Transformer`` on a folder of images and on JSON Lines (slow)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import tarfile

import pytest
import torch
from PIL import Image

import model_artifact
from local_mode import session as local
from local_mode import transform
from serve import codecs, gateway
from serve.codecs import DecodeOptions, RequestError
from serve.registry import Registry
from serve.settings import Settings
from tests.serving import call_app, free_port, mms_context, service_fixture

SERVING_IMAGE = "byoc-classifier-serving-cpu:latest"
OPTIONS = DecodeOptions(max_images=4, max_pixels=10_000, max_request_pixels=25_000, prepare=lambda image: image.size)


def png(size=(20, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


def line(*sizes, top_k: int | None = None) -> bytes:
    """One JSON Lines request with an image of each size."""
    payload: dict = {"instances": [{"b64": base64.b64encode(png(size)).decode()} for size in sizes]}
    return json.dumps(payload | ({"top_k": top_k} if top_k else {})).encode()


GOOD = line((20, 10))


# --- the codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [*codecs.JSON_LINES_TYPES, "Application/JSONLines; charset=utf-8"])
def test_each_line_is_one_json_request_in_order(content_type):
    body = line((20, 10)) + b"\n" + line((30, 10), (40, 10), top_k=2) + b"\n"
    decoded = codecs.decode(body, content_type, OPTIONS)
    assert decoded.inputs == [(20, 10), (30, 10), (40, 10)]
    assert decoded.lines == [(1, None), (2, 2)] and decoded.media_type == codecs.JSON_LINES


def test_crlf_and_a_last_line_without_newline():
    assert codecs.decode(GOOD + b"\r\n" + GOOD, "application/jsonlines", OPTIONS).lines == [(1, None), (1, None)]


@pytest.mark.parametrize(
    "second,status,words",
    [
        (b"{bad", 400, "line 2: invalid JSON"),
        (b"", 400, "line 2: empty"),
        (b"   ", 400, "line 2: empty"),
        (b'{"b64": "QQ=="}', 400, 'line 2: expected {"instances"'),
        (b"[1, 2]", 400, 'line 2: expected {"instances"'),
        (b'{"instances": ["x"]}', 400, "line 2: instances[0] must be"),
        (line((20, 10), top_k=-1), 400, "line 2: top_k must be a positive integer"),
        (b'{"instances": [{"b64": "***"}]}', 400, "line 2: instances[0].b64 is not valid base64"),
        (json.dumps({"instances": [{"b64": "eHg="}]}).encode(), 400, "line 2: instances[0] is not a readable image"),
        (line(*[(5, 5)] * 5), 400, "line 2: too many images: 5 > 4 per request"),
        (line((200, 100)), 413, "line 2: instances[0]: image of 200x100 pixels exceeds"),
        (b"[" * 100_000, 400, "line 2: invalid JSON: nested too deeply"),
    ],
)
def test_a_bad_line_fails_the_whole_request_with_its_line_number(second, status, words):
    with pytest.raises(RequestError) as err:
        codecs.decode(GOOD + b"\n" + second + b"\n" + GOOD, "application/jsonlines", OPTIONS)
    assert err.value.status == status and err.value.reason.startswith(words), err.value.reason
    assert "\n" not in err.value.reason


def test_a_body_of_only_a_newline_is_an_empty_first_line():
    with pytest.raises(RequestError) as err:
        codecs.decode(b"\n", "application/x-ndjson", OPTIONS)
    assert err.value.status == 400 and err.value.reason.startswith("line 1: empty")


def test_every_line_is_checked_before_any_image_is_decoded():
    decoded = []
    options = dataclasses.replace(OPTIONS, prepare=decoded.append)
    with pytest.raises(RequestError, match="line 3: invalid JSON"):
        codecs.decode(GOOD + b"\n" + GOOD + b"\nnot json", "application/jsonlines", options)
    assert decoded == []


def test_the_image_count_and_pixel_budgets_hold_across_lines():
    with pytest.raises(RequestError) as err:
        codecs.decode(b"\n".join([line((5, 5), (5, 5))] * 3), "application/jsonlines", OPTIONS)
    assert err.value.status == 400 and "too many images: 6 > 4 per request, all lines together" in err.value.reason
    assert "SERVE_MAX_IMAGES" in err.value.reason
    with pytest.raises(RequestError) as err:  # 3 x 10,000 pixels > 25,000
        codecs.decode(b"\n".join([line((100, 100))] * 3), "application/jsonlines", OPTIONS)
    assert err.value.status == 413
    assert err.value.reason == "line 3: instances[0]: the images of one request may have 25000 pixels together"
    assert codecs.decode(b"\n".join([line((100, 100))] * 2), "application/jsonlines", OPTIONS).lines == [(1, None)] * 2


@pytest.mark.parametrize("accept", [None, "application/jsonlines", "application/x-ndjson", "*/*", "text/html, */*"])
def test_a_json_lines_request_accepts_json_lines(accept):
    codecs.check_accept(accept, "application/jsonlines")


@pytest.mark.parametrize(
    "accept,content_type,produced",
    [("application/json", "application/jsonlines", "application/jsonlines"), ("application/jsonlines", "image/png",
     "application/json"), ("text/csv", "application/jsonl", "application/jsonlines")],
)  # fmt: skip
def test_an_accept_that_excludes_the_answer_is_406(accept, content_type, produced):
    with pytest.raises(RequestError) as err:
        codecs.check_accept(accept, content_type)
    assert err.value.status == 406 and err.value.reason.endswith(f"answered in {produced}")


def test_encode_response_answers_one_line_per_input_line_in_order():
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    request = codecs.Request([None] * 3, top_k=None, lines=[(1, None), (2, 1)])
    text = codecs.encode_response(request, probabilities, ["a", "b", "c"], default_k=2)
    first, second = (json.loads(row) for row in text.split("\n"))  # no trailing newline: the job adds one
    assert [p["label"] for p in first["predictions"]] == ["b"] and len(first["predictions"][0]["top_k"]) == 2
    assert [p["label"] for p in second["predictions"]] == ["a", "c"]
    assert all(len(p["top_k"]) == 1 for p in second["predictions"])
    single = codecs.encode_response(codecs.Request([None], top_k=3), probabilities[:1], ["a", "b", "c"], 1)
    assert len(json.loads(single)["predictions"][0]["top_k"]) == 3


# --- the handler, with MMS's own context ----------------------------------------------------


service = service_fixture("auto")  # JSON Lines does not depend on the runtime (tests/test_handler.py runs both)


def test_the_handler_answers_json_lines_and_a_bad_body_alone_fails(service, small_model):
    lines = {"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"}
    context = mms_context(small_model, [lines, {"Content-Type": "application/jsonlines"}])
    good = line((40, 30)) + b"\n" + line((40, 30), (30, 40), top_k=1) + b"\n"
    bodies = service.handle([{"body": good}, {"body": GOOD + b"\n{}\n"}], context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [200, 400]
    assert context.get_response_content_type(0) == "application/jsonlines"
    assert context.get_response_content_type(1) == "application/json"  # errors stay one JSON object
    first, second = (json.loads(row) for row in bodies[0].split("\n"))
    assert len(first["predictions"]) == 1 and len(first["predictions"][0]["top_k"]) == 3
    assert len(second["predictions"]) == 2 and all(len(p["top_k"]) == 1 for p in second["predictions"])
    assert json.loads(bodies[1])["error"].startswith("line 2: ")


# --- GET /execution-parameters --------------------------------------------------------------


def settings(**changes) -> Settings:
    return dataclasses.replace(Settings.from_env(), **changes)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"workers": 1, "max_payload_mb": 6}, (1, 6)),
        ({"workers": 4, "max_payload_mb": 6}, (4, 6)),
        ({"workers": 8, "max_payload_mb": 20}, (5, 20)),  # 5 x 20 MB: batch transform's 100 MB for both
        ({"workers": 3, "max_payload_mb": 0}, (1, 100)),  # 0: chunked bodies up to batch transform's 100 MB
        ({"workers": 2, "max_payload_mb": 1024}, (1, 100)),  # async inference's size, capped for batch
    ],
)
def test_execution_parameters(changes, expected):
    concurrency, payload = expected
    answer = gateway.execution_parameters(settings(**changes))
    assert answer == {"MaxConcurrentTransforms": concurrency, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": payload}


def test_the_gateway_serves_execution_parameters_in_single_model_mode(tmp_path):
    single = gateway.Gateway(settings(workers=2, max_payload_mb=6), Registry(settings(), tmp_path, tmp_path, 0, None))
    expected = {"MaxConcurrentTransforms": 2, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}
    status, answer = call_app(single, "GET", "/execution-parameters")
    assert (status, json.loads(answer)) == (200, expected)
    assert call_app(single, "HEAD", "/execution-parameters")[0] == 200
    status, answer = call_app(single, "POST", "/execution-parameters", b"{}")
    assert status == 405 and json.loads(answer)["error"] == "POST is not allowed here; use GET or HEAD"
    multi = gateway.Gateway(settings(multi_model=True), Registry(settings(), tmp_path, tmp_path, 0, None))
    assert call_app(multi, "GET", "/execution-parameters")[0] == 404


# --- SDK v2 local mode (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def model_tar(small_model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("transform-model") / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in (*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE):  # model.onnx for ONNX Runtime
            tar.add(small_model / name, arcname=name)
    return f"file://{path}"


@pytest.fixture
def sdk_session(images, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    session = local.local_session(tmp_path / "container_root")
    transform.serving_port(session, free_port())  # 8080 may be another local endpoint's
    yield session
    local.cleanup(session)
    assert not local.containers(tmp_path / "container_root")


def recorded(session, monkeypatch) -> tuple[list[dict], list[bytes]]:
    """What the SDK reads from /execution-parameters, and each request body it sends."""
    import sagemaker.local.entities as entities

    parameters, bodies = [], []
    perform, invoke = entities._perform_request, session.sagemaker_runtime_client.invoke_endpoint

    def perform_request(url, *args):
        response, code = perform(url, *args)
        if url.endswith("/execution-parameters") and code == 200:
            parameters.append(json.loads(response.data))
        return response, code

    def invoke_endpoint(body, *args, **kwargs):
        bodies.append(body.encode() if isinstance(body, str) else body)
        return invoke(body, *args, **kwargs)

    monkeypatch.setattr(entities, "_perform_request", perform_request)
    monkeypatch.setattr(session.sagemaker_runtime_client, "invoke_endpoint", invoke_endpoint)
    return parameters, bodies


@pytest.mark.slow
@pytest.mark.parametrize("content_type,pattern", [("application/x-image", "*_00[2-3].*"), ("image/jpeg", "*_000.jpg")])
def test_transformer_on_a_folder_of_images(sdk_session, sample_data, model_tar, tmp_path, content_type, pattern):
    (tmp_path / "in").mkdir()  # flat: SDK v2 local mode reads only the files directly in the folder
    for path in sorted((sample_data / "test").glob(f"[bc]*/{pattern}")):  # ball, box, cone; png and jpg
        shutil.copy(path, tmp_path / "in" / path.name)
    names = sorted(f"{p.name}.out" for p in (tmp_path / "in").iterdir())
    job = transform.transformer(
        SERVING_IMAGE, model_tar, tmp_path / "out", session=sdk_session, strategy="SingleRecord"
    )
    transform.transform_images(job, tmp_path / "in", content_type)
    outputs = transform.read_outputs(tmp_path / "out")
    assert sorted(outputs) == names and len(names) >= 3
    for answers in outputs.values():
        (answer,) = answers
        assert answer["predictions"][0]["label"] in {"ant", "bee", "cat"}, answer


def noise_png(seed: int, side: int = 260) -> bytes:
    """An incompressible PNG of about 200 KB (its JSON line about 270 KB)."""
    out = io.BytesIO()
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=generator)
    Image.fromarray(pixels.numpy()).save(out, "PNG")
    return out.getvalue()


@pytest.mark.slow
def test_transformer_on_json_lines_multi_record_uses_the_containers_parameters(sdk_session, model_tar, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    requests = [{"instances": [{"b64": base64.b64encode(noise_png(i)).decode()}], "top_k": 1 + i % 3} for i in range(5)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    parameters, bodies = recorded(sdk_session, monkeypatch)
    job = transform.transformer(  # no strategy, no max_payload: the container's; its payload limit is 1 MB
        SERVING_IMAGE, model_tar, tmp_path / "out", session=sdk_session, assemble_with="Line",
        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"},
    )  # fmt: skip
    transform.transform_lines(job, tmp_path / "in")
    assert parameters == [{"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 1}]
    described = sdk_session.sagemaker_client.describe_transform_job(job.latest_transform_job.name)
    assert described["BatchStrategy"] == "MultiRecord"
    assert len(bodies) >= 2 and max(b.count(b"\n") for b in bodies) >= 2  # several lines per request
    assert all(len(b) < 1 << 20 for b in bodies) and sum(b.count(b"\n") for b in bodies) == 5
    (answers,) = transform.read_outputs(tmp_path / "out").values()
    assert [len(a["predictions"][0]["top_k"]) for a in answers] == [r["top_k"] for r in requests]  # in order


@pytest.mark.slow
def test_transformer_on_json_lines_single_record_answers_a_bad_line_alone(sdk_session, sample_data, model_tar,
                                                                          tmp_path, monkeypatch):  # fmt: skip
    images = sorted((sample_data / "test").glob("*/*_001.*"))[:3]
    lines = [transform.jsonl_line(path) for path in images]
    lines.insert(2, '{"instances": []}')
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "batch.jsonl").write_text("\n".join(lines) + "\n")
    _, bodies = recorded(sdk_session, monkeypatch)
    job = transform.transformer(
        SERVING_IMAGE, model_tar, tmp_path / "out", session=sdk_session, strategy="SingleRecord",
        assemble_with="Line", accept="application/jsonlines",
    )  # fmt: skip
    transform.transform_lines(job, tmp_path / "in")
    assert len(bodies) == 4
    (answers,) = transform.read_outputs(tmp_path / "out").values()
    assert ["predictions" in a for a in answers] == [True, True, False, True]
    assert answers[2]["status"] == 400 and answers[2]["error"].startswith("line 1: expected")
