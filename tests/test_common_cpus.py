"""``common.cpus.available_cpus``: the affinity mask capped by the cgroup (v2 or v1) quota, rounded down."""

from __future__ import annotations

import os

import pytest

from common import cpus


def test_available_cpus_respects_affinity_and_cgroup_quota(monkeypatch):
    assert 1 <= cpus.available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(cpus, "_cgroup_cpu_quota", lambda: 0.5)
    assert cpus.available_cpus() == 1


@pytest.mark.parametrize(("quota", "expected"), [(None, 8), (1.5, 1), (2.0, 2), (3.99, 3), (0.2, 1), (64.0, 8)])
def test_a_quota_rounds_down_to_at_least_one_and_never_above_the_affinity(monkeypatch, quota, expected):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(cpus, "_cgroup_cpu_quota", lambda: quota)
    assert cpus.available_cpus() == expected


def fake_cgroup(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2
        ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
        ({"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.5),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, unlimited
        ({"cpu.max": "garbage\n", "cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
        ({}, None),  # no cgroup files at all
    ],
)
def test_the_quota_is_read_from_cgroup_v2_then_v1(monkeypatch, tmp_path, files, quota):
    monkeypatch.setattr(cpus, "CGROUP", fake_cgroup(tmp_path, files))
    assert cpus._cgroup_cpu_quota() == quota


def test_train_and_serve_share_the_one_function():
    from serve import settings
    from train import config

    assert config.available_cpus is settings.available_cpus is cpus.available_cpus
