"""The precision policy: which autocast dtype ``amp`` gets on a device."""

from __future__ import annotations

import pytest
import torch

from train import precision
from train.config import ConfigError

CPU = torch.device("cpu")


def test_off_and_bf16_on_cpu():
    assert precision.amp_dtype("off", CPU) is None
    assert precision.amp_dtype("bf16", CPU) == torch.bfloat16


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.amp_dtype("auto", CPU) is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.amp_dtype("auto", CPU) == torch.bfloat16


def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        precision.amp_dtype("fp16", CPU)


def test_autocast_only_with_a_dtype():
    with precision.autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
