"""Our model.tar.gz serves unchanged on AWS's PyTorch inference container: its toolkit
(sagemaker-pytorch-inference, in .venv-dlc) loads the artifact's code/inference.py, and every
answer equals our handler's."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import subprocess
import textwrap

import pytest
from mms.context import Context, RequestProcessor
from PIL import Image

from serve import handler
from serve.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.slow
PYTHON = REPO / ".venv-dlc" / "bin" / "python"

# Runs in .venv-dlc: the toolkit's HandlerService, as TorchServe drives it, with a context that
# has what TorchServe's gives a handler (system properties, request headers, response fields).
DRIVER = textwrap.dedent("""
    import base64, importlib.util, json, sys

    import byoc_codecs, model_artifact, sagemaker_inference
    from sagemaker_pytorch_serving_container.handler_service import HandlerService


    class RequestProcessor:
        def __init__(self, headers):
            self.headers = headers

        def get_request_properties(self):
            return self.headers


    class Context:
        def __init__(self, model_dir, headers):
            self.system_properties = {"model_dir": model_dir, "gpu_id": None}
            self.model_name, self.status, self.content_type = "model", 200, None
            self.request_processor = [RequestProcessor(headers)]

        def get_all_request_header(self, idx):
            return self.request_processor[idx].headers

        def set_response_status(self, code=200, phrase="", idx=0):
            self.status = code

        def set_response_content_type(self, idx, value):
            self.content_type = value


    model_dir, requests = sys.argv[1], json.load(open(sys.argv[2]))
    service, context = HandlerService(), Context(model_dir, {})
    service.initialize(context)
    answers = []
    for headers, body in requests:  # TorchServe keeps one context and sets each batch's headers on it
        context.request_processor, context.status = [RequestProcessor(headers)], 200
        (out,) = service.handle([{"body": bytearray(base64.b64decode(body))}], context)
        out = out.decode() if isinstance(out, (bytes, bytearray)) else out
        answers.append([context.status, context.content_type, out])
    modules = {m.__name__: m.__file__ for m in (byoc_codecs, model_artifact, sagemaker_inference)}
    print(json.dumps({"answers": answers, "modules": modules, "serve": importlib.util.find_spec("serve") is not None}))
""")


def image(fmt: str, noise: bool = False) -> bytes:
    picture = Image.effect_noise((64, 48), 50).convert("RGB") if noise else Image.new("RGB", (64, 48), (200, 40, 90))
    out = io.BytesIO()
    picture.save(out, fmt)
    return out.getvalue()


def requests() -> list[tuple[dict, bytes]]:
    instances = {"instances": [{"b64": base64.b64encode(image(f, noise=True)).decode()} for f in ("PNG", "JPEG")]}
    return [
        ({"Content-Type": "image/jpeg"}, image("JPEG", noise=True)),
        ({"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}, image("PNG")),
        (
            {"Content-Type": "application/json", "Accept": "application/json"},
            json.dumps(instances | {"top_k": 1}).encode(),
        ),
        ({"Content-Type": "image/png"}, b"not an image"),
        ({"Content-Type": "text/csv"}, b"1,2,3"),
        ({"Content-Type": "image/png", "Accept": "text/csv"}, image("PNG")),
    ]


def ours(service: handler.ClassifierService, headers: dict, body: bytes) -> list:
    """[status, content type, body] from our handler."""
    context = Context("model", "/nowhere", None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor(headers)]
    (out,) = service.handle([{"body": body}], context)
    return [context.get_response_status(0)[0] or 200, context.get_response_content_type(0), out]


@pytest.mark.skipif(not PYTHON.exists(), reason="needs .venv-dlc: make venv-dlc")
def test_aws_pytorch_toolkit_serves_our_artifact_with_our_answers(small_model, tmp_path):
    model_dir = shutil.copytree(small_model, tmp_path / "model")  # as the container unpacks model.tar.gz
    cases = requests()
    (tmp_path / "requests.json").write_text(json.dumps([[h, base64.b64encode(b).decode()] for h, b in cases]))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SERVE_", "PYTHON"))}
    env |= {"PYTHONPATH": str(model_dir / "code"), "SAGEMAKER_PROGRAM": "inference.py"}  # as the container sets
    run = subprocess.run([str(PYTHON), str(tmp_path / "driver.py"), str(model_dir), str(tmp_path / "requests.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["modules"]["sagemaker_inference"].startswith(str(REPO / ".venv-dlc"))  # the toolkit's own
    assert result["modules"]["model_artifact"] == str(model_dir / "code" / "model_artifact.py")
    assert result["modules"]["byoc_codecs"] == str(model_dir / "code" / "byoc_codecs.py")
    assert result["serve"] is False  # nothing of this repository but the artifact's code/
    service = handler.ClassifierService()  # on PyTorch, as AWS's container: the same probabilities to the digit
    service.initialize(str(model_dir), None, dataclasses.replace(Settings.from_env(), runtime="torch"))
    for (headers, body), (status, content_type, answer) in zip(cases, result["answers"], strict=True):
        expected = ours(service, headers, body)
        if expected[0] == 200:
            assert [status, content_type, answer] == expected, headers
        else:  # the toolkit answers with our status, and its own body (message and traceback)
            assert status == expected[0] and answer.startswith(json.loads(expected[2])["error"]), headers
