"""``code/inference.py`` of every model.tar.gz this project trains: it serves the artifact
unchanged on AWS's PyTorch inference container (sagemaker-pytorch-inference).

That container imports this module and calls ``model_fn``, ``input_fn``, ``predict_fn`` and
``output_fn``. They use the copies of ``model_artifact.py`` and of the serving codecs
(``byoc_codecs.py``) written beside it, so the answers are ours: the same decoding, bounds,
preprocessing and JSON. Needs Python 3.10+, torchvision 0.16+ and Pillow (all in AWS's
PyTorch 2.x inference images). Our own image ignores this folder unless the deployer sets
``SAGEMAKER_PROGRAM``. Settings come from the same variables as ours: ``SERVE_TOP_K``,
``SERVE_MAX_IMAGES``, ``SERVE_MAX_PIXELS``, ``SERVE_MAX_REQUEST_PIXELS``.
"""

from __future__ import annotations

import contextlib
import os

import byoc_codecs as codecs
import torch

import model_artifact

try:  # in AWS's containers: an error that keeps its HTTP status
    from sagemaker_inference.errors import GenericInferenceToolkitError
except ImportError:  # pragma: no cover - elsewhere the codecs' own error is raised
    GenericInferenceToolkitError = None

_loaded: dict = {}  # model_fn's metadata and decoding options, for the functions that get no model


def _setting(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


@contextlib.contextmanager
def _client_errors():
    """The codecs' client errors (400, 406, 413, 415) as errors sagemaker-inference answers with their status."""
    try:
        yield
    except codecs.RequestError as exc:
        if GenericInferenceToolkitError is None:
            raise
        raise GenericInferenceToolkitError(exc.status, exc.reason) from None


def _header(context, name: str) -> str | None:
    try:
        headers = context.get_all_request_header(0) or {}
    except AttributeError:  # no context, or one without headers
        return None
    return next((str(v) for k, v in headers.items() if str(k).lower() == name), None)


def model_fn(model_dir: str) -> torch.nn.Module:
    """The artifact: checksum checked, weights loaded with ``weights_only=True``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = model_artifact.load(model_dir, device)
    prep = meta.preprocessing
    _loaded["meta"] = meta
    _loaded["options"] = codecs.DecodeOptions(
        _setting("SERVE_MAX_IMAGES", model_artifact.MAX_IMAGES),
        _setting("SERVE_MAX_PIXELS", model_artifact.MAX_IMAGE_PIXELS),
        prep.resize_size,
        _setting("SERVE_MAX_REQUEST_PIXELS", model_artifact.MAX_REQUEST_PIXELS),
        prepare=model_artifact.eval_transform(prep),
    )
    return model


def input_fn(input_data: bytes | str, content_type: str, context=None) -> codecs.Request:
    """An image body, or JSON ``{"instances": [{"b64": ...}], "top_k": k}``, as our server takes them."""
    body = input_data.encode("utf-8") if isinstance(input_data, str) else bytes(input_data)
    with _client_errors():
        request = codecs.decode(body, content_type, _loaded["options"])
        codecs.read_answer_options(request, _header(context, "accept"), _header(context, codecs.CUSTOM_ATTRIBUTES))
    return request


@torch.inference_mode()
def predict_fn(request: codecs.Request, model: torch.nn.Module) -> tuple[codecs.Request, torch.Tensor]:
    """All images of the request in one forward pass: class probabilities."""
    device = next(model.parameters()).device
    probabilities = model(torch.stack(request.inputs).to(device)).float().softmax(dim=1).cpu()
    return request, probabilities


def output_fn(prediction: tuple[codecs.Request, torch.Tensor], accept: str) -> tuple[str, str]:
    """Our JSON answer (JSON Lines to a JSON Lines request) and its content type."""
    request, probabilities = prediction
    with _client_errors():
        if request.lines is None:  # the container turns a missing Accept into JSON
            codecs.check_accept(accept)
        top_k = _setting("SERVE_TOP_K", model_artifact.DEFAULT_TOP_K)
        body = codecs.encode_response(request, probabilities, _loaded["meta"].class_names, top_k)
    return body, request.media_type
