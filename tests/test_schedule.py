"""The learning-rate schedule."""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from train import schedule


def args(**kw) -> Namespace:
    base = {"lr": 0.1, "epochs": 10, "lr_warmup_epochs": 1, "lr_scheduler": "cosine", "lr_gamma": 0.1}
    return Namespace(**(base | {"lr_step_size": 3} | kw))


def test_warmup_then_cosine_to_zero():
    a = args()
    assert schedule.lr_at(a, 0) == pytest.approx(0.05)  # warmup: lr * 1/2
    assert schedule.lr_at(a, 1) == pytest.approx(0.1)  # cosine starts at lr
    assert schedule.lr_at(a, 10) == pytest.approx(0.0, abs=1e-12)


def test_step_and_constant():
    assert [schedule.lr_at(args(lr_scheduler="step", lr_warmup_epochs=0), e) for e in (0, 2, 3, 6)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001]
    )
    assert schedule.lr_at(args(lr_scheduler="constant"), 7) == 0.1


def test_set_lr_reaches_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    schedule.set_lr(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 0.02]
