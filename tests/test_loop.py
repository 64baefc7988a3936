"""The epoch loop on a tiny model (whole training runs are in tests/test_main.py's jobs)."""

from __future__ import annotations

import signal

import pytest
import torch

from train import loop, stop
from train.data import BadFiles
from train.failure import TrainingError
from train.progress import Meter, MetricLogger


def tiny_step() -> loop.Step:
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return loop.Step(net, net, torch.nn.CrossEntropyLoss(), optimizer, scaler, torch.device("cpu"), None, False)


def batches(count: int, unreadable_at: int | None = None) -> list:
    torch.manual_seed(0)
    out = [(torch.randn(2, 4), torch.tensor([0, 1]), []) for _ in range(count)]
    if unreadable_at is not None:
        out[unreadable_at] = (None, None, [7])
    return out


def run(step: loop.Step, loader: list, request: stop.StopRequest, meter: Meter | None = None) -> tuple[bool, Meter]:
    meter = meter or Meter()
    bad = BadFiles([None] * 100, 0.5, "training")
    return loop.train_one_epoch(step, loader, bad, request, MetricLogger(meter, 1, 0)), meter


def test_an_epoch_trains_every_batch_and_counts_unreadable_ones():
    finished, meter = run(tiny_step(), batches(5, unreadable_at=2), stop.StopRequest())
    assert finished and meter.batches == 5 and meter.seen == 8 and meter.total_time > 0


def test_a_single_process_stops_after_the_step_in_progress():
    request = stop.StopRequest()
    request.signal = signal.SIGTERM  # asked before the first step
    finished, meter = run(tiny_step(), batches(5), request)
    assert not finished and meter.batches == 1


def test_a_stop_is_voted_at_the_interval_or_the_epochs_last_step(monkeypatch):
    monkeypatch.setattr(stop.distributed, "is_active", lambda: True)  # as with several processes on GPUs
    monkeypatch.setattr(stop.distributed, "on_gpus", lambda: True)
    monkeypatch.setattr(stop.distributed, "any_true", lambda flag: flag)
    request = stop.StopRequest()
    request.signal = signal.SIGTERM  # asked before the first step
    finished, meter = run(tiny_step(), batches(stop.VOTE_EVERY + 5), request)
    assert not finished and meter.batches == stop.VOTE_EVERY
    finished, meter = run(tiny_step(), batches(3), request, Meter(batches=stop.VOTE_EVERY + 1))  # resumed
    assert not finished and meter.batches == stop.VOTE_EVERY + 4  # the epoch's last step


def test_a_diverging_loss_fails_with_advice():
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) in epoch 1: lower lr or use amp=off"):
        run(tiny_step(), [(torch.full((2, 4), float("nan")), torch.tensor([0, 1]), [])], stop.StopRequest())


def test_evaluate_sums_the_whole_loader():
    result = loop.evaluate(tiny_step(), batches(3, unreadable_at=0), BadFiles([None] * 100, 0.5, "validation"))
    assert result["count"] == 4 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0
