"""The epoch loop on a tiny model (whole training runs are in tests/test_main.py's jobs)."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
import torch

import model_artifact
from train import loop, stop
from train.data import BadFiles
from train.failure import TrainingError
from train.progress import Meter, MetricLogger


def tiny_step() -> loop.Step:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    prep = model_artifact.Preprocessing.for_image_size(2)
    return loop.Step(net, net, torch.nn.CrossEntropyLoss(), optimizer, scaler, torch.device("cpu"), None, False, prep)


def batches(count: int, unreadable_at: int | None = None) -> list:
    torch.manual_seed(0)
    out = [(torch.randint(0, 256, (2, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 1]), []) for _ in range(count)]
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
        step = tiny_step()
        step.net[1].weight.data.fill_(float("inf"))  # a diverged model
        run(step, batches(1), stop.StopRequest())


def test_evaluate_sums_the_whole_loader():
    result = loop.evaluate(tiny_step(), batches(3, unreadable_at=0), BadFiles([None] * 100, 0.5, "validation"))
    assert result["count"] == 4 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0


def _two_ranks(rank: int, init: str, unreadable: list[int], results) -> None:
    """Rank ``rank`` of 2 (gloo): an epoch of 3 batches, its batch ``unreadable[rank]`` all unreadable."""
    torch.distributed.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        torch.manual_seed(0)
        step = tiny_step()
        step.model = torch.nn.parallel.DistributedDataParallel(step.net)
        loader = batches(3, unreadable_at=unreadable[rank])
        loader = [(None, None, [10 + rank]) if b[0] is None else b for b in loader]
        bad = BadFiles([None] * 20, 0.15, "training")  # 3 allowed; each rank alone sees 1
        finished = loop.train_one_epoch(step, loader, bad, stop.StopRequest(), MetricLogger(Meter(), 1, 0))
        weights = torch.cat([p.detach().flatten() for p in step.net.parameters()])
        results.put((rank, finished, sorted(bad.indices), weights.tolist()))
        torch.distributed.barrier()  # as train.main does: no rank tears gloo down while the other still talks
    finally:
        torch.distributed.destroy_process_group()


def test_a_rank_with_an_unreadable_batch_still_joins_the_step_and_bad_files_add_up(tmp_path):
    """Without the idle step, rank 1 would vote on stopping while rank 0 all-reduces gradients."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    ranks = [context.Process(target=_two_ranks, args=(r, init, [None, 1], results)) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=90)
    assert [p.exitcode for p in ranks] == [0, 0]
    got = dict((rank, rest) for rank, *rest in (results.get(timeout=1) for _ in range(2)))
    assert got[0][0] and got[1][0]  # both finished the epoch
    assert got[0][1] == got[1][1] == [11]  # rank 1's unreadable file, known to both after the epoch
    assert got[0][2] == got[1][2]  # the same weights: every step was taken together


def test_unreadable_files_are_limited_over_all_ranks(monkeypatch):
    bad = BadFiles([(f"{i}.jpg", 0) for i in range(20)], 0.1, "training")  # 2 allowed
    bad.add([3, 4])  # this process: within the limit
    monkeypatch.setattr(loop.distributed, "union", lambda items: items | {9})  # another rank saw one more
    with pytest.raises(TrainingError, match="3 of 20 training images are unreadable"):
        bad.merge()
