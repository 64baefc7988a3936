"""The profiler report: what SageMaker Debugger's rules checked in the course job, on our numbers.

Each rule turns the profiler's ``Summary`` (``train.profiler``) into a finding: ``rule``,
``triggered``, ``applicable``, the ``numbers`` behind it, its ``threshold`` and a concrete
``recommendation``. ``write`` puts them into ``report.json`` and a self-contained
``report.html`` with the plots embedded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import statistics
from pathlib import Path

from train.profiler import Summary

log = logging.getLogger(__name__)
# Above a quarter of each step spent waiting for the batch, more decoding capacity shortens
# steps noticeably. Measured on 2 CPU cores: healthy runs wait 1-2%, a starved one 62-80%.
LOADER_WAIT_SHARE = 0.25
# Debugger's Dataloader rule: fewer workers than 70% of the cores leaves decoding capacity
# idle; more than twice the cores only adds contention.
WORKERS_MIN_SHARE, WORKERS_MAX_SHARE = 0.7, 2.0
# Less than half the device busy: half of what the instance costs is paid for idling.
LOW_UTILIZATION = 0.5
# Debugger's BatchSize rule: below 70% GPU utilization a bigger batch can still add throughput.
GPU_BUSY = 0.7
# Peak GPU memory under half of the card: the batch could at least double; suggestions aim
# at 80% so allocator fragmentation and evaluation still fit.
MEMORY_LOW_SHARE, MEMORY_TARGET_SHARE = 0.5, 0.8
# Initialization over a fifth of the run, and over a minute: shorter start-ups are dwarfed by
# SageMaker's own provisioning (minutes), so they are not worth optimizing.
INIT_MAX_SHARE, INIT_MIN_SECONDS = 0.2, 60.0
# A step over 3x the median is an outlier (the median, unlike Debugger's 3 standard
# deviations, is not dragged up by the outliers themselves); they matter once their excess
# over the median costs a tenth of the training time.
OUTLIER_FACTOR, OUTLIER_MAX_TIME_SHARE = 3.0, 0.1


def warmup_steps(summary: Summary) -> int:
    """Steps before the profiler's own (loader start-up, allocator warm-up): not the steady state."""
    return summary.profiled_steps[0] - 1


def steady_steps(summary: Summary) -> list[int]:
    """Indices of the steps that show the steady state: after the warm-up, outside the profiled steps
    (tracing slows those down)."""
    count, warmup = len(summary.steps.time), warmup_steps(summary)
    first, last = summary.profiled_steps
    steady = [i for i in range(warmup, count) if not first <= i + 1 <= last]
    return steady or list(range(min(warmup, max(count - 1, 0)), count))  # a short run: what there is


def step_stats(summary: Summary) -> dict:
    """Step-time figures of the steady steps, and the data-wait share of all steps."""
    times, waits = summary.steps.time, summary.steps.data_wait
    steady = steady_steps(summary)
    steady_t, steady_w = [times[i] for i in steady], [waits[i] for i in steady]
    median = statistics.median(steady_t) if steady_t else None
    return {
        "steps": len(times),
        "steady_steps": len(steady),
        "training_seconds": sum(times),
        "median_step_seconds": median,
        "p95_step_seconds": _quantile(steady_t, 0.95),
        "median_data_wait_seconds": statistics.median(steady_w) if steady_w else None,
        "data_wait_share": sum(steady_w) / sum(steady_t) if sum(steady_t) else 0.0,
        "data_wait_share_all_steps": sum(waits) / sum(times) if sum(times) else 0.0,
        "img_per_sec": summary.batch_size * summary.world_size / median if median else None,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def finding(rule: str, triggered: bool, numbers: dict, threshold: dict, recommendation: str, applicable=True) -> dict:
    """One rule's result."""
    return {
        "rule": rule,
        "triggered": bool(triggered),
        "applicable": applicable,
        "numbers": numbers,
        "threshold": threshold,
        "recommendation": recommendation,
    }


def loader_bottleneck(summary: Summary, stats: dict) -> dict:
    """Steps that spend a large share of their time waiting for the next batch."""
    share, workers, cpus = stats["data_wait_share"], summary.workers, summary.cpus_per_process
    numbers = {
        "data_wait_share": share,
        "data_wait_share_all_steps": stats["data_wait_share_all_steps"],
        "median_step_seconds": stats["median_step_seconds"],
        "median_data_wait_seconds": stats["median_data_wait_seconds"],
        "workers": workers,
        "cpus_per_process": cpus,
    }
    triggered = share > LOADER_WAIT_SHARE
    cheaper = (
        f"resize the photos offline to about {round(summary.image_size / 0.875)} px (each is decoded at full "
        "size), prefer JPEG (decoded at reduced scale) to PNG, or choose an instance with more vCPUs per GPU"
    )
    if not triggered:
        text = f"Steps wait for data {share:.1%} of the time: the loader keeps up."
    elif workers < cpus:
        text = (
            f"Steps wait for data {share:.0%} of the time with {workers} loader worker(s) for {cpus} CPUs: "
            f"raise num-workers to {cpus} (or leave it auto). If they still wait, {cheaper}."
        )
    else:
        text = f"Steps wait for data {share:.0%} of the time although all {cpus} CPUs decode: {cheaper}."
    return finding("LoaderBottleneck", triggered, numbers, {"data_wait_share": LOADER_WAIT_SHARE}, text)


def worker_count(summary: Summary, stats: dict) -> dict:
    """Loader workers against the CPUs this process may use."""
    workers, cpus = summary.workers, summary.cpus_per_process
    ratio = workers / cpus
    numbers = {"workers": workers, "cpus_per_process": cpus, "available_cpus": summary.available_cpus}
    threshold = {"min_workers_per_cpu": WORKERS_MIN_SHARE, "max_workers_per_cpu": WORKERS_MAX_SHARE}
    if ratio < WORKERS_MIN_SHARE:
        text = f"{workers} loader worker(s) for {cpus} CPUs per process: set num-workers to {cpus} (auto does)."
        if stats["data_wait_share"] <= LOADER_WAIT_SHARE:
            text += f" Steps wait for data only {stats['data_wait_share']:.0%} of the time, so this costs little now."
    elif ratio > WORKERS_MAX_SHARE:
        text = f"{workers} loader workers oversubscribe {cpus} CPUs per process: set num-workers to {cpus}."
    else:
        text = f"{workers} loader worker(s) for {cpus} CPUs per process."
    triggered = not WORKERS_MIN_SHARE <= ratio <= WORKERS_MAX_SHARE
    return finding("WorkerCount", triggered, numbers | {"workers_per_cpu": ratio}, threshold, text)


def device_utilization(summary: Summary) -> tuple[float | None, str]:
    """The device's utilization and where it comes from."""
    if summary.device != "cuda":
        return summary.cpu_utilization, "CPU time of this process and its loader workers / (wall time x CPUs)"
    if summary.gpu_utilization is not None:
        return summary.gpu_utilization, "median of NVML GPU utilization samples"
    return summary.trace.get("gpu_busy_share"), "share of the traced steps with a GPU kernel or copy running"


def low_utilization(summary: Summary, stats: dict) -> dict:
    """The device (GPU, or the CPU cores when training on CPU) is idle much of the time."""
    util, source = device_utilization(summary)
    numbers = {"utilization": util, "source": source, "data_wait_share": stats["data_wait_share"]}
    threshold = {"utilization": LOW_UTILIZATION}
    if util is None:
        text = "Not measured: the traced steps did not run (too few steps) and NVML is not available."
        return finding("LowUtilization", False, numbers, threshold, text, applicable=False)
    device = "GPU" if summary.device == "cuda" else "CPU"
    triggered = util < LOW_UTILIZATION
    if not triggered:
        text = f"The {device} is busy {util:.0%} of the time."
    elif stats["data_wait_share"] > LOADER_WAIT_SHARE:
        text = f"The {device} is busy only {util:.0%} of the time because steps wait for data: see LoaderBottleneck."
    elif device == "GPU":
        text = (
            f"The GPU is busy only {util:.0%} of the time: raise batch-size (see BatchSize), keep amp and "
            "channels-last on, or train on a smaller, cheaper GPU instance."
        )
    else:
        text = (
            f"The CPUs are busy only {util:.0%} of the time: raise batch-size, check that OMP_NUM_THREADS is not "
            "capping torch's threads, and look for other processes on the host; a smaller instance would do."
        )
    return finding("LowUtilization", triggered, numbers, threshold, text)


def batch_size(summary: Summary, stats: dict) -> dict:
    """GPU memory headroom: a larger batch would fit and keep the GPU busier."""
    memory, batch = summary.gpu_memory, summary.batch_size
    threshold = {"peak_memory_share": MEMORY_LOW_SHARE, "utilization": GPU_BUSY}
    if not memory:
        text = "Not applicable on CPU: there is no GPU memory whose headroom would bound the batch size."
        return finding("BatchSize", False, {"batch_size": batch}, threshold, text, applicable=False)
    share = memory["peak_reserved"] / memory["total"]
    util, _ = device_utilization(summary)
    factor = 1
    while share * factor * 2 <= MEMORY_TARGET_SHARE:
        factor *= 2
    numbers = {
        "batch_size": batch,
        "peak_reserved_gib": memory["peak_reserved"] / 2**30,
        "peak_allocated_gib": memory["peak_allocated"] / 2**30,
        "total_gib": memory["total"] / 2**30,
        "peak_memory_share": share,
        "utilization": util,
    }
    triggered = share < MEMORY_LOW_SHARE and (util is None or util < GPU_BUSY)
    used = f"Peak GPU memory {numbers['peak_reserved_gib']:.1f} of {numbers['total_gib']:.1f} GiB ({share:.0%})"
    if triggered:
        text = (
            f"{used} at batch-size {batch}: batch-size {batch * factor} would still fit (about "
            f"{share * factor:.0%}); scale lr by {factor} with it (linear rule) and add lr-warmup-epochs."
        )
    else:
        text = f"{used} at batch-size {batch}" + (f", GPU busy {util:.0%}." if util is not None else ".")
    return finding("BatchSize", triggered, numbers, threshold, text)


def initialization(summary: Summary, stats: dict) -> dict:
    """Time from the training process's start to its first training step."""
    init, run = summary.init_seconds, summary.run_seconds
    share = init / max(run, 1e-9)
    numbers = {"init_seconds": init, "run_seconds": run, "init_share": share}
    threshold = {"init_share": INIT_MAX_SHARE, "init_seconds": INIT_MIN_SECONDS}
    triggered = share > INIT_MAX_SHARE and init > INIT_MIN_SECONDS
    if triggered:
        text = (
            f"Initialization took {init:.0f} s, {share:.0%} of the run: supply weights in the pretrained channel "
            "(no download), use FastFile input mode or fewer, larger files, and train more epochs per job."
        )
    else:
        text = f"Initialization took {init:.1f} s, {share:.0%} of the run."
    return finding("Initialization", triggered, numbers, threshold, text)


def step_outliers(summary: Summary, stats: dict) -> dict:
    """Steady steps much slower than the median, and what they cost."""
    times, waits, epochs = summary.steps.time, summary.steps.data_wait, summary.steps.epoch
    steady = steady_steps(summary)
    median = stats["median_step_seconds"] or 0.0
    slow = [i for i in steady if times[i] > OUTLIER_FACTOR * median]
    excess = sum(times[i] - median for i in slow)
    share = excess / max(sum(times[i] for i in steady), 1e-9)
    at_epoch_start = sum(1 for i in slow if i > 0 and epochs[i] != epochs[i - 1])
    wait_share = sum(waits[i] for i in slow) / max(sum(times[i] for i in slow), 1e-9)
    numbers = {
        "outliers": len(slow),
        "steps": [i + 1 for i in slow[:20]],
        "median_step_seconds": median,
        "max_step_seconds": max((times[i] for i in steady), default=None),
        "excess_time_share": share,
        "at_epoch_start": at_epoch_start,
        "data_wait_share_of_outliers": wait_share if slow else None,
    }
    threshold = {"factor_of_median": OUTLIER_FACTOR, "excess_time_share": OUTLIER_MAX_TIME_SHARE}
    triggered = share > OUTLIER_MAX_TIME_SHARE
    text = f"{len(slow)} step(s) over {OUTLIER_FACTOR:g}x the median step cost {share:.0%} of the training time"
    epoch_starts = at_epoch_start * 2 >= len(slow)
    if not triggered:
        text += "."
    elif wait_share > 0.5 and epoch_starts:
        text += ": most are epochs' first steps, waiting for the loader to refill after evaluation; raise num-workers."
    elif wait_share > 0.5:
        text += ": they wait for data (slow or uneven files); see LoaderBottleneck."
    elif epoch_starts:
        text += (
            ": most are epochs' first steps, whose batch was ready: re-warming after the evaluation pass, "
            "a fixed cost per epoch that matters less with more steps per epoch."
        )
    else:
        text += (
            ": they are compute; look for other processes on the host, checkpoint writes or garbage "
            "collection, and at these steps in the trace if it covers them."
        )
    return finding("StepOutliers", triggered, numbers, threshold, text)


RULES = (loader_bottleneck, worker_count, low_utilization, batch_size, initialization, step_outliers)


def analyze(summary: Summary) -> tuple[dict, list[dict]]:
    """Step statistics and every rule's finding."""
    stats = step_stats(summary)
    return stats, [rule(summary, stats) for rule in RULES]


def write(folder: Path, summary: Summary) -> dict | None:
    """``report.json`` and ``report.html`` in ``folder``; never fails the job (returns None then)."""
    try:
        stats, findings = analyze(summary)
        report = {"findings": findings, "stats": stats, "summary": summary.as_dict()}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(report, indent=1))
        (folder / "report.html").write_text(render_html(summary, stats, findings))
    except Exception:  # a report must never fail a finished training job
        log.exception("could not write the profiler report")
        return None
    fired = [f["rule"] for f in findings if f["triggered"]]
    log.info("profiler report in %s: %s", folder, ", ".join(fired) if fired else "no rule triggered")
    return report


# --- HTML ---------------------------------------------------------------------------------


def render_html(s: Summary, stats: dict, findings: list[dict]) -> str:
    """One self-contained page: summary, findings, plots (embedded PNG) and top operators."""
    rows = "".join(_finding_row(f) for f in findings)
    overview = {
        "device": s.device_name,
        "steps": stats["steps"],
        "median step": _fmt(stats["median_step_seconds"], "s"),
        "data wait (steady)": f"{stats['data_wait_share']:.1%}",
        "throughput": f"{stats['img_per_sec']:.1f} img/s" if stats["img_per_sec"] else "-",
        "initialization": _fmt(s.init_seconds, "s"),
        "run": _fmt(s.run_seconds, "s"),
        "loader workers / CPUs per process": f"{s.workers} / {s.cpus_per_process}",
        "batch size": s.batch_size,
        "trace": f"{s.trace.get('file', 'none')} (steps {s.trace.get('steps', '-')})",
    }
    overview_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in overview.items()
    )
    plots = "".join(
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">' for name, data in _plots(s, stats)
    )
    ops = "".join(
        f"<tr><td>{html.escape(o['name'])}</td><td>{o['calls']}</td><td>{o['self_cpu_ms']:.1f}</td>"
        f"<td>{o['self_device_ms']:.1f}</td></tr>"
        for o in s.trace.get("top_ops", [])
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Profiler report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}.fired{{background:#fde2e1}}
.ok{{background:#e6f4ea}}.na{{background:#eee}}img{{max-width:100%}}code{{font-size:90%}}</style></head><body>
<h1>Profiler report (rank {s.rank})</h1><table>{overview_rows}</table>
<h2>Findings</h2><table><tr><th>rule</th><th>status</th><th>recommendation</th><th>numbers</th><th>threshold</th></tr>
{rows}</table><h2>Steps and utilization</h2>{plots}
<h2>Top operators in the traced steps</h2><table><tr><th>operator</th><th>calls</th><th>self CPU ms</th>
<th>self device ms</th></tr>{ops}</table></body></html>
"""


def _finding_row(f: dict) -> str:
    status, css = ("triggered", "fired") if f["triggered"] else ("ok", "ok")
    if not f["applicable"]:
        status, css = "not applicable", "na"
    numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in f["numbers"].items())
    threshold = ", ".join(f"{k}={_fmt(v)}" for k, v in f["threshold"].items())
    cells = (f["rule"], status, f["recommendation"], numbers, threshold)
    return f'<tr class="{css}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _fmt(value, unit: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.4g}{unit and ' ' + unit}"
    return str(value)


def _plots(summary: Summary, stats: dict) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        return [("steps", _png(_steps_figure(summary, stats))), ("utilization", _png(_utilization_figure(summary)))]
    except Exception:  # the numbers are in the tables and report.json regardless
        log.exception("could not draw the profiler plots")
        return []


def _png(fig) -> str:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _steps_figure(summary: Summary, stats: dict):
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = summary.steps
    x = list(range(1, len(steps.time) + 1))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(x, steps.time, lw=1, label="step time")
    ax.fill_between(x, 0, steps.data_wait, alpha=0.5, color="tab:red", label="data wait")
    if stats["median_step_seconds"]:
        ax.axhline(OUTLIER_FACTOR * stats["median_step_seconds"], ls=":", color="gray", label="outlier limit")
    starts = [i + 1 for i in range(1, len(x)) if steps.epoch[i] != steps.epoch[i - 1]]
    for i in starts[:100]:
        ax.axvline(i, color="gray", lw=0.5)
    profiled = summary.profiled_steps
    if profiled and profiled[1] >= profiled[0]:
        ax.axvspan(profiled[0] - 0.5, profiled[1] + 0.5, color="tab:green", alpha=0.15, label="profiled (left out)")
    if x:
        warmup = min(warmup_steps(summary), len(x))
        ax.axvspan(0.5, warmup + 0.5, color="gray", alpha=0.15, label="warm-up (left out)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="per training step (grey lines: epoch starts)", xlabel="step", ylabel="seconds")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def _utilization_figure(summary: Summary):
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    samples = summary.samples
    fig, ax = plt.subplots(figsize=(11, 3))
    x = [s["step"] for s in samples]
    ax.plot(x, [s["cpu"] for s in samples], "-o", ms=2, label="CPU (process and workers)")
    if any(s["gpu"] is not None for s in samples):
        ax.plot(x, [s["gpu"] for s in samples], "-o", ms=2, label="GPU (NVML)")
    ax.axhline(LOW_UTILIZATION, ls=":", color="gray", label="low utilization")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="utilization, about once a second during training", xlabel="step", ylim=(0, 1.05))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
