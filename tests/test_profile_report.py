"""The profiler report's rules on synthetic numbers, and the files it writes."""

from __future__ import annotations

import json

import pytest

from train import profile_report as pr
from train.profiler import Summary

GIB = 2**30


def summary(times: list[float], waits: list[float] | None = None, **extra) -> Summary:
    """A profiler summary of one CPU process; ``extra`` overrides any field."""
    waits = waits if waits is not None else [0.0] * len(times)
    values = {
        "world_size": 1,
        "available_cpus": 4,
        "cpus_per_process": 4,
        "workers": 4,
        "batch_size": 16,
        "image_size": 224,
        "device": "cpu",
        "device_name": "cpu",
        "rank": 0,
        "init_seconds": 5.0,
        "run_seconds": 100.0,
        "steps": {"time": times, "data_wait": waits, "epoch": [1 + i // 10 for i in range(len(times))]},
        "samples": [{"step": i + 1, "wall": 1.0, "cpu_seconds": 3.6, "gpu": None, "cpu": 0.9} for i in range(5)],
        "cpu_utilization": 0.9,
        "gpu_utilization": None,
        "gpu_memory": None,
        "profiled_steps": [4, 6],
        "trace": {"file": "trace_rank0.json.gz", "steps": [5, 6], "gpu_busy_share": None, "top_ops": []},
    }
    return Summary.from_dict(values | extra)


def by_rule(s: Summary) -> dict[str, dict]:
    return {f["rule"]: f for f in pr.analyze(s)[1]}


def test_a_starved_loader_is_flagged_with_its_numbers_and_the_worker_fix():
    times, waits = [1.0] * 30, [0.7] * 30
    found = by_rule(summary(times, waits, workers=1))
    loader = found["LoaderBottleneck"]
    assert loader["triggered"] and loader["numbers"]["data_wait_share"] == pytest.approx(0.7)
    assert loader["numbers"]["workers"] == 1 and loader["threshold"] == {"data_wait_share": pr.LOADER_WAIT_SHARE}
    assert "raise num-workers to 4" in loader["recommendation"]
    assert found["WorkerCount"]["triggered"] and "set num-workers to 4" in found["WorkerCount"]["recommendation"]
    assert found["LowUtilization"]["triggered"] is False  # 0.9 CPU busy in this summary


def test_with_every_cpu_decoding_the_advice_is_cheaper_decoding():
    loader = by_rule(summary([1.0] * 30, [0.5] * 30, workers=4))["LoaderBottleneck"]
    assert loader["triggered"] and "resize the photos offline to about 256 px" in loader["recommendation"]
    assert "num-workers" not in loader["recommendation"]


def test_a_healthy_loader_is_not_flagged():
    found = by_rule(summary([0.3] * 30, [0.01] * 30))
    assert not found["LoaderBottleneck"]["triggered"] and not found["WorkerCount"]["triggered"]
    assert "keeps up" in found["LoaderBottleneck"]["recommendation"]


def test_warmup_and_profiled_steps_are_left_out_of_the_steady_state():
    times = [5.0, 3.0, 2.0, 4.0, 4.0, 4.0] + [0.3] * 20  # warm-up, then 3 profiled (slowed) steps
    waits = [4.0, 2.0, 1.0] + [0.0] * 23
    stats, findings = pr.analyze(summary(times, waits))
    assert stats["steady_steps"] == 20 and stats["median_step_seconds"] == pytest.approx(0.3)
    assert stats["data_wait_share"] == 0.0 and stats["data_wait_share_all_steps"] > 0.2
    assert not any(f["triggered"] for f in findings if f["rule"] in ("LoaderBottleneck", "StepOutliers"))


@pytest.mark.parametrize(
    "workers,cpus,triggered,text",
    [(1, 4, True, "set num-workers to 4"), (3, 4, False, "3 loader worker(s)"), (9, 4, True, "oversubscribe")],
)
def test_worker_count_against_cpus(workers, cpus, triggered, text):
    found = by_rule(summary([0.3] * 20, workers=workers, cpus_per_process=cpus))["WorkerCount"]
    assert found["triggered"] is triggered and text in found["recommendation"]
    if workers == 1:
        assert "costs little now" in found["recommendation"]  # no data wait to win back


def test_low_cpu_utilization_points_at_the_loader_when_steps_wait():
    waiting = by_rule(summary([1.0] * 20, [0.6] * 20, cpu_utilization=0.3))["LowUtilization"]
    assert waiting["triggered"] and "LoaderBottleneck" in waiting["recommendation"]
    idle = by_rule(summary([1.0] * 20, cpu_utilization=0.3))["LowUtilization"]
    assert idle["triggered"] and "batch-size" in idle["recommendation"] and idle["numbers"]["utilization"] == 0.3


def test_gpu_utilization_falls_back_to_the_traces_kernel_time():
    gpu = {"device": "cuda", "device_name": "H100", "gpu_memory": {"peak_reserved": 8 * GIB, "peak_allocated": 7 * GIB}}
    gpu["gpu_memory"]["total"] = 80 * GIB
    trace = {"file": "t.json.gz", "steps": [5, 6], "gpu_busy_share": 0.2, "top_ops": []}
    found = by_rule(summary([0.1] * 20, **gpu, trace=trace))["LowUtilization"]
    assert found["triggered"] and found["numbers"]["utilization"] == 0.2 and "kernel" in found["numbers"]["source"]
    nvml = by_rule(summary([0.1] * 20, **gpu, trace=trace, gpu_utilization=0.95))["LowUtilization"]
    assert not nvml["triggered"] and "NVML" in nvml["numbers"]["source"]
    unknown = by_rule(summary([0.1] * 20, **gpu, trace={}))["LowUtilization"]
    assert not unknown["triggered"] and not unknown["applicable"]


def test_batch_size_headroom_on_gpu_suggests_a_batch_that_fits():
    memory = {"peak_reserved": 16 * GIB, "peak_allocated": 14 * GIB, "total": 80 * GIB}
    found = by_rule(summary([0.1] * 20, device="cuda", gpu_memory=memory, gpu_utilization=0.4))["BatchSize"]
    assert found["triggered"] and found["numbers"]["peak_memory_share"] == pytest.approx(0.2)
    assert "batch-size 64 would still fit" in found["recommendation"] and "scale lr by 4" in found["recommendation"]
    busy = by_rule(summary([0.1] * 20, device="cuda", gpu_memory=memory, gpu_utilization=0.9))["BatchSize"]
    assert not busy["triggered"]  # a busy GPU gains little from a bigger batch
    full = memory | {"peak_reserved": 60 * GIB}
    found = by_rule(summary([0.1] * 20, device="cuda", gpu_memory=full, gpu_utilization=0.4))["BatchSize"]
    assert not found["triggered"] and "60.0 of 80.0 GiB (75%)" in found["recommendation"]


def test_batch_size_is_honestly_not_applicable_on_cpu():
    found = by_rule(summary([0.3] * 20))["BatchSize"]
    assert not found["triggered"] and not found["applicable"] and "Not applicable on CPU" in found["recommendation"]


@pytest.mark.parametrize("init,run,triggered", [(100.0, 300.0, True), (10.0, 30.0, False), (70.0, 3000.0, False)])
def test_initialization_needs_a_large_share_and_over_a_minute(init, run, triggered):
    found = by_rule(summary([0.3] * 20, init_seconds=init, run_seconds=run))["Initialization"]
    assert found["triggered"] is triggered and found["numbers"]["init_share"] == pytest.approx(init / run)


def test_step_outliers_name_the_steps_and_what_they_cost():
    times = [0.3] * 40
    for i in (20, 30):
        times[i] = 3.0  # the first steps of epochs 2 and 3 (10 steps each in this summary)
    waits = [t - 0.3 for t in times]
    found = by_rule(summary(times, waits))["StepOutliers"]
    assert found["triggered"] and found["numbers"]["steps"] == [21, 31] and found["numbers"]["outliers"] == 2
    assert found["numbers"]["excess_time_share"] > pr.OUTLIER_MAX_TIME_SHARE
    assert "waiting for the loader to refill" in found["recommendation"]
    compute = by_rule(summary(times))["StepOutliers"]  # same steps, batch ready: not the loader
    assert compute["triggered"] and "whose batch was ready" in compute["recommendation"]
    jitter = by_rule(summary([0.3, 0.35, 0.28, 0.6] * 10))["StepOutliers"]
    assert not jitter["triggered"] and jitter["numbers"]["outliers"] == 0


def test_report_files_are_written_and_self_contained(tmp_path):
    s = summary([0.3] * 30, [0.2] * 30, workers=1)
    s.trace["top_ops"] = [{"name": "aten::<conv>", "calls": 3, "self_cpu_ms": 12.5, "self_device_ms": 0.0}]
    report = pr.write(tmp_path, s)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["findings"] == report["findings"] and len(saved["findings"]) == len(pr.RULES)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and 'src="http' not in page
    assert "LoaderBottleneck" in page and 'class="fired"' in page and "aten::&lt;conv&gt;" in page


def test_a_run_without_steps_still_gets_a_report(tmp_path):
    s = summary([], [], profiled_steps=[4, 0], trace={}, samples=[], cpu_utilization=None)
    report = pr.write(tmp_path, s)
    assert report is not None and not any(f["triggered"] for f in report["findings"])
    assert (tmp_path / "report.html").exists()
