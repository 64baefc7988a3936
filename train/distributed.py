"""Several hosts and devices: ranks from SageMaker's host list, one process group.

The launcher plans the processes (``process_env``); each training process then joins the
group (``init``). Master is the first host; a host's rank is its position in the list, so
local mode's suffixed names (``algo-1-xkfh2``) work as they are.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from train.failure import TrainingError

log = logging.getLogger(__name__)
DEFAULT_MASTER_PORT = 29500
HOST_WAIT_SECONDS = 900  # what the toolkit allows hosts to appear in DNS


@dataclass(frozen=True)
class Context:
    """Who this process is in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes per host
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_first_host(self) -> bool:
        """This process runs on host 0, the host of rank 0 (the model's writer)."""
        return self.rank < self.local_world_size


def env_rank() -> int:
    """This process's rank as the launcher set it (0 when run alone); readable before ``init``."""
    return int(os.environ.get("RANK", "0"))


def process_env(hosts: list[str], current_host: str, local_rank: int, per_host: int, interface: str | None) -> dict:
    """The environment of one training process (torchrun's variable names)."""
    if current_host not in hosts:
        raise TrainingError(f"current host {current_host!r} is not in the host list {hosts}")
    env = {
        "RANK": str(hosts.index(current_host) * per_host + local_rank),
        "WORLD_SIZE": str(len(hosts) * per_host),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(per_host),
        "MASTER_ADDR": hosts[0] if len(hosts) > 1 else "127.0.0.1",
        "MASTER_PORT": os.environ.get("MASTER_PORT", str(DEFAULT_MASTER_PORT)),
    }
    if interface and Path("/sys/class/net", interface).exists():  # gloo/NCCL pick this NIC
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = interface
    return env


def wait_for_hosts(hosts: list[str], timeout: float = HOST_WAIT_SECONDS) -> None:
    """Block until every host name resolves (containers on a network appear one by one)."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            try:
                socket.getaddrinfo(host, None)
                break
            except socket.gaierror:
                if time.monotonic() > deadline:
                    raise TrainingError(f"host {host!r} did not resolve within {timeout:.0f} s") from None
                time.sleep(1)


def init(timeout_minutes: float = 30) -> Context:
    """Join the process group described by the launcher's variables (or run alone)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), env_rank()
    local_rank, per_host = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        log.info(
            "joining process group: rank %d of %d via %s at %s:%s",
            rank,
            world,
            backend,
            os.environ["MASTER_ADDR"],
            os.environ["MASTER_PORT"],
        )
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
        log.info("process group ready: world size %d", world)
    return Context(rank=rank, world_size=world, local_rank=local_rank, local_world_size=per_host, device=device)


def is_active() -> bool:
    """Whether a process group is up (several processes train together)."""
    return dist.is_available() and dist.is_initialized()


def on_gpus() -> bool:
    """Whether the process group is NCCL's: its collectives synchronise the GPU."""
    return is_active() and dist.get_backend() == "nccl"


def all_sum(values: list[float]) -> list[float]:
    """Sum numbers over all ranks (identity when alone)."""
    if not is_active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_true(flag: bool) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    return all_sum([float(flag)])[0] > 0 if is_active() else flag


def union(items: set[int]) -> set[int]:
    """The union of every rank's ``items`` (identity when alone)."""
    if not is_active():
        return set(items)
    gathered: list[set[int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, set(items))
    return set().union(*gathered)


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (no-op when alone)."""
    if is_active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly."""
    if is_active():
        dist.destroy_process_group()
