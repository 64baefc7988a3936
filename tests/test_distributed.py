"""Ranks from the host list, host resolution, collectives when alone."""

from __future__ import annotations

import pytest

from train import distributed
from train.failure import TrainingError

HOSTS = ["algo-1-xkfh2", "algo-2-p9q3z", "algo-3-aa7rt"]


def test_ranks_follow_the_host_list_with_local_mode_suffixes():
    env = distributed.process_env(HOSTS, "algo-2-p9q3z", local_rank=1, per_host=4, interface=None)
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "12" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "algo-1-xkfh2" and env["LOCAL_WORLD_SIZE"] == "4"


def test_single_host_uses_loopback_and_interface_only_if_present():
    env = distributed.process_env(["algo-1"], "algo-1", 0, 1, interface="lo")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["GLOO_SOCKET_IFNAME"] == "lo"
    assert "GLOO_SOCKET_IFNAME" not in distributed.process_env(["h"], "h", 0, 1, interface="eth-nope")


def test_master_port_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "31999")
    assert distributed.process_env(HOSTS, HOSTS[0], 0, 1, None)["MASTER_PORT"] == "31999"


def test_unknown_current_host_is_an_error():
    with pytest.raises(TrainingError, match="not in the host list"):
        distributed.process_env(HOSTS, "algo-9", 0, 1, None)


def test_wait_for_hosts(monkeypatch):
    distributed.wait_for_hosts(["localhost"], timeout=1)
    with pytest.raises(TrainingError, match="did not resolve within 0 s"):
        distributed.wait_for_hosts(["no-such-host.invalid"], timeout=0)


def test_collectives_alone_are_identities():
    assert distributed.all_sum([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.any_true(True) and not distributed.any_true(False)
    assert distributed.broadcast({"a": 1}) == {"a": 1}


def test_the_context_reads_the_launchers_variables(monkeypatch):
    for key, value in {"WORLD_SIZE": "1", "RANK": "5", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    ctx = distributed.init()
    assert distributed.env_rank() == ctx.rank == 5 and ctx.local_world_size == 4
    assert not ctx.on_first_host and distributed.Context(rank=3, local_world_size=4).on_first_host
