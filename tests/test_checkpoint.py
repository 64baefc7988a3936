"""Checkpoint files: atomic writes, identity checks, the stop flag."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from train import checkpoint
from train.failure import TrainingError


def test_save_and_load(tmp_path):
    state = {"identity": {"model": "resnet18"}, "epoch": 3, "weights": torch.ones(2)}
    checkpoint.save(tmp_path, state)
    loaded = checkpoint.load(tmp_path, {"model": "resnet18"})
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temp file left


def test_no_checkpoint_is_none(tmp_path):
    assert checkpoint.load(tmp_path, {}) is None


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    checkpoint.save(tmp_path, {"identity": {"model": "resnet50", "class_names": ["a", "b"]}})
    with pytest.raises(TrainingError, match=r"model='resnet50'.*model='resnet18'"):
        checkpoint.load(tmp_path, {"model": "resnet18", "class_names": ["a", "b"]})


def test_an_unreadable_checkpoint_says_what_to_do(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="delete it to start over"):
        checkpoint.load(tmp_path, {})


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save(tmp_path, {"epoch": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path, {"epoch": 2, "bad": Unsaveable()})
    assert checkpoint.load(tmp_path, {})["epoch"] == 1


def test_sigterm_sets_the_stop_flag(restore_signals):
    stop = checkpoint.StopRequest().install()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal == signal.SIGTERM
