"""train/artifact.py: what ``save`` writes, and an ONNX export that keeps the job's log quiet."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import model_artifact
from model_artifact import Metadata, Preprocessing
from serve.portable_code import CODE_DIR, CODE_FILES
from train import artifact

INFO_LINE = "Removed 182 unused nodes"  # the kind of line onnx_ir's passes log at INFO
EXPORTER = ("torch.onnx", "onnxscript", "onnx_ir")  # the loggers an export logs to (torch 2.14, onnxscript 0.7)


def exporter_records(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.name.startswith(EXPORTER)]


def exporter_levels() -> dict[str, int]:
    return {name: logging.getLogger(name).level for name in EXPORTER}


def test_save_writes_the_whole_artifact_and_no_exporter_line_reaches_the_log(tmp_path, caplog, capsys):
    """As train/main.py logs (root at INFO): model.pt, model.onnx, artifact.json and code/, and
    not one of the exporter's INFO lines (a dozen from onnxscript and onnx_ir without the fix)."""
    caplog.set_level(logging.INFO)
    levels = exporter_levels()
    torch.manual_seed(0)
    net = model_artifact.build_model("resnet18", 2)
    meta = Metadata("resnet18", ["a", "b"], Preprocessing.for_image_size(32), metrics={"test_accuracy": 0.5})
    artifact.save(tmp_path, net.state_dict(), meta)
    assert exporter_records(caplog.records) == []
    assert capsys.readouterr().out == ""  # the exporter's progress lines stay out too
    assert exporter_levels() == levels
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE, CODE_DIR]
    )  # model.int8.onnx is the trainer's (train.quantize), after save
    assert sorted(p.name for p in (tmp_path / CODE_DIR).iterdir()) == sorted(CODE_FILES)
    written = json.loads((tmp_path / model_artifact.METADATA_FILE).read_text())
    assert written["versions"] == artifact.library_versions() and written["metrics"] == {"test_accuracy": 0.5}
    loaded = model_artifact.load_metadata(tmp_path)
    assert model_artifact.onnx_path(tmp_path, loaded) == tmp_path / model_artifact.ONNX_FILE


def test_the_quiet_exporter_holds_its_loggers_at_warning_and_restores_them(caplog, capsys):
    caplog.set_level(logging.INFO)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # a level set by the user stays above WARNING
    try:
        before = exporter_levels()
        with artifact.quiet(artifact.EXPORTER_LOGGERS):
            logging.getLogger("onnx_ir.passes.common.unused_removal").info(INFO_LINE)
            logging.getLogger("torch.onnx._internal.exporter._core").warning("a warning passes")
            logging.getLogger("onnxscript.rewriter").warning("below the user's ERROR")
            print("[torch.onnx] progress")
        assert exporter_records(caplog.records) == ["torch.onnx._internal.exporter._core: a warning passes"]
        assert capsys.readouterr().out == ""
        assert exporter_levels() == before
    finally:
        logging.getLogger("onnxscript").setLevel(logging.NOTSET)


def test_a_failed_export_shows_its_progress_and_restores_the_levels(caplog, capsys):
    caplog.set_level(logging.INFO)
    before = exporter_levels()
    with pytest.raises(RuntimeError, match="exporter broke"), artifact.quiet(artifact.EXPORTER_LOGGERS):
        logging.getLogger("onnxscript.optimizer").info(INFO_LINE)
        print("[torch.onnx] Run decomposition...")
        raise RuntimeError("exporter broke")
    assert capsys.readouterr().out == "[torch.onnx] Run decomposition...\n"
    assert exporter_records(caplog.records) == []
    assert exporter_levels() == before
    assert logging.getLogger("onnxscript.optimizer").isEnabledFor(logging.INFO)  # as the job's log level says


def test_write_metadata_round_trips(tmp_path):
    meta = Metadata("resnet18", ["a", "b"], Preprocessing.for_image_size(32), weights_sha256="0" * 64)
    artifact.write_metadata(tmp_path, meta)
    assert model_artifact.load_metadata(tmp_path) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == [model_artifact.METADATA_FILE]  # no temporary file left
