"""Opt-in profiling (``profile=true``): whole-run step timings plus a bounded torch.profiler trace.

For every training step of the run it keeps the wall time and the data wait (two floats), and
about once a second the CPU utilization of this process and its loader workers (and the GPU's,
where NVML answers). torch.profiler traces ``profile-steps`` steps after a short warm-up, so
the trace stays small; it is written to ``<output data dir>/profile/`` and so ends up in
output.tar.gz. ``train.profile_report`` turns the summary into findings.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch
from torch.autograd import DeviceType

log = logging.getLogger(__name__)
# The first steps start the loader workers and warm up the allocator and cudnn.benchmark:
# tracing them would show start-up, not the steady state.
TRACE_WAIT_STEPS = 3
TRACE_WARMUP_STEPS = 1  # torch.profiler records but discards it, so its own start-up cost stays out
SAMPLE_SECONDS = 1.0  # NVML itself averages GPU utilization over up to a second
TOP_OPS = 15


@dataclass
class Workload:
    """How the profiled process is set up: what the report's rules weigh the measurements against."""

    world_size: int
    available_cpus: int
    cpus_per_process: int
    workers: int  # loader workers
    batch_size: int
    image_size: int


@dataclass
class Steps:
    """Per training step of the run (index i: step i + 1): wall time, data wait (s) and epoch."""

    time: list[float]
    data_wait: list[float]
    epoch: list[int]


@dataclass
class Summary(Workload):
    """Everything one process measured; ``as_dict`` is ``report.json``'s ``summary``."""

    device: str  # "cuda" or "cpu"
    device_name: str
    rank: int
    init_seconds: float  # process start to the first training step
    run_seconds: float
    steps: Steps
    samples: list[dict]  # about once a second: step, wall, cpu_seconds, gpu, cpu (utilization)
    cpu_utilization: float | None
    gpu_utilization: float | None
    gpu_memory: dict | None  # peak_allocated, peak_reserved, total (bytes); None on CPU
    profiled_steps: list[int]  # [first, last], 1-based: slowed by the profiler's own overhead
    trace: dict  # file, steps, gpu_busy_share, top_ops; {} when no step was traced

    def as_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Summary:
        """The inverse of ``as_dict`` (``report.json``'s ``summary`` read back)."""
        return cls(**(values | {"steps": Steps(**values["steps"])}))


class Profiler:
    """Collects the numbers of one training process; ``summary`` returns them."""

    def __init__(self, folder: Path, device: torch.device, rank: int, active_steps: int, workload: Workload):
        self.folder, self.device, self.rank, self.workload = folder, device, rank, workload
        self.process = psutil.Process()
        self.started = self.process.create_time()  # wall clock; initialization counts from here
        self.first_step: float | None = None
        self.step_times: list[float] = []
        self.data_waits: list[float] = []
        self.epochs: list[int] = []
        self.samples: list[dict] = []
        self.trace: dict = {}
        self._epoch, self._mark, self._running = 0, None, False
        self._nvml = device.type == "cuda" and _gpu_utilization(device) is not None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        first = TRACE_WAIT_STEPS + TRACE_WARMUP_STEPS + 1
        self.trace_steps = (first, first + active_steps - 1)  # 1-based, inclusive
        self._torch = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=TRACE_WAIT_STEPS, warmup=TRACE_WARMUP_STEPS, active=active_steps, repeat=1
            ),
            on_trace_ready=self._export,
        )

    def start(self) -> Profiler:
        """Start tracing; call right before the first training step."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._torch.start()
        self._running = True
        self.begin_epoch(0)
        return self

    def begin_epoch(self, epoch: int) -> None:
        """Mark an epoch's start, so utilization leaves out the evaluation before it."""
        self._epoch = epoch
        self._mark = (time.perf_counter(), cpu_by_process(self.process))

    def step(self, waited: float, elapsed: float) -> None:
        """One training step ended: ``elapsed`` seconds in all, ``waited`` of them for its batch."""
        if self.first_step is None:
            self.first_step = time.time() - elapsed
        self.step_times.append(elapsed)
        self.data_waits.append(waited)
        self.epochs.append(self._epoch)
        if time.perf_counter() - self._mark[0] >= SAMPLE_SECONDS:
            self._sample()
        self._torch.step()

    def _sample(self) -> None:
        now, cpu = time.perf_counter(), cpu_by_process(self.process)
        then, before = self._mark
        seconds = cpu_delta(before, cpu)
        gpu = _gpu_utilization(self.device) if self._nvml else None
        self.samples.append({"step": len(self.step_times), "wall": now - then, "cpu_seconds": seconds, "gpu": gpu})
        self._mark = (now, cpu)

    def stop_trace(self) -> None:
        """Stop tracing (a trace still recording is exported); safe to call twice."""
        if self._running:
            self._running = False
            try:
                self._torch.stop()
            except Exception:  # profiling must never fail the job or mask its own error
                log.exception("could not stop the profiler")

    def summary(self) -> Summary:
        """Everything measured; the run ends now."""
        self.stop_trace()
        cpus = self.workload.cpus_per_process
        wall = sum(s["wall"] for s in self.samples)
        busy = sum(s["cpu_seconds"] for s in self.samples)
        gpu = [s["gpu"] for s in self.samples if s["gpu"] is not None]
        end = time.time()
        return Summary(
            **asdict(self.workload),
            device=self.device.type,
            device_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            rank=self.rank,
            init_seconds=(self.first_step or end) - self.started,
            run_seconds=end - self.started,
            steps=Steps(_rounded(self.step_times), _rounded(self.data_waits), list(self.epochs)),
            samples=[s | {"cpu": s["cpu_seconds"] / max(s["wall"] * cpus, 1e-9)} for s in self.samples],
            cpu_utilization=busy / (wall * cpus) if wall else None,
            gpu_utilization=statistics.median(gpu) if gpu else None,
            gpu_memory=_gpu_memory(self.device),
            # steps slowed by the profiler's own overhead (its warm-up and traced steps)
            profiled_steps=[TRACE_WAIT_STEPS + 1, min(self.trace_steps[1], len(self.step_times))],
            trace=self.trace,
        )

    def _export(self, prof: torch.profiler.profile) -> None:
        """torch.profiler's ``on_trace_ready``: write the trace, keep its step range and top ops."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"trace_rank{self.rank}.json.gz"  # torch gzips it; Perfetto opens .json.gz
        prof.export_chrome_trace(str(path))
        events = prof.events()
        first, last = self.trace_steps
        self.trace = {
            "file": path.name,
            "steps": [first, min(last, len(self.step_times))],
            "gpu_busy_share": kernel_busy_share(events) if self.device.type == "cuda" else None,
            "top_ops": top_ops(prof),
        }
        log.info("profiler trace of steps %d-%d written to %s", *self.trace["steps"], path)


def kernel_busy_share(events) -> float | None:
    """Share of the traced steps' span in which at least one GPU kernel or copy ran."""
    steps = [e.time_range for e in events if e.name.startswith("ProfilerStep#")]
    if not steps:
        return None
    device = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    start, end = min(r.start for r in steps), max(r.end for r in steps)
    busy, reached = 0.0, start
    for lo, hi in device:  # union of the intervals, clipped to the steps' span
        lo, hi = max(lo, reached), min(hi, end)
        if hi > lo:
            busy += hi - lo
            reached = hi
    return busy / max(end - start, 1e-9)


def top_ops(prof: torch.profiler.profile) -> list[dict]:
    """The operators with the most self time in the traced steps (CPU and, on GPU, device)."""
    rows = [
        {"name": avg.key, "calls": avg.count, "self_cpu_ms": avg.self_cpu_time_total / 1e3,
         "self_device_ms": avg.self_device_time_total / 1e3}
        for avg in prof.key_averages()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: max(r["self_cpu_ms"], r["self_device_ms"]), reverse=True)[:TOP_OPS]


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 5) for v in values]  # 10 µs: keeps report.json small for long runs


def cpu_by_process(process: psutil.Process) -> dict[int, float]:
    """CPU seconds (user + system) of this process and each of its children (loader workers)."""
    seconds = {}
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            times = p.cpu_times()
            seconds[p.pid] = times.user + times.system
    return seconds


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two ``cpu_by_process`` readings, by the processes alive at the second."""
    # A worker born in between counts from zero: its whole CPU time falls in the interval.
    return sum(max(now - before.get(pid, 0.0), 0.0) for pid, now in after.items())


def _gpu_utilization(device: torch.device) -> float | None:
    try:
        return torch.cuda.utilization(device) / 100
    except Exception:  # needs NVML (nvidia-ml-py); the trace's kernel busy share stands in
        return None


def _gpu_memory(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    return {
        "peak_allocated": torch.cuda.max_memory_allocated(device),
        "peak_reserved": torch.cuda.max_memory_reserved(device),
        "total": torch.cuda.get_device_properties(device).total_memory,
    }
