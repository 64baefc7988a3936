"""Checkpoint files: atomic writes, identity checks, resuming a training state, the best weights."""

from __future__ import annotations

import pytest
import torch

import model_artifact
from train import checkpoint, loop
from train.failure import TrainingError
from train.progress import Meter

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


def _step() -> loop.Step:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    prep = model_artifact.Preprocessing.for_image_size(1)
    return loop.Step(net, net, torch.nn.CrossEntropyLoss(), optimizer, scaler, torch.device("cpu"), None, False, prep)


def test_a_resumable_state_comes_back_into_a_fresh_step(tmp_path):
    saved = _step()
    pixels = torch.randint(0, 256, (4, 3, 1, 1), dtype=torch.uint8)
    loop.train_step(saved, pixels, torch.tensor([0, 1, 0, 1]))  # momentum buffers to keep
    meter = Meter(loss_sum=3.0, correct=2, seen=4, batches=1)
    record = checkpoint.Record([{"epoch": 1}], {"epoch": 1, "score": 0.5})
    checkpoint.save_resumable(tmp_path, IDENTITY, 1, meter, saved, record)
    fresh = _step()
    epoch, resumed_meter, resumed_record = checkpoint.resume(tmp_path, IDENTITY, fresh, is_main=True)
    assert epoch == 1 and resumed_meter == meter and resumed_record == record
    assert torch.equal(fresh.net[1].weight, saved.net[1].weight)
    kept, restored = saved.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert kept and all(torch.equal(restored[i]["momentum_buffer"], kept[i]["momentum_buffer"]) for i in kept)
    assert checkpoint.resume(tmp_path / "none", IDENTITY, fresh, is_main=True) is None


def test_best_weights_round_trip(tmp_path):
    best, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    checkpoint.save_best(tmp_path, best)
    checkpoint.load_best(tmp_path, other, is_main=True)
    assert torch.equal(other.weight, best.weight) and (tmp_path / checkpoint.BEST_FILE).exists()
