"""The MMS handler (``serve.handler:handle``): artifact → model → batched predictions.

The forward pass runs on ONNX Runtime or PyTorch (``serve.runtimes``); everything else here
is numpy and Pillow, so the CPU serving image needs no torch.

MMS's worker calls ``handle(None, context)`` once when it loads the model (a failure there
propagates to ``serve.workers``, which reports it: unlike a handler class whose
``initialize`` errors MMS swallows), then ``handle(requests, context)`` with each batch that
``serve.workers`` formed from the requests queued for the model. All images of all requests
in a call go through the model as one batch; each request gets its own status: a bad request
is a 4xx with a one-line JSON reason and never takes the others down.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
from PIL import Image

import model_artifact
from serve import codecs, mms, runtimes, script_service
from serve.codecs import first_line
from serve.settings import Settings, log_level

log = logging.getLogger("serve.handler")


class ClassifierService:
    """One model copy on one device, with its preprocessing and class names."""

    def __init__(self) -> None:
        self.model: runtimes.OnnxModel | runtimes.TorchModel | None = None
        self.meta: model_artifact.Metadata | None = None

    def initialize(self, model_dir: str, gpu_id: int | None, settings: Settings) -> None:
        """Load the artifact on this worker's runtime and device and run a warm-up prediction."""
        self.settings = settings
        started = time.perf_counter()
        self.model, self.meta = runtimes.load(
            model_dir, gpu_id, settings.runtime, settings.threads, settings.precision, settings.int8_max_drop
        )
        self.transform = model_artifact.ArrayTransform(self.meta.preprocessing)
        self.options = codecs.DecodeOptions(
            settings.max_images,
            settings.max_pixels,
            self.meta.preprocessing.resize_size,
            settings.max_request_pixels,
            prepare=self.transform,
        )
        self.predict([self.transform(Image.new("RGB", (self.meta.preprocessing.resize_size,) * 2, (128, 128, 128)))])
        log.info(
            "model %s (%d classes) ready on %s in %.1f s", self.meta.architecture, self.meta.num_classes,
            self.model.name, time.perf_counter() - started,
        )  # fmt: skip

    def predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Class probabilities of preprocessed ``inputs`` (one forward pass)."""
        return self.model.predict(np.stack(inputs))

    def handle(self, requests: list[dict], context) -> list[str]:
        """One response body per request; statuses and content types set on ``context``.

        Nothing escapes: a client's mistake is its request's 4xx, our own fault a 500 for the
        requests it touched, each with a one-line reason, and the worker keeps serving.
        """
        try:
            return self._handle(requests, context)
        except Exception:
            log.exception("handling a batch of %d requests failed", len(requests))
            return [
                self._error(context, i, 500, "internal error; see the endpoint's log") for i in range(len(requests))
            ]

    def _handle(self, requests: list[dict], context) -> list[str]:
        if len(requests) > 1:
            log.info("batch of %d requests", len(requests))
        bodies: list[str | None] = [None] * len(requests)
        decoded: dict[int, codecs.Request] = {}
        for idx, request in enumerate(requests):
            context.set_response_content_type(idx, codecs.JSON)
            headers = mms.request_headers(context, idx)
            try:
                codecs.check_accept(headers.get("accept"), headers.get("content-type"))
                body = request.get("body") if isinstance(request, dict) else None
                decoded[idx] = codecs.read_answer_options(
                    codecs.decode(body, headers.get("content-type"), self.options),
                    headers.get("accept"), headers.get(codecs.CUSTOM_ATTRIBUTES),
                )  # fmt: skip
            except codecs.RequestError as exc:
                bodies[idx] = self._error(context, idx, exc.status, exc.reason)
        if decoded:
            self._predict_all(decoded, bodies, context)
        return bodies

    def _predict_all(self, decoded: dict[int, codecs.Request], bodies: list, context) -> None:
        inputs = [tensor for request in decoded.values() for tensor in request.inputs]
        try:
            probabilities = self.predict(inputs)
        except Exception as exc:
            log.exception("prediction failed for a batch of %d images", len(inputs))
            if self.model.is_broken(exc):
                _exit_worker(f"the GPU failed ({first_line(exc)}): this worker exits so that /ping tells")
            for idx in decoded:
                bodies[idx] = self._error(context, idx, 500, "prediction failed; see the endpoint's log")
            return
        start = 0
        for idx, request in decoded.items():
            rows = probabilities[start : start + len(request.inputs)]
            start += len(request.inputs)
            bodies[idx] = codecs.encode_response(request, rows, self.meta.class_names, self.settings.top_k)
            context.set_response_content_type(idx, request.media_type)

    @staticmethod
    def _error(context, idx: int, status: int, reason: str) -> str:
        log.info("request %d rejected with %d: %s", idx, status, reason)
        context.set_response_status(status, codecs.reason_phrase(reason), idx=idx)
        return codecs.encode_error(status, reason)


def _service_for_this_worker():
    """Script mode's service where the server staged a user's code (``SAGEMAKER_PROGRAM``), else ours."""
    return script_service.ScriptService() if script_service.enabled() else ClassifierService()


_service = _service_for_this_worker()


def _exit_worker(reason: str) -> None:
    """End this worker at once: the server sees it die, /ping says unhealthy, and a new one starts."""
    log.critical("%s", reason)
    logging.shutdown()
    os._exit(1)


def handle(data, context):
    """The MMS entry point."""
    if data is None:  # model load
        logging.basicConfig(level=log_level(), stream=sys.stdout)
        props = context.system_properties  # a failure propagates: MMS answers the load command with it
        _service.initialize(props.get("model_dir"), props.get("gpu_id"), Settings.from_env())
        return None
    return _service.handle(data, context)


def preflight(model_dir: str) -> str:
    """Load and warm up the model once, outside MMS; returns a summary or raises."""
    service = _service_for_this_worker()
    service.initialize(model_dir, None, Settings.from_env())
    if isinstance(service, ClassifierService):
        return f"{service.meta.architecture} with {service.meta.num_classes} classes on {service.model.name}"
    return service.summary  # SAGEMAKER_PROGRAM: the user's model_fn loaded it


if __name__ == "__main__":  # python -m serve.handler MODEL_DIR: the server's pre-flight check
    try:
        summary = preflight(sys.argv[1])
        print(f"pre-flight: {summary}" if script_service.enabled() else f"pre-flight: {summary} loads and predicts")
    except Exception as exc:
        print(f"pre-flight: the model in {sys.argv[1]} cannot serve: {exc}", file=sys.stderr)
        sys.exit(1)
