"""Script mode's model service: the user's hooks over our defaults, one request at a time.

``serve.server`` turns script mode on (``SAGEMAKER_PROGRAM``) by exporting the staged code
folder in ``SERVE_SCRIPT_CODE_DIR``; ``serve.handler`` then uses this service instead of
``ClassifierService``. Requests follow sagemaker-inference's ``Transformer``: JSON and CSV
bodies reach a user's ``input_fn`` as ``str``, others as ``bytes``; an Accept of ``*/*`` or
none becomes ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` (JSON); an output may be ``(body,
content_type)``. Unlike it, each request gets its own status and content type, and errors are
one line: an exception with a 4xx/5xx ``status_code`` (``GenericInferenceToolkitError``)
keeps it, anything else is a 500 whose traceback goes to the log only; the worker lives.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

from PIL import Image

from serve import codecs, mms, user_module
from serve.settings import Settings

log = logging.getLogger("serve.script")
CODE_DIR_ENV = "SERVE_SCRIPT_CODE_DIR"  # the staged code folder; set by serve.server in script mode only
MODEL_DIR_ENV = "SERVE_SCRIPT_MODEL_DIR"  # the staged model folder (all of it) for model_fn
SITE_DIR_ENV = "SERVE_SCRIPT_SITE_DIR"  # where code/requirements.txt was installed
UTF8_TYPES = ("application/json", "text/csv")  # handed to a user's input_fn as str, as sagemaker-inference does


def enabled() -> bool:
    """Whether the server started this worker in script mode."""
    return bool(os.environ.get(CODE_DIR_ENV))


class ScriptService:
    """One model loaded by ``model_fn`` (the user's or ours), served through the other hooks."""

    def initialize(self, model_dir: str, gpu_id: int | None, settings: Settings, context=None) -> None:
        """Import the user's module, load the model, warm it up where our decoder makes an input."""
        started, self.context = time.perf_counter(), context
        import torch  # script mode runs on the PyTorch image only; the CPU image refuses it (serve.script_mode)

        from serve import script_defaults

        model_dir = os.environ.get(MODEL_DIR_ENV) or model_dir
        use_gpu = gpu_id is not None and torch.cuda.is_available()
        device = torch.device("cuda", int(gpu_id)) if use_gpu else torch.device("cpu")
        if device.type == "cpu":
            torch.set_num_threads(settings.threads)
        site_dir = Path(os.environ[SITE_DIR_ENV]) if os.environ.get(SITE_DIR_ENV) else None
        self.user = user_module.load(Path(os.environ[CODE_DIR_ENV]), settings.program, site_dir)
        self.defaults = script_defaults.Defaults(model_dir, settings, device)
        self.hooks = {name: self.user.get(name, getattr(self.defaults, name, None)) for name in user_module.HOOKS}
        self.default_accept = settings.default_accept or codecs.JSON
        if self.hooks["pre_model_fn"]:
            user_module.call(self.hooks["pre_model_fn"], model_dir, context=context)
        self.model = user_module.call(self.hooks["model_fn"], model_dir, context=context)
        warmed = self._warm_up(model_dir)
        ours = [h for h in ("model_fn", "input_fn", "predict_fn", "output_fn") if not self.user.defines(h)]
        self.summary = (
            f"script mode: {self.user.path.name} defines {', '.join(sorted(self.user.functions)) or 'no hook'}"
            f"{'; ours: ' + ', '.join(ours) if ours and not self.user.defines('transform_fn') else ''}; "
            f"model loaded{' and warmed up' if warmed else ''} in {time.perf_counter() - started:.1f} s"
        )
        log.info("%s", self.summary)

    def _warm_up(self, model_dir: str) -> bool:
        """The user's ``model_warmup_fn``, or one request through the hooks when our ``input_fn``
        decodes it (a user's input_fn may expect anything)."""
        if self.hooks["model_warmup_fn"]:
            user_module.call(self.hooks["model_warmup_fn"], model_dir, self.model, context=self.context)
            return True
        if self.user.defines("input_fn") or self.user.defines("transform_fn"):
            return False
        image = io.BytesIO()
        Image.new("RGB", (self.defaults.options.draft_size or 64,) * 2, (128, 128, 128)).save(image, "PNG")
        self.defaults.headers = {}
        data = user_module.call(self.hooks["input_fn"], image.getvalue(), "image/png", context=self.context)
        prediction = user_module.call(self.hooks["predict_fn"], data, self.model, context=self.context)
        user_module.call(self.hooks["output_fn"], prediction, self.default_accept, context=self.context)
        return True

    def handle(self, requests: list[dict], context) -> list:
        """One response body per request; statuses and content types set on ``context``."""
        return [self._handle_one(idx, request, context) for idx, request in enumerate(requests)]

    def _handle_one(self, idx: int, request: dict, context):
        headers = self.defaults.headers = mms.request_headers(context, idx)
        content_type = headers.get("content-type", "")
        accept = headers.get("accept", "").strip()
        accept = self.default_accept if accept in ("", "*/*") else accept
        body = bytes(request.get("body") or b"") if isinstance(request, dict) else b""
        self.stage = "input_fn"
        try:
            payload, response_type = self._run(body, content_type, accept, context)
            context.set_response_content_type(idx, str(response_type))
            return _as_body(payload, self.stage)
        except Exception as exc:
            return self._error(idx, self.stage, exc, context)

    def _run(self, body: bytes, content_type: str, accept: str, context) -> tuple:
        """(payload, content type) of one request through the hooks; ``self.stage`` says where."""
        hooks, call = self.hooks, user_module.call
        if hooks["transform_fn"]:
            self.stage = "transform_fn"
            data = self._body_for_user(body, content_type)
            result = call(hooks["transform_fn"], self.model, data, content_type, accept, context=context)
        else:
            data = self._body_for_user(body, content_type) if self.user.defines("input_fn") else body
            data = call(hooks["input_fn"], data, content_type, context=context)
            self.stage = "predict_fn"
            prediction = call(hooks["predict_fn"], data, self.model, context=context)
            self.stage = "output_fn"
            result = call(hooks["output_fn"], prediction, accept, context=context)
        return result if isinstance(result, tuple) and len(result) == 2 else (result, accept)

    @staticmethod
    def _body_for_user(body: bytes, content_type: str) -> bytes | str:
        if codecs.media_type(content_type) not in UTF8_TYPES:
            return body
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise codecs.RequestError(400, f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None

    def _error(self, idx: int, stage: str, exc: Exception, context) -> str:
        """A one-line JSON error: the client's (RequestError, or a status the user's code chose),
        or a 500 whose details go to the log only."""
        if isinstance(exc, codecs.RequestError):
            status, reason = exc.status, exc.reason
        elif (chosen := user_module.error_status(exc)) is not None:
            status, reason = chosen
        else:
            log.exception("%s failed (%s)", stage, self.user.path.name)
            status, reason = 500, f"{stage} failed ({type(exc).__name__}); see the endpoint's log"
        log.info("request %d answered %d: %s", idx, status, reason)
        context.set_response_content_type(idx, codecs.JSON)
        context.set_response_status(status, codecs.reason_phrase(reason), idx=idx)
        return codecs.encode_error(status, reason)


def _as_body(payload, stage: str) -> bytes | str:
    """What MMS can send: bytes or text as they are, anything JSON-serializable as JSON."""
    if isinstance(payload, bytes | bytearray | str):
        return payload
    if hasattr(payload, "tolist"):
        payload = payload.tolist()
    try:
        return json.dumps(payload)
    except (TypeError, ValueError):
        kind = type(payload).__name__
        raise TypeError(f"{stage} returned {kind}: return str, bytes or JSON-serializable data") from None
