"""Request decoding and response encoding, without a server."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from serve import codecs
from serve.codecs import DecodeOptions, RequestError

OPTIONS = DecodeOptions(max_images=3, max_pixels=10_000)


def encoded(fmt: str = "PNG", size=(20, 10), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 200 if mode == "L" else (200, 10, 10)).save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "content_type,fmt",
    [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/webp", "WEBP"), ("application/x-image", "PNG"),
     ("image/bmp", "BMP"), ("IMAGE/JPEG; charset=binary", "JPEG")],
)  # fmt: skip
def test_image_bodies(content_type, fmt):
    request = codecs.decode(encoded(fmt), content_type, OPTIONS)
    assert len(request.inputs) == 1 and request.inputs[0].mode == "RGB" and request.top_k is None


def test_json_instances_and_top_k():
    body = json.dumps({"instances": [{"b64": b64(encoded())}, {"b64": b64(encoded("JPEG", mode="L"))}], "top_k": 2})
    request = codecs.decode(body.encode(), "application/json", OPTIONS)
    assert len(request.inputs) == 2 and request.top_k == 2


@pytest.mark.parametrize(
    "body,content_type,status,words",
    [
        (b"", "image/png", 400, "empty request body"),
        (b"hello", "text/csv", 415, "unsupported content type 'text/csv'"),
        (b"hello", None, 415, "unsupported content type None"),
        (b"not an image", "image/png", 400, "the body is not a readable image"),
        (b"{bad json", "application/json", 400, "invalid JSON"),
        (b'{"images": []}', "application/json", 400, '{"instances": [{"b64"'),
        (b'{"instances": []}', "application/json", 400, '{"instances": [{"b64"'),
        (b'{"instances": ["abc"]}', "application/json", 400, "instances[0] must be"),
        (b'{"instances": [{"b64": "***"}]}', "application/json", 400, "instances[0].b64 is not valid base64"),
        (json.dumps({"instances": [{"b64": b64(b"xx")}]}).encode(), "application/json", 400, "instances[0] is not"),
        (json.dumps({"instances": [{"b64": "QQ=="}] * 4}).encode(), "application/json", 400, "too many images: 4 > 3"),
        (json.dumps({"instances": [{"b64": b64(encoded())}], "top_k": 0}).encode(), "application/json", 400, "top_k"),
        (encoded(size=(200, 100)), "image/png", 413, "exceeds the limit of 10000 pixels"),
    ],
)
def test_bad_requests(body, content_type, status, words):
    with pytest.raises(RequestError) as err:
        codecs.decode(body, content_type, OPTIONS)
    assert err.value.status == status and words in err.value.reason and "\n" not in err.value.reason


HOSTILE = [
    ("deep nesting", b"[" * 100_000, "application/json", 400, "nested too deeply"),
    ("huge float top_k", b'{"instances": [{"b64": "QQ=="}], "top_k": 1e999}', "application/json", 400, "top_k"),
    (
        "huge int top_k",
        b'{"instances": [{"b64": "QQ=="}], "top_k": 1' + b"0" * 4400 + b"}",
        "application/json",
        400,
        "",
    ),
    ("NaN top_k", b'{"instances": [{"b64": "QQ=="}], "top_k": NaN}', "application/json", 400, "top_k"),
    ("invalid UTF-8", b'{"instances": "\xff\xfe"}', "application/json", 400, "invalid JSON"),
    ("unidentified image", b"GIF89a" + b"\x00" * 40, "image/gif", 400, "not a readable image"),
]


@pytest.mark.parametrize("case,body,content_type,status,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_one_line_4xx_without_addresses(case, body, content_type, status, words):
    with pytest.raises(RequestError) as err:
        codecs.decode(body, content_type, OPTIONS)
    assert err.value.status == status and words in err.value.reason
    assert "\n" not in err.value.reason and " at 0x" not in err.value.reason


def test_any_decoder_exception_is_the_clients_400(monkeypatch):
    def explode(*_args, **_kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(codecs.model_artifact, "decode_image", explode)
    with pytest.raises(RequestError) as err:
        codecs.decode(encoded(), "image/png", OPTIONS)
    assert err.value.status == 400 and "unpack requires" in err.value.reason


def test_pillow_object_addresses_are_not_echoed():
    with pytest.raises(RequestError) as err:
        codecs.decode(b"\x00" * 64, "image/png", OPTIONS)
    assert "cannot identify image file" in err.value.reason and "0x" not in err.value.reason


def test_the_pixels_of_a_request_are_budgeted_and_each_image_is_prepared_at_once():
    options = DecodeOptions(max_images=10, max_pixels=10_000, max_request_pixels=25_000, prepare=lambda im: im.size)
    three = json.dumps({"instances": [{"b64": b64(encoded(size=(100, 100)))}] * 3}).encode()
    with pytest.raises(RequestError) as err:
        codecs.decode(three, "application/json", options)
    assert (
        err.value.status == 413 and "instances[2]" in err.value.reason and "25000 pixels together" in err.value.reason
    )
    two = json.dumps({"instances": [{"b64": b64(encoded(size=(100, 100)))}] * 2}).encode()
    assert codecs.decode(two, "application/json", options).inputs == [(100, 100), (100, 100)]


def test_truncated_image_is_a_400():
    data = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(data, "JPEG")
    with pytest.raises(RequestError) as err:
        codecs.decode(data.getvalue()[:300], "image/jpeg", OPTIONS)
    assert err.value.status == 400


@pytest.mark.parametrize("accept", [None, "", "application/json", "*/*", "application/json; q=0.9, text/html"])
def test_accept_that_we_can_answer(accept):
    codecs.check_accept(accept)


@pytest.mark.parametrize("accept", ["text/csv", "application/x-npy", "image/png, text/html"])
def test_accept_that_we_cannot_answer_is_406(accept):
    with pytest.raises(RequestError) as err:
        codecs.check_accept(accept)
    assert err.value.status == 406


def test_top_k_from_custom_attributes():
    assert codecs.top_k_from_attributes("trace=1,top_k=3") == 3
    assert codecs.top_k_from_attributes(None) is None
    with pytest.raises(RequestError):
        codecs.top_k_from_attributes("top_k=many")


def test_encode_predictions_caps_k_at_the_number_of_classes():
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])
    payload = json.loads(codecs.encode_predictions(probabilities, ["a", "b", "c"], k=10))
    first, second = payload["predictions"]
    assert (first["label"], first["probability"]) == ("b", pytest.approx(0.7))
    assert [p["label"] for p in first["top_k"]] == ["b", "c", "a"]
    assert second["label"] == "a" and len(second["top_k"]) == 3


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_numpy_and_torch_probabilities_give_the_same_json(kind):
    """ONNX Runtime answers numpy, a user's predict_fn in script mode may answer a torch tensor."""
    rows = [[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]
    probabilities = np.asarray(rows, np.float32) if kind == "numpy" else torch.tensor(rows, requires_grad=True)
    payload = json.loads(codecs.encode_predictions(probabilities, ["a", "b", "c"], k=2))
    assert [[p["label"] for p in row["top_k"]] for row in payload["predictions"]] == [["b", "c"], ["a", "b"]]
    assert payload["predictions"][0]["probability"] == pytest.approx(0.7)


def test_ties_go_to_the_lower_class_index():
    payload = json.loads(codecs.encode_predictions(np.full((1, 5), 0.2, np.float32), list("abcde"), k=3))
    (prediction,) = payload["predictions"]
    assert prediction["label"] == "a" and [p["label"] for p in prediction["top_k"]] == ["a", "b", "c"]
    payload = json.loads(codecs.encode_predictions(np.asarray([[0.1, 0.3, 0.3, 0.3]]), list("abcd"), k=2))
    assert [p["label"] for p in payload["predictions"][0]["top_k"]] == ["b", "c"]


def test_label_is_the_class_folder_name_exactly_and_name_is_for_people():
    payload = json.loads(codecs.encode_predictions(torch.tensor([[0.9, 0.1]]), ["class_2", "001.ak47"], k=2))
    first, second = payload["predictions"][0]["top_k"]
    assert (first["label"], first["name"]) == ("class_2", "class 2")
    assert (second["label"], second["name"]) == ("001.ak47", "ak47")


def test_error_body_is_one_line_json():
    body = codecs.encode_error(415, "unsupported content type 'x'")
    assert json.loads(body) == {"error": "unsupported content type 'x'", "status": 415} and "\n" not in body


@pytest.mark.parametrize(
    "accept,attributes,wanted",
    [(None, None, False), ("application/json; probabilities=all", None, True),
     (None, "top_k=2, probabilities=all", True), ("application/json", "probabilities=some", False),
     ("*/*;q=0.8, application/json;probabilities=all", "", True)],
)  # fmt: skip
def test_every_class_s_probability_in_class_order_when_asked(accept, attributes, wanted):
    request = codecs.read_answer_options(codecs.Request([]), accept, attributes)
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    answer = json.loads(codecs.encode_response(request, probabilities, ["a", "b", "c"], 1))
    first = answer["predictions"][0]
    assert first["label"] == "b" and len(first["top_k"]) == (2 if attributes and "top_k=2" in attributes else 1)
    if wanted:
        assert [p["probabilities"] for p in answer["predictions"]] == [[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]]
    else:
        assert "probabilities" not in first


def test_a_bad_top_k_attribute_is_a_400_even_when_the_body_has_its_own():
    with pytest.raises(RequestError) as err:
        codecs.read_answer_options(codecs.Request([], top_k=2), None, "top_k=abc")
    assert err.value.status == 400 and "top_k" in err.value.reason
    assert codecs.read_answer_options(codecs.Request([], top_k=2), None, "top_k=3").top_k == 2  # the body's wins
