"""Checkpoint files: atomic writes, identity checks, the stop flag."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from train import checkpoint
from train.failure import TrainingError

IDENTITY = {"hyperparameters": {"lr": "0.1", "model": "resnet18"}, "class_names": ["a", "b"], "world_size": 1}


def test_save_and_load(tmp_path):
    state = {"identity": IDENTITY, "epoch": 3, "weights": torch.ones(2)}
    checkpoint.save(tmp_path, state)
    loaded = checkpoint.load(tmp_path, IDENTITY)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT_FILE]  # no temp file left


def test_no_checkpoint_is_none(tmp_path):
    assert checkpoint.load(tmp_path, {}) is None


def test_identity_ignores_what_does_not_change_the_result():
    first = checkpoint.identity({"lr": 0.1, "num_workers": 2, "log_interval": 50}, ["a"], 1)
    again = checkpoint.identity({"lr": 0.1, "num_workers": None, "log_interval": 1}, ["a"], 1)
    assert first == again
    assert checkpoint.identity({"lr": 0.01}, ["a"], 1) != checkpoint.identity({"lr": 0.1}, ["a"], 1)


def test_a_checkpoint_of_another_configuration_starts_fresh_with_a_warning(tmp_path, caplog):
    """A reused checkpoint location (a tuning job's trials) must not resume someone else's state."""
    checkpoint.save(tmp_path, {"identity": IDENTITY, "epoch": 2})
    other = IDENTITY | {"hyperparameters": {"lr": "0.01", "model": "resnet18"}, "world_size": 2}
    assert checkpoint.load(tmp_path, other) is None
    assert "written by another configuration (lr 0.1 → 0.01; world_size 1 → 2): starting fresh" in caplog.text
    assert checkpoint.load(tmp_path, IDENTITY)["epoch"] == 2  # nothing was deleted


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
