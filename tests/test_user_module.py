"""Script mode in-process: the user's hooks over our defaults, statuses, staging, requirements."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import model_artifact
from serve import handler, portable_code, script_service, user_module
from serve.settings import Settings, log_level
from tests.conftest import REPO
from tests.serving import classifier_service, mms_context
from train import artifact

EXAMPLE = REPO / "examples" / "script_mode"
CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """User modules go on sys.path and into sys.modules: take them out again. Libraries that a test
    imported first stay (onnx, imported by train.artifact.save's export, aborts when imported twice)."""
    path, modules = list(sys.path), set(sys.modules)
    monkeypatch.delenv("SAGEMAKER_MULTI_MODEL", raising=False)
    yield
    sys.path[:] = path
    installed = (sys.prefix, sys.base_prefix)
    for name in set(sys.modules) - modules:
        if not str(getattr(sys.modules[name], "__file__", None) or sys.prefix).startswith(installed):
            del sys.modules[name]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return model_artifact.build_model("resnet18", len(CLASSES)).eval()


@pytest.fixture
def ours(net, tmp_path) -> Path:
    """Our artifact (artifact.json, model.pt, code/)."""
    meta = model_artifact.Metadata("resnet18", list(CLASSES), model_artifact.Preprocessing.for_image_size(32))
    return artifact.save(tmp_path / "ours", net.state_dict(), meta)


@pytest.fixture
def dlc(net, tmp_path) -> Path:
    """A model as AWS's PyTorch containers take it: model.pth and code/, no artifact.json."""
    folder = tmp_path / "dlc"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "model.pth")
    return folder


def write_module(folder: Path, source: str, name: str = "inference.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))
    return folder


def service(monkeypatch, model_dir: Path, code: Path, program: str = "inference.py") -> script_service.ScriptService:
    monkeypatch.setenv("SAGEMAKER_PROGRAM", program)
    monkeypatch.setenv(script_service.CODE_DIR_ENV, str(code))
    svc = script_service.ScriptService()
    svc.initialize(str(model_dir), None, Settings.from_env())
    return svc


def context(*headers: dict):
    return mms_context("/nowhere", list(headers))


def image(fmt: str = "PNG", colour=(10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(out, fmt)
    return out.getvalue()


def answer(svc, body: bytes, **headers: str) -> tuple[int, str, str]:
    """(status, content type, body) of one request."""
    ctx = context({k.replace("_", "-"): v for k, v in headers.items()})
    (out,) = svc.handle([{"body": body}], ctx)
    return ctx.get_response_status(0)[0] or 200, ctx.get_response_content_type(0), out


MODEL_FN_ONLY = """
    import os, torch, torchvision

    def model_fn(model_dir):
        model = torchvision.models.resnet18(weights=None, num_classes=3)
        model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
        return model.eval()
"""


def test_a_user_model_fn_gets_our_decoding_and_answer(monkeypatch, dlc):
    svc = service(monkeypatch, dlc, write_module(dlc / "code", MODEL_FN_ONLY))
    assert "defines model_fn; ours: input_fn, predict_fn, output_fn" in svc.summary and "warmed up" in svc.summary
    status, kind, body = answer(svc, image(), Content_Type="image/png", X_Amzn_SageMaker_Custom_Attributes="top_k=2")
    (prediction,) = json.loads(body)["predictions"]
    assert status == 200 and kind == "application/json" and len(prediction["top_k"]) == 2
    assert prediction["label"] in {"0", "1", "2"}  # no artifact.json: class indices
    instances = json.dumps({"instances": [{"b64": base64.b64encode(image()).decode()}] * 2}).encode()
    status, _, body = answer(svc, instances, Content_Type="application/json")
    assert status == 200 and len(json.loads(body)["predictions"]) == 2
    assert answer(svc, b"a,b", Content_Type="text/csv")[0] == 415  # our codecs' statuses
    assert answer(svc, image(), Content_Type="image/png", Accept="text/csv")[0] == 406


@pytest.mark.parametrize("artifact", ["dlc", "ours"])
def test_the_course_style_example_serves_both_artifacts(monkeypatch, request, artifact):
    model_dir = request.getfixturevalue(artifact)
    shutil.copytree(EXAMPLE, model_dir / "code", dirs_exist_ok=True)
    svc = service(monkeypatch, model_dir, model_dir / "code")
    assert "warmed up" not in svc.summary  # its input_fn takes what our decoder cannot guess
    status, kind, body = answer(svc, image("JPEG"), Content_Type="image/jpeg")
    result = json.loads(body)
    assert status == 200 and kind == "application/json" and result["served_by"] == "examples/script_mode/inference.py"
    assert result["label"] in (CLASSES if artifact == "ours" else ["0", "1", "2"])
    status, _, body = answer(svc, json.dumps({"b64": base64.b64encode(image()).decode()}).encode(),
                             Content_Type="application/json")  # fmt: skip
    assert status == 200 and json.loads(body)["served_by"]
    status, _, body = answer(svc, b"x", Content_Type="text/plain")
    assert status == 415 and json.loads(body) == {"error": "unsupported content type text/plain", "status": 415}


RECORDING = """
    import json
    seen = []

    def model_fn(model_dir, context):
        seen.append(("model_fn", context))
        return "a model"

    def input_fn(data, content_type, context):
        seen.append((type(data).__name__, content_type))
        return data

    def predict_fn(data, model):
        return {"echo": data if isinstance(data, str) else len(data), "model": model}

    def output_fn(prediction, accept):
        if accept == "text/csv":
            return "{echo},{model}".format(**prediction)  # the Accept becomes the content type
        return json.dumps(prediction), "application/x-mine"
"""


def test_hooks_get_text_for_json_bytes_for_images_and_the_context(monkeypatch, dlc):
    svc = service(monkeypatch, dlc, write_module(dlc / "code", RECORDING))
    seen = sys.modules["inference"].seen
    assert seen == [("model_fn", None)] and "warmed up" not in svc.summary
    assert answer(svc, b'{"a": 1}', Content_Type="application/json") == (
        200, "application/x-mine", json.dumps({"echo": '{"a": 1}', "model": "a model"}),
    )  # fmt: skip
    assert answer(svc, b"\xff\xd8", Content_Type="image/jpeg", Accept="text/csv") == (200, "text/csv", "2,a model")
    assert seen[1:] == [("str", "application/json"), ("bytes", "image/jpeg")]
    assert answer(svc, b"\xff", Content_Type="application/json")[0] == 400  # not UTF-8 text


FAILING = """
    from sagemaker_inference.errors import GenericInferenceToolkitError

    class Teapot(Exception):
        status_code = 418

    def model_fn(model_dir):
        return None

    def transform_fn(model, data, content_type, accept):
        if data == b"404":
            raise GenericInferenceToolkitError(404, "no such thing\\nsecond line")
        if data == b"418":
            raise Teapot("short and stout")
        if data == b"600":
            raise GenericInferenceToolkitError(600, "not an HTTP status")
        if data == b"object":
            return object()
        if data == b"bug":
            raise ValueError("secret /etc/passwd contents\\nline two")
        return "fine"
"""


def test_user_errors_keep_their_status_anything_else_is_a_one_line_500(monkeypatch, dlc, caplog):
    svc = service(monkeypatch, dlc, write_module(dlc / "code", FAILING))
    assert answer(svc, b"404", Content_Type="image/png")[::2] == (404, '{"error": "no such thing", "status": 404}')
    assert answer(svc, b"418", Content_Type="image/png")[0] == 418
    for body in (b"600", b"bug", b"object"):
        status, kind, text = answer(svc, body, Content_Type="image/png")
        assert status == 500 and kind == "application/json" and "\n" not in text
        assert "secret" not in text and "transform_fn failed" in json.loads(text)["error"]
    assert "secret /etc/passwd" in caplog.text and "Traceback" in caplog.text  # the log has the details
    assert answer(svc, b"ok", Content_Type="image/png") == (200, "application/json", "fine")  # still serving


@pytest.mark.parametrize(
    "source,program,message",
    [
        ("def transform_fn(m, d, c, a): pass\ndef input_fn(d, c): pass\n", "inference.py", "transform_fn and"),
        ("", "../escape.py", "outside the code folder"),
        ("", "missing.py", "not found in"),
        ("def input_fn(a, b, c, d): pass\n", "inference.py", "input_fn takes 4 arguments"),
    ],
)
def test_unusable_user_modules_are_named(monkeypatch, dlc, source, program, message):
    write_module(dlc / "code", textwrap.dedent(MODEL_FN_ONLY) + "\n" + source)
    (dlc / "escape.py").write_text("raise SystemExit('imported')\n")
    with pytest.raises(user_module.UserCodeError, match=message):
        service(monkeypatch, dlc, dlc / "code", program)


def test_the_handler_picks_the_script_service_only_when_the_server_says_so(monkeypatch, ours, dlc):
    write_module(dlc / "code", MODEL_FN_ONLY)
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    summary = handler.preflight(str(ours))  # SAGEMAKER_PROGRAM alone: nothing imported, our handler serves
    assert summary.startswith("resnet18 with 3 classes on "), summary
    assert "inference" not in sys.modules
    monkeypatch.setenv(script_service.CODE_DIR_ENV, str(dlc / "code"))
    assert handler.preflight(str(dlc)).startswith("script mode: inference.py defines model_fn")


def test_our_artifact_served_by_its_own_code_answers_as_our_handler(monkeypatch, ours):
    """code/inference.py of our artifact, in script mode, gives our handler's exact answers."""
    assert sorted(p.name for p in (ours / "code").iterdir()) == sorted(portable_code.CODE_FILES)
    assert (ours / "code" / "model_artifact.py").read_bytes() == (REPO / "model_artifact.py").read_bytes()
    assert (ours / "code" / "byoc_codecs.py").read_bytes() == (REPO / "serve" / "codecs.py").read_bytes()
    reference = classifier_service(ours, "torch")  # the same eager PyTorch as the portable code: equal bytes
    svc = service(monkeypatch, ours, ours / "code")
    assert "defines input_fn, model_fn, output_fn, predict_fn" in svc.summary
    instances = json.dumps({"instances": [{"b64": base64.b64encode(image(fmt)).decode()} for fmt in ("JPEG", "PNG")]})
    for body, content_type in ((image("JPEG"), "image/jpeg"), (instances.encode(), "application/json")):
        expected_ctx = context({"Content-Type": content_type})
        (expected,) = reference.handle([{"body": body}], expected_ctx)
        assert answer(svc, body, Content_Type=content_type) == (200, "application/json", expected)
    status, _, body = answer(svc, b"garbage", Content_Type="image/png")
    assert status == 400 and "not a readable image" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "env,level",
    [
        ({}, "INFO"),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "10"}, "DEBUG"),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "warn"}, "WARNING"),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "40", "SERVE_LOG_LEVEL": "info"}, "INFO"),
    ],
)
def test_the_sdk_container_log_level_is_the_serving_log_level(monkeypatch, env, level):
    for name in ("SAGEMAKER_CONTAINER_LOG_LEVEL", "SERVE_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert log_level() == level
    monkeypatch.setenv("SAGEMAKER_CONTAINER_LOG_LEVEL", "25")
    monkeypatch.delenv("SERVE_LOG_LEVEL", raising=False)
    with pytest.raises(ValueError, match="SAGEMAKER_CONTAINER_LOG_LEVEL='25' is not a log level"):
        log_level()
