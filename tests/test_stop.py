"""The stop flag and the ranks' vote on it."""

from __future__ import annotations

import os
import signal

from train import stop as stop_lib


def test_sigterm_sets_the_stop_flag(restore_signals):
    stop = stop_lib.StopRequest().install()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal == signal.SIGTERM


def test_the_vote_is_held_every_few_steps_and_at_the_last(monkeypatch):
    monkeypatch.setattr(stop_lib.distributed, "is_active", lambda: True)  # several processes on GPUs
    monkeypatch.setattr(stop_lib.distributed, "on_gpus", lambda: True)
    monkeypatch.setattr(stop_lib.distributed, "any_true", lambda flag: flag)
    stop = stop_lib.StopRequest()
    stop.signal = signal.SIGTERM
    every, last = stop_lib.VOTE_EVERY, 3 * stop_lib.VOTE_EVERY + 5
    assert [s for s in range(1, last + 1) if stop.vote(s, last)] == [every, 2 * every, 3 * every, last]
    assert not stop_lib.StopRequest().vote(every, last)  # nobody asked: no stop


def test_a_single_process_stops_at_the_next_step():
    stop = stop_lib.StopRequest()
    assert not stop.vote(1, 100)
    stop.signal = signal.SIGTERM
    assert stop.vote(1, 100) and stop.vote(7, 100)


def test_processes_on_cpus_vote_every_step(monkeypatch):
    monkeypatch.setattr(stop_lib.distributed, "is_active", lambda: True)  # several processes, gloo
    monkeypatch.setattr(stop_lib.distributed, "on_gpus", lambda: False)
    votes = []
    monkeypatch.setattr(stop_lib.distributed, "any_true", lambda flag: votes.append(flag) or flag)
    stop = stop_lib.StopRequest()
    assert not any(stop.vote(s, 50) for s in range(1, 4)) and votes == [False, False, False]
    stop.signal = signal.SIGTERM
    assert stop.vote(4, 50)
