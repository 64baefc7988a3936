"""Precision policy: the autocast dtype the ``amp`` hyperparameter gets on this device."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from train.config import ConfigError


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: CPU bf16 autocast only pays with these (20x slower without)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on this device (None: full precision)."""
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise ConfigError("hyperparameter amp: fp16 needs a GPU; use bf16 or off on CPU")
    return torch.bfloat16 if mode == "bf16" or cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision when ``dtype`` is set, otherwise a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
