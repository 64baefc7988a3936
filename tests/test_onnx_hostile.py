"""A hostile model.onnx (whoever ships the model folder writes artifact.json and its checksums
too) cannot read files outside the staged model folder or load native code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_artifact
from serve import runtimes
from train import artifact

SECRET = b"SECRET-OUTSIDE-THE-MODEL-FOLDER"


def _external_weight(location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in {"location": location, "offset": "0", "length": "16"}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _plant(model_dir: Path, nodes: list, initializers: list, domains: tuple[str, ...] = ()) -> Path:
    """A model folder whose artifact.json lists the planted graph as model.onnx and as
    model.int8.onnx, with their true checksums (and a perfect accuracy check for int8)."""
    x = helper.make_tensor_value_info(model_artifact.ONNX_INPUT, TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info(model_artifact.ONNX_OUTPUT, TensorProto.FLOAT, [4])
    graph = helper.make_graph(nodes, "planted", [x], [y], initializers)
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    model_dir.mkdir(parents=True)
    (model_dir / model_artifact.ONNX_FILE).write_bytes(model.SerializeToString())
    prep = model_artifact.Preprocessing.for_image_size(2)
    meta = model_artifact.Metadata("resnet18", ["a", "b", "c", "d"], prep)
    meta.onnx_sha256 = hashlib.sha256((model_dir / model_artifact.ONNX_FILE).read_bytes()).hexdigest()
    (model_dir / model_artifact.INT8_FILE).write_bytes(model.SerializeToString())
    meta.int8 = model_artifact.Int8Check(meta.onnx_sha256, "planted", 100, 1.0, 1.0, 1.0)
    artifact.write_metadata(model_dir, meta)
    return model_dir


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("where", ["absolute", "traversal"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, where, precision):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    location = str(secret) if where == "absolute" else "../secret.bin"
    model_dir = _plant(tmp_path / "model", [helper.make_node("Add", ["images", "w"], ["probabilities"])],
                       [_external_weight(location)])  # fmt: skip
    meta = model_artifact.load_metadata(model_dir)
    with pytest.raises(Exception, match=r"(?i)external data|absolute path") as caught:
        runtimes.OnnxModel(str(model_dir), meta, threads=1, precision=precision)
    assert SECRET.decode() not in str(caught.value)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_custom_operator_domains_load_no_native_code(tmp_path, precision):
    """A node of an unknown domain fails the load: no custom-op library is ever registered."""
    node = helper.make_node("Evil", ["images"], ["probabilities"], domain="com.attacker")
    model_dir = _plant(tmp_path / "model", [node], [], domains=("com.attacker",))
    with pytest.raises(Exception, match=r"(?i)evil|com.attacker|not a registered"):
        runtimes.OnnxModel(str(model_dir), model_artifact.load_metadata(model_dir), threads=1, precision=precision)


@pytest.mark.parametrize("precision,name", [("fp32", model_artifact.ONNX_FILE), ("int8", model_artifact.INT8_FILE)])
def test_a_checksum_mismatch_is_refused_before_onnx_runtime_reads_the_file(tmp_path, precision, name):
    model_dir = _plant(tmp_path / "model", [helper.make_node("Identity", ["images"], ["probabilities"])], [])
    assert json.loads((model_dir / model_artifact.METADATA_FILE).read_text())["onnx_sha256"]  # a checksum to break
    (model_dir / name).write_bytes(b"not the exported graph")
    with pytest.raises(model_artifact.ArtifactError, match="does not match the checksum"):
        runtimes.OnnxModel(str(model_dir), model_artifact.load_metadata(model_dir), threads=1, precision=precision)
