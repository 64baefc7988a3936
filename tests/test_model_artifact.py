"""The artifact format: round trip, checksum, safe loading, preprocessing, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import model_artifact
from model_artifact import ArtifactError, Metadata, Preprocessing
from train import artifact


def saved(tmp_path, architecture="resnet18", classes=("cat", "dog", "eel")):
    model = model_artifact.build_model(architecture, len(classes))
    meta = Metadata(architecture, list(classes), Preprocessing.for_image_size(32), metrics={"test_accuracy": 0.5})
    artifact.save(tmp_path, model.state_dict(), meta)
    return model


def test_round_trip_gives_the_same_outputs(tmp_path):
    model = saved(tmp_path).eval()
    loaded, meta = model_artifact.load(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta.class_names == ["cat", "dog", "eel"] and meta.num_classes == 3
    assert meta.preprocessing == Preprocessing(image_size=32, resize_size=37)
    assert meta.versions["torch"] == torch.__version__ and len(meta.weights_sha256) == 64


def test_weights_load_with_weights_only(tmp_path):
    saved(tmp_path)
    state = torch.load(tmp_path / model_artifact.WEIGHTS_FILE, weights_only=True)
    assert "fc.weight" in state and state["fc.weight"].shape == (3, 512)


def test_tampered_weights_fail_the_checksum(tmp_path):
    saved(tmp_path)
    with open(tmp_path / model_artifact.WEIGHTS_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="checksum"):
        model_artifact.load(tmp_path)


def test_pickled_code_is_never_executed(tmp_path):
    saved(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    weights = tmp_path / model_artifact.WEIGHTS_FILE
    torch.save({"x": Evil()}, weights)
    meta = json.loads((tmp_path / model_artifact.METADATA_FILE).read_text())
    meta["weights_sha256"] = model_artifact.file_sha256(weights)
    (tmp_path / model_artifact.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        model_artifact.load(tmp_path)


INT8 = {
    "sha256": "0" * 64, "method": "m", "images": 10, "fp32_accuracy": 0.9, "int8_accuracy": 0.8, "agreement": 0.9,
}  # fmt: skip


def test_the_int8_record_round_trips(tmp_path):
    saved(tmp_path)
    meta = model_artifact.load_metadata(tmp_path)
    assert meta.int8 is None
    meta.int8 = model_artifact.Int8Check(**INT8)
    artifact.write_metadata(tmp_path, meta)
    loaded = model_artifact.load_metadata(tmp_path)
    assert loaded.int8 == meta.int8 and loaded.int8.accuracy_drop == pytest.approx(10.0)
    with pytest.raises(ArtifactError, match="does not match the checksum"):  # no such file yet: its checksum
        (tmp_path / model_artifact.INT8_FILE).write_bytes(b"x")
        model_artifact.int8_path(tmp_path, loaded)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(format_version=99), "format 99 is not supported"),
        (lambda m: m.pop("architecture"), "malformed"),
        (lambda m: m.update(class_names=[]), "no class names"),
        (lambda m: m.update(class_names=["a", "b"]), "weights do not fit"),
        (lambda m: m.update(int8=INT8 | {"int8_accuracy": "0.8"}), "malformed: int8: accuracies and agreement must be"),
        (lambda m: m.update(int8=INT8 | {"agreement": 1.5}), "malformed: int8: accuracies and agreement must be"),
        (lambda m: m.update(int8=INT8 | {"images": 0}), "malformed: int8: images must be a positive integer"),
        (lambda m: m.update(int8=INT8 | {"extra": 1}), "malformed: .*unexpected keyword argument 'extra'"),
        (lambda m: m.update(int8={k: v for k, v in INT8.items() if k != "sha256"}), "malformed: .*sha256"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path, edit, message):
    saved(tmp_path)
    path = tmp_path / model_artifact.METADATA_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=message):
        model_artifact.load(tmp_path)


def test_missing_artifact_and_stray_tarballs(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        model_artifact.load(tmp_path)
    saved(tmp_path)
    (tmp_path / "model.tar.gz").write_bytes(b"left here by SDK v2 local mode")
    model, _ = model_artifact.load(tmp_path)
    assert not model.training


def test_eval_transform_resizes_and_crops():
    prep = Preprocessing.for_image_size(48)
    tensor = model_artifact.eval_transform(prep)(Image.new("RGB", (200, 100), (255, 255, 255)))
    assert tensor.shape == (3, 48, 48)
    expected = (1 - prep.mean[0]) / prep.std[0]
    assert tensor[0, 0, 0].item() == pytest.approx(expected, abs=1e-3)


def test_jpeg_draft_decodes_large_photos_smaller(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1600), (10, 20, 30)).save(path)
    assert model_artifact.decode_image(path, draft_size=256).size == (500, 400)
    assert model_artifact.decode_image(path).size == (2000, 1600)


def test_copy_files_takes_the_artifact_and_nothing_else(tmp_path):
    source = tmp_path / "model"
    net = model_artifact.build_model("resnet18", 2)
    artifact.save(
        source, net.state_dict(), model_artifact.Metadata("resnet18", ["a", "b"], Preprocessing.for_image_size(32))
    )
    for planted in ("model_artifact.py", "code/inference.py", "MAR-INF/MANIFEST.json", "serve/__init__.py"):
        (source / planted).parent.mkdir(parents=True, exist_ok=True)
        (source / planted).write_text("raise SystemExit('planted code ran')\n")
    (source / "outside").symlink_to("/etc")
    copy = model_artifact.copy_files(source, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == sorted([*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE])
    (source / model_artifact.INT8_FILE).write_bytes(b"int8")
    copy = model_artifact.copy_files(source, tmp_path / "copy-int8")
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [*model_artifact.ARTIFACT_FILES, *model_artifact.OPTIONAL_FILES]
    )
    (source / model_artifact.INT8_FILE).unlink()
    (source / model_artifact.INT8_FILE).symlink_to("/etc/passwd")
    with pytest.raises(model_artifact.ArtifactError, match=r"model\.int8\.onnx is a symbolic link: refused"):
        model_artifact.copy_files(source, tmp_path / "copy-link")
    assert model_artifact.load(copy)[1].class_names == ["a", "b"]


@pytest.mark.parametrize("name", model_artifact.ARTIFACT_FILES)
def test_copy_files_refuses_links_and_missing_files(tmp_path, name):
    source = tmp_path / "model"
    net = model_artifact.build_model("resnet18", 2)
    artifact.save(
        source, net.state_dict(), model_artifact.Metadata("resnet18", ["a", "b"], Preprocessing.for_image_size(32))
    )
    (tmp_path / "elsewhere").write_bytes((source / name).read_bytes())
    (source / name).unlink()
    with pytest.raises(model_artifact.ArtifactError, match="not found"):
        model_artifact.copy_files(source, tmp_path / "copy1")
    (source / name).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(model_artifact.ArtifactError, match="symbolic link"):
        model_artifact.copy_files(source, tmp_path / "copy2")


def test_elongated_images_are_refused_before_decoding(tmp_path):
    import io

    out = io.BytesIO()
    Image.new("1", (40000, 1)).save(out, "PNG")  # 200 bytes; resized to 256 px high: 2.6 billion pixels
    with pytest.raises(Image.DecompressionBombError, match="too elongated"):
        model_artifact.decode_image(out.getvalue(), 256, 40_000_000)
    assert model_artifact.decode_image(out.getvalue(), None, 40_000_000).size == (40000, 1)  # no resize: no cap


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failed_atomic_write_leaves_the_folder_as_it_was(tmp_path, error):
    """No ``.NAME.tmp-PID`` is left behind (in /opt/ml/checkpoints SageMaker would upload it)."""
    (tmp_path / "kept.pt").write_bytes(b"old")

    def write(f):
        f.write(b"half a file")
        raise error

    for name in ("kept.pt", "new.pt"):
        with pytest.raises(type(error)):
            model_artifact.atomic_write(tmp_path / name, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pt"]
    assert (tmp_path / "kept.pt").read_bytes() == b"old"


def test_atomic_write_replaces_the_file(tmp_path):
    (tmp_path / "kept.pt").write_bytes(b"old")
    model_artifact.atomic_write(tmp_path / "kept.pt", lambda f: f.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pt"]
    assert (tmp_path / "kept.pt").read_bytes() == b"new"


def test_display_names():
    assert model_artifact.display_name("001.ak47") == "ak47"
    assert model_artifact.display_name("063.electric-guitar-101") == "electric guitar"
    assert model_artifact.display_name("plain_name") == "plain name"
    assert model_artifact.display_name("007") == "007"


NO_TORCH = """
import sys
sys.modules.update(torch=None, torchvision=None)  # importing either now fails, as in the CPU serving image
import numpy as np, onnxruntime
import model_artifact
model_dir, photo = sys.argv[1], sys.argv[2]
meta = model_artifact.load_metadata(model_dir)
prep = meta.preprocessing
batch = model_artifact.ArrayTransform(prep)(model_artifact.decode_image(photo, prep.resize_size, 40_000_000))[None]
session = onnxruntime.InferenceSession(str(model_artifact.onnx_path(model_dir, meta)))
(probabilities,) = session.run([model_artifact.ONNX_OUTPUT], {model_artifact.ONNX_INPUT: batch})
model_artifact.copy_files(model_dir, model_dir + "-copy")
print(probabilities.shape, round(float(probabilities.sum()), 4), "torch" in sys.modules and sys.modules["torch"])
"""


def test_serving_functions_work_without_torch(tmp_path):
    """What the CPU serving image uses of this module needs neither torch nor torchvision."""
    import subprocess
    import sys

    saved(tmp_path / "model")
    Image.new("RGB", (50, 40), (200, 30, 60)).save(tmp_path / "photo.jpg")
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path / "model"), str(tmp_path / "photo.jpg")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["(1,", "3)", "1.0", "None"]
    assert (tmp_path / "model-copy" / model_artifact.ONNX_FILE).is_file()
