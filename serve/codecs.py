"""Request bodies → images, predictions → response bodies; bad input → ``RequestError``.

Accepted content types:

- ``image/jpeg``, ``image/png``, ``image/webp``, ``application/x-image`` (and any other
  ``image/*`` Pillow reads): the body is one image;
- ``application/json``: ``{"instances": [{"b64": "<base64 image>"}, ...], "top_k": 3}``
  (``top_k`` optional): several images, predicted as one batch;
- ``application/jsonlines`` (and its aliases, ``JSON_LINES_TYPES``): one such JSON request per
  line (batch transform with ``SplitType=Line``). The answer has one JSON line per input line,
  in order. A bad line makes the whole request a 4xx whose reason starts with ``line N:``;
  the image count and pixel budgets hold for all lines of a body together.

``top_k`` may also come as SageMaker custom attributes (``CustomAttributes="top_k=3"``,
the ``X-Amzn-SageMaker-Custom-Attributes`` header). The response is always JSON:
``{"predictions": [{"label": ..., "probability": ..., "top_k": [{"label", "probability"}]}]}``.
With ``probabilities=all`` (a custom attribute, or a parameter of the Accept header:
``application/json; probabilities=all``) each prediction also carries ``"probabilities"``:
every class's probability in class order, what SageMaker Clarify's image explainability reads.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

import model_artifact

JSON = "application/json"
JSON_LINES = "application/jsonlines"
JSON_LINES_TYPES = (
    JSON_LINES, "application/jsonl", "application/json-lines", "application/x-jsonlines",
    "application/x-ndjson", "application/ndjson",
)  # fmt: skip
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image")
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
ADDRESS = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # e.g. Pillow's "<_io.BytesIO object at 0x7f...>"


class RequestError(Exception):
    """A client error: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DecodeOptions:
    """What one request may carry, the decoder's draft size (as in training evaluation), and
    ``prepare``: what each image becomes as soon as it is decoded (the model's input tensor),
    so that only one full-size image is held at a time."""

    max_images: int
    max_pixels: int
    draft_size: int | None = None
    max_request_pixels: int | None = None
    prepare: Callable[[Image.Image], Any] = lambda image: image


@dataclass
class Request:
    """A decoded request: one prepared input per image, and the asked-for ``top_k`` (None: default).

    ``lines``: for JSON Lines, each line's number of images and its own ``top_k``, in order.
    """

    inputs: list
    top_k: int | None = None
    lines: list[tuple[int, int | None]] | None = None
    all_probabilities: bool = False  # every class's probability too, in class order

    @property
    def media_type(self) -> str:
        """The content type of the answer."""
        return JSON if self.lines is None else JSON_LINES


def media_type(header: str | None) -> str:
    """``image/JPEG; charset=x`` → ``image/jpeg``; missing → ``""``."""
    return (header or "").split(";")[0].strip().lower()


def check_accept(accept: str | None, content_type: str | None = None) -> None:
    """The answer is JSON (JSON Lines to a JSON Lines request): an Accept that excludes it is a 406."""
    produced = JSON_LINES_TYPES if media_type(content_type) in JSON_LINES_TYPES else (JSON,)
    wanted = [media_type(part) for part in (accept or "").split(",") if part.strip()]
    if wanted and not any(w in (*produced, "*/*", "application/*") for w in wanted):
        raise RequestError(406, f"cannot produce {accept!r}; this request is answered in {produced[0]}")


def decode(body: bytes | bytearray | None, content_type: str | None, options: DecodeOptions) -> Request:
    """Decode one request body by its content type."""
    if not body:
        raise RequestError(400, "empty request body: send an image or JSON instances")
    kind = media_type(content_type)
    if kind == JSON:
        return _decode_json(bytes(body), options)
    if kind in JSON_LINES_TYPES:
        return _decode_json_lines(bytes(body), options)
    if kind in IMAGE_TYPES or kind.startswith("image/"):
        return Request([_decode_image(bytes(body), options, "the body", options.max_request_pixels)[0]])
    accepted = f"{', '.join(IMAGE_TYPES)}, {JSON} or {JSON_LINES}"
    raise RequestError(415, f"unsupported content type {content_type!r}; send {accepted}")


def _decode_json(body: bytes, options: DecodeOptions) -> Request:
    """``{"instances": [...], "top_k": k}``: every check passes before any image is decoded."""
    instances, top_k = _parse_request(body, options, "")
    return Request(_decode_instances(instances, options), top_k)


def _decode_json_lines(body: bytes, options: DecodeOptions) -> Request:
    """One JSON request per line; reasons name the line (1-based, within this body). The image
    count and pixel budgets hold for all lines together; no image is decoded before every line
    has passed its checks."""
    parsed = []
    for number, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            raise RequestError(400, f"line {number}: empty; each line must be one JSON request")
        parsed.append(_parse_request(line, options, f"line {number}: "))
    total = sum(len(instances) for instances, _ in parsed)
    if total > options.max_images:
        raise RequestError(
            400, f"too many images: {total} > {options.max_images} per request, all lines together "
            "(send fewer lines per request, or raise SERVE_MAX_IMAGES)",
        )  # fmt: skip
    instances = [instance for line_instances, _ in parsed for instance in line_instances]
    return Request(_decode_instances(instances, options), lines=[(len(i), k) for i, k in parsed])


def _parse_request(body: bytes, options: DecodeOptions, prefix: str) -> tuple[list[tuple[str, str]], int | None]:
    """One JSON request's images as (where, base64 text), checked but not decoded, and its top_k."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestError(400, f"{prefix}invalid JSON: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"{prefix}invalid JSON: {exc}") from None
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, f'{prefix}expected {{"instances": [{{"b64": "<base64 image>"}}, ...]}}')
    if len(instances) > options.max_images:
        raise RequestError(400, f"{prefix}too many images: {len(instances)} > {options.max_images} per request")
    try:
        top_k = parse_top_k(payload.get("top_k"))  # a bad top_k fails before any image is decoded
    except RequestError as exc:
        raise RequestError(exc.status, f"{prefix}{exc.reason}") from None
    checked = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
            raise RequestError(400, f'{prefix}instances[{i}] must be {{"b64": "<base64 image>"}}')
        checked.append((f"{prefix}instances[{i}]", instance["b64"]))
    return checked, top_k


def _decode_instances(instances: list[tuple[str, str]], options: DecodeOptions) -> list:
    """Base64 → image → prepared input, one at a time, within the request's pixel budget."""
    inputs, budget = [], options.max_request_pixels
    for where, text in instances:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{where}.b64 is not valid base64") from None
        prepared, pixels = _decode_image(data, options, where, budget)
        inputs.append(prepared)
        if budget is not None:
            budget -= pixels
    return inputs


def _decode_image(data: bytes, options: DecodeOptions, where: str, budget: int | None):
    """(prepared input, decoded pixels) of one image; client errors become ``RequestError``."""
    limit = options.max_pixels if budget is None else min(options.max_pixels, budget)
    try:
        image = model_artifact.decode_image(data, options.draft_size, limit)
        return options.prepare(image), image.width * image.height
    except Image.DecompressionBombError as exc:
        if limit < options.max_pixels:
            reason = f"the images of one request may have {options.max_request_pixels} pixels together"
            raise RequestError(413, f"{where}: {reason}") from None
        raise RequestError(413, f"{where}: {exc}") from None
    except MemoryError:
        raise RequestError(413, f"{where} is too large to decode") from None
    except Exception as exc:  # Pillow raises many types on hostile bytes: all are the client's
        raise RequestError(400, f"{where} is not a readable image: {first_line(exc)}") from None


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (or of a text), shortened, without
    object addresses; an exception without a message is named by its type. The one way every
    part of serving turns an error into a one-line reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = ADDRESS.sub("", lines[0]).strip() if lines else ""
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text[:limit]


def parse_top_k(value) -> int | None:
    """A positive integer, or None when absent."""
    if value is None:
        return None
    try:
        k = int(value)
    except (TypeError, ValueError, OverflowError):
        k = 0
    if k < 1 or str(value).strip() not in (str(k), f"{k}.0"):
        raise RequestError(400, f"top_k must be a positive integer, got {value!r}")
    return k


def read_answer_options(request: Request, accept: str | None, attributes: str | None) -> Request:
    """What the headers ask of the answer: ``top_k`` (custom attributes; the body's wins) and
    ``probabilities=all`` (custom attributes, or an Accept parameter)."""
    attribute_k = top_k_from_attributes(attributes)  # a bad one is a 400 even when the body has its own
    request.top_k = request.top_k or attribute_k
    asked = [item.strip().replace(" ", "") for item in (attributes or "").split(",")]
    asked += [param.strip().replace(" ", "") for part in (accept or "").split(",") for param in part.split(";")[1:]]
    request.all_probabilities = "probabilities=all" in asked
    return request


def top_k_from_attributes(header: str | None) -> int | None:
    """``top_k`` from SageMaker custom attributes (``a=1,top_k=3``)."""
    for item in (header or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "top_k":
            return parse_top_k(value.strip())
    return None


def as_array(probabilities) -> np.ndarray:
    """Probabilities as a 2-D float numpy array (a torch tensor from script mode is moved to the CPU)."""
    if hasattr(probabilities, "detach"):
        probabilities = probabilities.detach().float().cpu().numpy()
    return np.asarray(probabilities)


def encode_predictions(probabilities, class_names: list[str], k: int, all_probabilities: bool = False) -> str:
    """JSON of the top-``k`` labels (class folder names, exactly as trained), names and probabilities of each
    row of ``probabilities`` (numpy, or a torch tensor); ties go to the lower class index.
    ``all_probabilities``: each row's every probability too, in class order."""
    rows = as_array(probabilities)
    indices = np.argsort(-rows, axis=1, kind="stable")[:, : min(k, len(class_names))]
    values = np.take_along_axis(rows, indices, axis=1)
    predictions = []
    for row, row_values, row_indices in zip(rows.tolist(), values.tolist(), indices.tolist(), strict=True):
        top = [
            {"label": class_names[i], "name": model_artifact.display_name(class_names[i]), "probability": round(p, 6)}
            for p, i in zip(row_values, row_indices, strict=True)
        ]
        every = {"probabilities": [round(p, 6) for p in row]} if all_probabilities else {}
        predictions.append(top[0] | {"top_k": top} | every)
    return json.dumps({"predictions": predictions})


def encode_response(request: Request, probabilities, class_names: list[str], default_k: int) -> str:
    """The answer to a decoded request: one JSON object, or for JSON Lines one object per input
    line, in order, joined by newlines (no trailing newline: batch transform adds one)."""
    if request.lines is None:
        return encode_predictions(probabilities, class_names, request.top_k or default_k, request.all_probabilities)
    answers, start, probabilities = [], 0, as_array(probabilities)
    for count, k in request.lines:
        rows = probabilities[start : start + count]
        k = k or request.top_k or default_k
        answers.append(encode_predictions(rows, class_names, k, request.all_probabilities))
        start += count
    return "\n".join(answers)


def reason_phrase(reason: str) -> str:
    """``reason`` as an HTTP reason phrase: one line of printable ASCII, at most 200 characters."""
    text = " ".join(reason.split())[:200].encode("ascii", "replace").decode()
    return "".join(c if c.isprintable() else "?" for c in text)


def encode_error(status: int, reason: str) -> str:
    """The one-line JSON body of an error response."""
    return json.dumps({"error": reason, "status": status})
