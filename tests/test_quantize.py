"""train.quantize: the int8 model written at training, its accuracy check, the ``int8``
hyperparameter, and a planted lossy int8 model that serving must not use."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

import model_artifact
from common.metrics import METRIC_DEFINITIONS
from tests.conftest import FAST, make_job, run_train
from tests.serving import Server, predict
from train import artifact, quantize

INT8 = model_artifact.INT8_FILE


def validation_samples(sample_data: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    folder = sample_data / "validation"
    return [(path, i) for i, name in enumerate(class_names) for path in sorted((folder / name).iterdir())]


def check_again(model: Path, samples: list[tuple[Path, int]]) -> quantize.Comparison:
    """The two files of ``model`` compared on ``samples``, as training compares them."""
    prep = model_artifact.load_metadata(model).preprocessing
    arrays = quantize.pixels([path for path, _ in samples], prep, None)
    images = zip(arrays, [label for _, label in samples], strict=True)
    return quantize.compare(model / model_artifact.ONNX_FILE, model / INT8, images, 2)


@pytest.fixture(scope="module")
def trained(trained_job) -> Path:
    """The model folder of the shared training run (int8 on, by default)."""
    return trained_job[0] / "model"


# --- at training --------------------------------------------------------------------------


@pytest.mark.slow
def test_training_writes_a_checked_int8_model_and_a_metric_line(trained_job, trained, sample_data):
    meta = model_artifact.load_metadata(trained)
    check = meta.int8
    assert check is not None and check.images == 60  # every image of the sample validation split
    assert model_artifact.int8_path(trained, meta) == trained / INT8
    assert "MinMax, 64 training images" in check.method and "per-channel" in check.method
    # fp32 is model.onnx on serving's preprocessing: the trainer's own validation accuracy of the best epoch
    assert check.fp32_accuracy == pytest.approx(meta.metrics["best_val_accuracy"], abs=1 / 60 + 1e-9)
    # what artifact.json records is what the two files answer
    again = check_again(trained, validation_samples(sample_data, meta.class_names))
    assert (again.fp32_accuracy, again.int8_accuracy, again.agreement) == (
        check.fp32_accuracy, check.int8_accuracy, check.agreement)  # fmt: skip
    line = next(line for line in trained_job[1].stdout.splitlines() if line.startswith("int8 "))
    found = {d["Name"]: re.search(d["Regex"], line) for d in METRIC_DEFINITIONS if d["Name"].startswith("int8:")}
    assert float(found["int8:accuracy"].group(1)) == pytest.approx(check.int8_accuracy, rel=1e-5)
    assert float(found["int8:fp32_accuracy"].group(1)) == pytest.approx(check.fp32_accuracy, rel=1e-5)
    assert float(found["int8:agreement"].group(1)) == pytest.approx(check.agreement, rel=1e-5)
    assert "Please consider" not in trained_job[1].stdout  # the quantizer's advice stays out of the job's log


@pytest.mark.slow
def test_the_int8_file_is_plain_onnx_with_int8_weights_a_quarter_of_the_size(trained):
    graph = onnx.load(str(trained / INT8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # ResNet18's convolutions and its head
    assert (trained / INT8).stat().st_size < 0.3 * (trained / model_artifact.ONNX_FILE).stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("case", ["int8=false", "no validation split"])
def test_no_int8_model_without_the_hyperparameter_or_a_validation_split(sample_data, tmp_path, case):
    channels = {"training": sample_data / "training"}
    hyperparameters = FAST | {"epochs": "1", "image-size": "32", "val-split": "0"}
    if case == "int8=false":
        channels["validation"] = sample_data / "validation"
        hyperparameters |= {"int8": "false"}
    base = make_job(tmp_path, channels, hyperparameters)
    result = run_train(base)
    assert result.returncode == 0, result.stdout[-2000:]
    assert not (base / "model" / INT8).exists()
    assert model_artifact.load_metadata(base / "model").int8 is None
    assert not re.search(r"^int8 ", result.stdout, re.MULTILINE)
    said = "no validation split: model.int8.onnx not written"
    assert (said in result.stdout) == (case == "no validation split")


# --- the check, alone ---------------------------------------------------------------------


@pytest.fixture
def model(trained, tmp_path) -> Path:
    """A copy of the trained model, without its int8 record."""
    shutil.copytree(trained, tmp_path / "model")
    meta = model_artifact.load_metadata(tmp_path / "model")
    meta.int8 = None
    (tmp_path / "model" / INT8).unlink()
    artifact.write_metadata(tmp_path / "model", meta)
    return tmp_path / "model"


@pytest.mark.slow
def test_unreadable_validation_images_are_left_out_of_the_check(model, sample_data, tmp_path):
    meta = model_artifact.load_metadata(model)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    samples = validation_samples(sample_data, meta.class_names)
    calibration = quantize.calibration_sample([p for p, _ in samples], seed=0, count=8)
    check = quantize.add_int8(model, meta, calibration, [*samples, (junk, 0)])
    assert check.images == len(samples) and (model / INT8).is_file()
    before = (model / INT8).read_bytes()
    with pytest.raises(model_artifact.ArtifactError, match="no readable validation image"):
        quantize.add_int8(model, meta, calibration, [(junk, 0)])
    assert meta.int8 == check and (model / INT8).read_bytes() == before  # a failed upgrade keeps what was there
    assert sorted(p.name for p in model.iterdir() if "int8" in p.name) == [INT8]  # and leaves no candidate


@pytest.mark.slow
def test_a_failed_check_leaves_no_int8_file(model, sample_data, monkeypatch):
    meta = model_artifact.load_metadata(model)
    samples = validation_samples(sample_data, meta.class_names)

    def broken(*args):
        raise RuntimeError("the check broke")

    monkeypatch.setattr(quantize, "compare", broken)
    with pytest.raises(RuntimeError, match="the check broke"):
        quantize.add_int8(model, meta, [samples[0][0]], samples)
    assert meta.int8 is None and not [p.name for p in model.iterdir() if "int8" in p.name]  # nor a candidate


@pytest.mark.slow
def test_a_failed_int8_step_keeps_the_trained_fp32_artifact_and_warns_in_one_line(model, monkeypatch, caplog):
    from train import main

    def broken(*args, **kwargs):
        raise RuntimeError("the quantizer broke\nits second line")

    monkeypatch.setattr(quantize, "add_int8", broken)
    job = SimpleNamespace(
        val=SimpleNamespace(samples=[(model / "a.jpg", 0)]), train=SimpleNamespace(samples=[(model / "b.jpg", 0)]),
        args=SimpleNamespace(seed=42, max_image_pixels=100), paths=SimpleNamespace(model_dir=model),
    )  # fmt: skip
    before = (model / model_artifact.METADATA_FILE).read_bytes()
    with caplog.at_level(logging.WARNING):
        main.write_int8(job, model_artifact.load_metadata(model))  # returns: the job goes on and succeeds
    said = "model.int8.onnx not written, the CPU image serves model.onnx: the quantizer broke"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [said]
    assert (model / model_artifact.METADATA_FILE).read_bytes() == before
    assert model_artifact.load(model)[1].int8 is None  # the fp32 artifact loads, checksums and all


def test_calibration_sample_is_seeded_bounded_and_ordered():
    files = [Path(f"img{i:03d}.jpg") for i in range(200)]
    chosen = quantize.calibration_sample(files, seed=3)
    assert len(chosen) == quantize.CALIBRATION_IMAGES and chosen == sorted(chosen)
    assert chosen == quantize.calibration_sample(list(reversed(files)), seed=3)
    assert chosen != quantize.calibration_sample(files, seed=4)
    assert quantize.calibration_sample(files[:5], seed=3) == files[:5]


def test_the_recipe_describes_itself():
    assert quantize.Recipe().describe(64, "training") == (
        "onnxruntime static QDQ: uint8 activations (MinMax, 64 training images), int8 per-channel weights (7-bit)"
    )
    assert "per-tensor weights" in quantize.Recipe(per_channel=False, reduce_range=False).describe(8, "validation")


# --- export-onnx --int8 -------------------------------------------------------------------


@pytest.mark.slow
def test_export_onnx_int8_upgrades_a_model_tarball(model, sample_data, tmp_path, capsys):
    tarball = tmp_path / "model.tar.gz"
    shutil.make_archive(str(tmp_path / "model"), "gztar", model)
    assert artifact.main([str(tarball), "--int8", str(sample_data / "validation")]) == 0
    out = capsys.readouterr().out
    assert "model.onnx written" in out and re.search(r"int8 int8_accuracy=[0-9.]+ fp32_accuracy=", out)
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(tarball, unpacked)
    meta = model_artifact.load_metadata(unpacked)
    assert meta.int8 is not None and meta.int8.images == 60 and "60 validation images" in meta.int8.method
    assert model_artifact.int8_path(unpacked, meta).is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--int8", "{data}"], "folders that are not the model's classes: ['test', 'training', 'validation']"),
        (["--int8", "{data}/nowhere"], "not a folder"),
    ],
)
def test_export_onnx_int8_refuses_a_folder_that_is_not_the_models_classes(small_model, tmp_path, sample_data,
                                                                          capsys, args, message):  # fmt: skip
    shutil.copytree(small_model, tmp_path / "model")
    argv = [str(tmp_path / "model"), *(a.format(data=sample_data) for a in args)]
    assert artifact.main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model" / INT8).exists()


# --- a lossy int8 model is planted: serving keeps fp32 ------------------------------------


def plant_lossy_int8(model: Path, sample_data: Path) -> model_artifact.Int8Check:
    """Quantize with activation ranges calibrated on images scaled up 1000 times (real ones
    round to almost nothing), check it for real on the validation split and record it."""
    meta = model_artifact.load_metadata(model)
    samples = validation_samples(sample_data, meta.class_names)
    calibration = [a * 1000 for a in quantize.pixels([p for p, _ in samples[:8]], meta.preprocessing, None)]
    sha256 = quantize.quantize(model / model_artifact.ONNX_FILE, calibration, model / INT8)
    result = check_again(model, samples)
    meta.int8 = model_artifact.Int8Check(sha256=sha256, method="planted: ranges 1000x too wide", **vars(result))
    artifact.write_metadata(model, meta)
    return meta.int8


@pytest.fixture(scope="module")
def lossy(trained, sample_data, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("lossy")
    shutil.copytree(trained, base / "model")
    check = plant_lossy_int8(base / "model", sample_data)
    assert check.accuracy_drop > 10 and check.agreement < 0.8  # the planted file really is lossy
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return base


def fp32_and_int8(model: Path, image: bytes) -> dict[str, np.ndarray]:
    """Both files' probabilities for one request body, in process."""
    meta = model_artifact.load_metadata(model)
    pixels = model_artifact.ArrayTransform(meta.preprocessing)(
        model_artifact.decode_image(image, meta.preprocessing.resize_size)
    )
    files = {"fp32": model / model_artifact.ONNX_FILE, "int8": model / INT8}
    return {k: quantize.session(f, 1).run(None, {"images": pixels[None]})[0][0] for k, f in files.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "env,served",
    [({}, "fp32"), ({"SERVE_PRECISION": "int8"}, "int8"), ({"SERVE_INT8_MAX_DROP": "100"}, "int8")],
)
def test_serving_falls_back_to_fp32_when_the_int8_model_lost_accuracy(lossy, sample_data, env, served):
    """Through the real server: the answers are model.onnx's unless a setting allows or forces int8."""
    meta = model_artifact.load_metadata(lossy / "model")
    images = [path.read_bytes() for path, _ in validation_samples(sample_data, meta.class_names)[::15]]
    server = Server(lossy, SERVE_RUNTIME="onnx", **env)
    try:
        server.wait_healthy()
        answers = []
        for image in images:
            status, body = predict(server.port, image, Accept="application/json; probabilities=all")
            assert status == 200, body
            answers.append(body)
    finally:
        server.stop()
    expected_file = INT8 if served == "int8" else model_artifact.ONNX_FILE
    assert f"{expected_file} ({served}:" in server.log
    if not env:
        assert "more than SERVE_INT8_MAX_DROP=0.5 lost" in server.log
    differs = False
    for image, answer in zip(images, answers, strict=True):
        reference = fp32_and_int8(lossy / "model", image)
        assert answer["predictions"][0]["probabilities"] == pytest.approx(reference[served].tolist(), abs=1e-5)
        differs |= not np.allclose(reference["fp32"], reference["int8"], atol=1e-3)
    assert differs  # the two files answer differently: the test can tell which one served
