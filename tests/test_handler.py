"""The MMS handler against MMS's own Context objects: batching, statuses, load failures, on
both runtimes (ONNX Runtime and PyTorch)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from mms.context import Context
from PIL import Image

import model_artifact
from serve import handler
from tests.serving import RUNTIMES, mms_context, service_fixture

service = service_fixture(*RUNTIMES)
TOLERANCE = {"torch": 1e-5, "onnx": model_artifact.ONNX_TOLERANCE}  # of a probability, against eager PyTorch


@pytest.fixture(scope="module")
def model_dir(small_model):
    return small_model


def png(colour=(10, 200, 30), size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def test_a_batch_of_requests_gets_one_answer_each(service, model_dir):
    headers = [
        {"Content-Type": "image/png"},
        {"content-type": "text/csv"},
        {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"},
        {"Content-Type": "image/png", "Accept": "text/csv"},
    ]
    context = mms_context(model_dir, headers)
    bodies = service.handle([{"body": png()}, {"body": b"1,2"}, {"body": png()}, {"body": png()}], context)
    statuses = [context.get_response_status(i)[0] for i in range(4)]
    assert statuses == [200, 415, 200, 406]
    assert len(json.loads(bodies[0])["predictions"][0]["top_k"]) == 3  # 3 classes < default 5
    assert len(json.loads(bodies[2])["predictions"][0]["top_k"]) == 2
    assert json.loads(bodies[1])["status"] == 415
    assert all(context.get_response_content_type(i) == "application/json" for i in range(4))


def test_reason_phrases_are_ascii_single_lines(service, model_dir):
    context = mms_context(model_dir, [{"Content-Type": "text/plain; ünïcode\nline\x1b[2J"}])
    (body,) = service.handle([{"body": b"x"}], context)
    status, phrase = context.get_response_status(0)
    assert status == 415 and phrase.isascii() and phrase.isprintable() and "\n" not in phrase
    assert "ünïcode" in json.loads(body)["error"]  # the JSON body keeps the full reason


def test_images_of_all_requests_go_through_the_model_together(service, model_dir, monkeypatch):
    batches = []
    original = service.predict
    monkeypatch.setattr(service, "predict", lambda images: batches.append(len(images)) or original(images))
    instances = {"instances": [{"b64": __import__("base64").b64encode(png()).decode()}] * 3}
    context = mms_context(model_dir, [{"Content-Type": "application/json"}, {"Content-Type": "image/png"}])
    bodies = service.handle([{"body": json.dumps(instances).encode()}, {"body": png()}], context)
    assert batches == [4]
    assert len(json.loads(bodies[0])["predictions"]) == 3 and len(json.loads(bodies[1])["predictions"]) == 1


def test_the_service_runs_on_the_runtime_it_was_given(service):
    runtime = "onnxruntime" if service.settings.runtime == "onnx" else "torch"
    assert service.model.name.startswith(f"{runtime} ")
    probabilities = service.predict([np.zeros((3, 32, 32), np.float32)] * 2)
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_same_pixels_and_probabilities_as_training_evaluation(service, model_dir, tmp_path):
    """The answer equals eager PyTorch on torchvision's eval transform (ONNX Runtime within its tolerance)."""
    from train import crops, data

    image_path = tmp_path / "a.jpg"
    Image.effect_noise((300, 200), 60).convert("RGB").save(image_path, quality=90)
    model, meta = model_artifact.load(model_dir)
    prep = meta.preprocessing
    dataset = data.ImageDataset([(image_path, 0)], crops.EvalCrop(prep))
    pixels = model_artifact.normalize(dataset[0][0], prep)
    assert np.array_equal(service.transform(model_artifact.decode_image(image_path, prep.resize_size)), pixels.numpy())
    with torch.no_grad():
        expected = model(pixels.unsqueeze(0)).softmax(1)[0]
    context = mms_context(model_dir, [{"Content-Type": "image/jpeg"}])
    (body,) = service.handle([{"body": image_path.read_bytes()}], context)
    top = json.loads(body)["predictions"][0]["top_k"]
    got = {p["label"]: p["probability"] for p in top}
    assert set(got) == set(meta.class_names)
    for i, name in enumerate(meta.class_names):
        assert got[name] == pytest.approx(expected[i].item(), abs=TOLERANCE[service.settings.runtime])


def test_a_load_failure_propagates_to_mms_s_worker_which_answers_the_load_with_it(tmp_path):
    context = Context("model", str(tmp_path), None, 1, None, "1.1.11")
    with pytest.raises(model_artifact.ArtifactError):
        handler.handle(None, context)  # serve.workers reads the failed load's answer and reports it


@pytest.mark.parametrize("runtime,name", [("onnx", "onnxruntime"), ("torch", "torch"), ("auto", "onnxruntime")])
def test_preflight_summarises_a_good_model_and_its_runtime(model_dir, monkeypatch, runtime, name):
    monkeypatch.setenv("SERVE_RUNTIME", runtime)
    assert handler.preflight(str(model_dir)).startswith(f"resnet18 with 3 classes on {name} ")


def test_our_faults_are_one_line_500s_and_the_worker_keeps_serving(service, model_dir, monkeypatch):
    original = service.predict
    monkeypatch.setattr(service, "predict", lambda inputs: (_ for _ in ()).throw(ValueError("bug\nline two")))
    context = mms_context(model_dir, [{"Content-Type": "image/png"}])
    (body,) = service.handle([{"body": png()}], context)
    assert context.get_response_status(0)[0] == 500 and "\n" not in body and "bug" not in body
    monkeypatch.setattr(handler.codecs, "check_accept", lambda accept: {}["boom"])  # outside the per-request path
    context = mms_context(model_dir, [{"Content-Type": "image/png"}] * 2)
    bodies = service.handle([{"body": png()}] * 2, context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [500, 500]
    assert all(json.loads(b)["status"] == 500 for b in bodies)
    monkeypatch.undo()
    assert service.predict == original
    context = mms_context(model_dir, [{"Content-Type": "image/png"}])
    service.handle([{"body": png()}], context)
    assert context.get_response_status(0)[0] == 200


@pytest.mark.parametrize(
    "error,exits",
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    ],
)
def test_a_broken_gpu_ends_the_worker_but_out_of_memory_does_not(service, model_dir, monkeypatch, error, exits):
    """Only PyTorch on a GPU can break for good; ONNX Runtime on the CPU answers 500 and keeps serving."""
    exited = []
    monkeypatch.setattr(handler, "_exit_worker", exited.append)
    if service.settings.runtime == "torch":
        monkeypatch.setattr(service.model, "device", torch.device("cuda", 0))
    monkeypatch.setattr(service, "predict", lambda inputs: (_ for _ in ()).throw(error))
    context = mms_context(model_dir, [{"Content-Type": "image/png"}])
    service.handle([{"body": png()}], context)
    assert bool(exited) == (exits and service.settings.runtime == "torch")
    assert context.get_response_status(0)[0] == 500
