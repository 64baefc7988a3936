"""The MMS handler (``serve.handler:handle``): artifact → model → batched predictions.

MMS calls ``handle(None, context)`` once when a worker loads the model (a failure there
propagates, unlike a handler class whose ``initialize`` errors MMS swallows), then
``handle(requests, context)`` with one or more requests (server-side batching). All images
of all requests in a call go through the model as one batch; each request gets its own
status: a bad request is a 4xx with a one-line JSON reason and never takes the others down.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import torch
from PIL import Image

import model_artifact
from serve import codecs
from serve.settings import Settings

log = logging.getLogger("serve.handler")
SERVER_PID_ENV = "SERVE_SERVER_PID"  # set by serve.server: a failed load stops the server


def _header(context, idx: int, name: str) -> str | None:
    headers = context.get_all_request_header(idx) or {}
    return next((v for k, v in headers.items() if str(k).lower() == name), None)


class ClassifierService:
    """One model copy on one device, with its preprocessing and class names."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.meta: model_artifact.Metadata | None = None

    def initialize(self, model_dir: str, gpu_id: int | None, settings: Settings) -> None:
        """Load the artifact on this worker's device and run a warm-up prediction."""
        self.settings = settings
        use_gpu = gpu_id is not None and torch.cuda.is_available()
        self.device = torch.device("cuda", int(gpu_id)) if use_gpu else torch.device("cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(settings.torch_threads)
        started = time.perf_counter()
        self.model, self.meta = model_artifact.load(model_dir, self.device)
        self.transform = model_artifact.eval_transform(self.meta.preprocessing)
        self.options = codecs.DecodeOptions(
            settings.max_images, settings.max_pixels, self.meta.preprocessing.resize_size
        )
        self.predict([Image.new("RGB", (self.meta.preprocessing.resize_size,) * 2, (128, 128, 128))])
        log.info(
            "model %s (%d classes) ready on %s in %.1f s", self.meta.architecture, self.meta.num_classes,
            self.device, time.perf_counter() - started,
        )  # fmt: skip

    @torch.inference_mode()
    def predict(self, images: list[Image.Image]) -> torch.Tensor:
        """Class probabilities of ``images`` (one forward pass)."""
        batch = torch.stack([self.transform(image) for image in images]).to(self.device)
        return self.model(batch).float().softmax(dim=1).cpu()

    def handle(self, requests: list[dict], context) -> list[str]:
        """One response body per request; statuses and content types set on ``context``."""
        if len(requests) > 1:
            log.info("batch of %d requests", len(requests))
        bodies: list[str | None] = [None] * len(requests)
        decoded: dict[int, codecs.Request] = {}
        for idx, request in enumerate(requests):
            context.set_response_content_type(idx, codecs.JSON)
            try:
                codecs.check_accept(_header(context, idx, "accept"))
                body = request.get("body") if isinstance(request, dict) else None
                decoded[idx] = codecs.decode(body, _header(context, idx, "content-type"), self.options)
                attribute_k = codecs.top_k_from_attributes(_header(context, idx, codecs.CUSTOM_ATTRIBUTES))
                decoded[idx].top_k = decoded[idx].top_k or attribute_k
            except codecs.RequestError as exc:
                bodies[idx] = self._error(context, idx, exc.status, exc.reason)
        if decoded:
            self._predict_all(decoded, bodies, context)
        return bodies

    def _predict_all(self, decoded: dict[int, codecs.Request], bodies: list, context) -> None:
        images = [image for request in decoded.values() for image in request.images]
        try:
            probabilities = self.predict(images)
        except Exception:
            log.exception("prediction failed for a batch of %d images", len(images))
            for idx in decoded:
                bodies[idx] = self._error(context, idx, 500, "prediction failed; see the endpoint's log")
            return
        start = 0
        for idx, request in decoded.items():
            rows = probabilities[start : start + len(request.images)]
            start += len(request.images)
            k = request.top_k or self.settings.top_k
            bodies[idx] = codecs.encode_predictions(rows, self.meta.class_names, k)

    @staticmethod
    def _error(context, idx: int, status: int, reason: str) -> str:
        log.info("request %d rejected with %d: %s", idx, status, reason)
        phrase = " ".join(reason.split())[:200].encode("ascii", "replace").decode()  # an HTTP reason phrase
        context.set_response_status(status, phrase, idx=idx)
        return codecs.encode_error(status, reason)


_service = ClassifierService()


def _stop_server(reason: str) -> None:
    """Single-model endpoint: a model that cannot load must stop the container, not idle."""
    pid = os.environ.get(SERVER_PID_ENV)
    if pid and os.environ.get("SAGEMAKER_MULTI_MODEL", "false").lower() != "true":
        log.error("stopping the server: %s", reason)
        os.kill(int(pid), signal.SIGUSR1)


def handle(data, context):
    """The MMS entry point."""
    if data is None:  # model load
        logging.basicConfig(level=os.environ.get("SERVE_LOG_LEVEL", "INFO").upper(), stream=sys.stdout)
        props = context.system_properties
        try:
            _service.initialize(props.get("model_dir"), props.get("gpu_id"), Settings.from_env())
        except Exception as exc:
            _stop_server(f"the model in {props.get('model_dir')} failed to load: {exc}")
            raise
        return None
    return _service.handle(data, context)


def preflight(model_dir: str) -> str:
    """Load and warm up the model once, outside MMS; returns a summary or raises."""
    service = ClassifierService()
    service.initialize(model_dir, None, Settings.from_env())
    return f"{service.meta.architecture} with {service.meta.num_classes} classes"


if __name__ == "__main__":  # python -m serve.handler MODEL_DIR: the server's pre-flight check
    try:
        print(f"pre-flight: {preflight(sys.argv[1])} loads and predicts")
    except Exception as exc:
        print(f"pre-flight: the model in {sys.argv[1]} cannot serve: {exc}", file=sys.stderr)
        sys.exit(1)
