"""serve.registry without workers: the memory estimate, the pages of GET /models."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import psutil

from serve import registry
from serve.settings import Settings


def test_the_memory_estimate_counts_each_worker_s_runtime_and_files(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * (10 << 20))
    (tmp_path / "artifact.json").write_text("{}")
    onnx, torch = registry.memory_needed(tmp_path, 2, "onnx"), registry.memory_needed(tmp_path, 2, "torch")
    assert onnx == 2 * ((150 << 20) + (10 << 20) + 2) and torch - onnx == 2 * (550 << 20)


def test_available_memory_is_never_more_than_the_machine_s():
    assert 0 < registry.available_memory() <= psutil.virtual_memory().available


def test_pages_go_in_name_order_and_end_without_a_token(tmp_path):
    models = registry.Registry(dataclasses.replace(Settings.from_env(), multi_model=True), tmp_path, tmp_path, 0, None)
    for name in ("b", "a", "d", "c", "e"):
        models.models[name] = SimpleNamespace(name=name)
    first, token = models.page(2, "")
    second, token2 = models.page(2, token)
    third, token3 = models.page(2, token2)
    assert [m.name for m in first + second + third] == ["a", "b", "c", "d", "e"]
    assert (token, token2, token3) == ("b", "d", None)
