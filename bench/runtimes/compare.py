"""Side by side, in one run: eager PyTorch, torch.compile, ONNX Runtime and OpenVINO on CPU.

    python bench/runtimes/compare.py [--model DIR] [--threads 2] [--iters 40] [--iters8 12] [--rounds 4]
                                     [--skip-compile] [--out DIR]

Needs torch + torchvision (the model and the eager baseline), onnx + onnxscript (the
exporter), onnxruntime and openvino; a runtime that is missing is skipped and said so.
Meant for .venv-runtimes (``make bench-runtimes`` makes it), never the project's .venv.

What it does:

1. Prints the CPU (model, ISA flags that matter: avx2, avx512f, avx512_vnni, avx512_bf16,
   amx_bf16/amx_tile) and the versions.
2. Builds ResNet18 with 257 classes (random weights, seed 0) or loads ``--model DIR`` (a
   model folder of this project), and the inputs: real photos (``--photos``) decoded with
   ``model_artifact.decode_image`` and transformed with ``model_artifact.ArrayTransform``
   (what serving applies; equal bit for bit to ``eval_transform``), or generated images
   when none are found. The same 8 images are the batch of 8; the first
   one is the batch of 1.
3. Exports ONNX (the dynamo exporter, then the legacy TorchScript one if it fails; dynamic
   batch) and OpenVINO IR (``openvino.convert_model`` of the ONNX file, saved with
   ``compress_to_fp16=False``: ``save_model``'s default would store fp16 weights); and
   the file that serving runs, ``train.artifact.export_onnx``'s (softmax included), in
   ``serve.runtimes.OnnxModel``'s session: the ``onnxruntime as served`` row.
4. Measures every variant with the same thread count, interleaved in ``--rounds`` rounds
   (each round runs each variant's share of iterations after 2 untimed ones), so that
   the load of other processes on the machine spreads over all variants alike: p50/p90
   latency of batch 1, images/s of batch 8 (from the median batch time), and the largest
   absolute difference of the softmax probabilities against eager fp32 on the same
   inputs, with top-1 agreement.
5. Prints a table with ratios against eager fp32 from this same run, and the process CPU
   time per run (all threads, spinning included): on a machine busy with other work, wall
   times swing with the load while CPU time stays closer to the work done.

Prints, never asserts.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)


def cpu_info() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = [f for f in FLAGS if f in flags]
    bf16 = "yes" if {"avx512_bf16", "amx_bf16"} & flags else "no"
    return (
        f"CPU: {model}, {os.cpu_count()} logical CPUs visible, affinity {len(os.sched_getaffinity(0))}; "
        f"flags: {' '.join(present) or 'none of interest'}; AMX: {'yes' if 'amx_tile' in flags else 'no'}; "
        f"avx512_bf16/amx_bf16 (fast bf16): {bf16}"
    )


def load_inputs(photos: list[str], prep, count: int = 8):
    """(batch of ``count`` preprocessed images as a float32 array, their names)."""
    import model_artifact

    transform = model_artifact.ArrayTransform(prep)
    files = []
    for folder in photos:
        folder = Path(folder)
        if folder.is_file():
            files.append(folder)
        elif folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tensors, names = [], []
    for path in files:
        try:
            image = model_artifact.decode_image(path.read_bytes(), draft_size=prep.resize_size)
        except OSError:
            continue
        if min(image.size) < 64:
            continue
        tensors.append(transform(image))
        names.append(path.name)
        if len(tensors) == count:
            break
    rng = np.random.default_rng(0)
    while len(tensors) < count:  # generated stand-ins
        from PIL import Image

        array = rng.integers(0, 256, (300 + 10 * len(tensors), 400, 3), dtype=np.uint8)
        tensors.append(transform(Image.fromarray(array)))
        names.append(f"noise{len(tensors)}")
    return np.stack(tensors), names


@dataclass
class Variant:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # float32 NCHW -> logits (N, classes)
    note: str = ""
    lat1: list[float] = field(default_factory=list)
    lat8: list[float] = field(default_factory=list)
    cpu1: list[float] = field(default_factory=list)  # process CPU seconds (all threads) per run
    cpu8: list[float] = field(default_factory=list)
    diff1: float = float("nan")
    diff8: float = float("nan")
    top1: str = ""
    setup_s: float = 0.0
    error: str = ""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Variants


def torch_variants(model, threads: int, args) -> list[Variant]:
    import torch

    torch.set_num_threads(threads)
    variants = []

    def eager(net, channels_last=False):
        @torch.inference_mode()
        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return net(t).float().numpy()

        return run

    variants.append(Variant("torch eager fp32", eager(model), "baseline, NCHW"))
    model_cl = _copy(model).to(memory_format=torch.channels_last)
    variants.append(Variant("torch eager channels_last", eager(model_cl, True)))

    if args.bf16 == "yes" or (args.bf16 == "auto" and args.has_bf16):

        @torch.inference_mode()
        def run_bf16(x: np.ndarray) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model_cl(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float().numpy()

        variants.append(Variant("torch autocast bf16 channels_last", run_bf16, "answers differ: bf16"))

    if not args.skip_compile:
        for label, freezing in (("torch.compile (inductor)", False), ("torch.compile freezing+channels_last", True)):
            try:
                import torch._inductor.config as inductor_config

                net = _copy(model)
                if freezing:
                    net = net.to(memory_format=torch.channels_last)
                compiled = torch.compile(net, dynamic=False)
                started = time.perf_counter()
                inductor_config.freezing = freezing
                fn = eager(compiled, freezing)
                fn(np.zeros((1, 3, args.image_size, args.image_size), np.float32))
                t1 = time.perf_counter() - started
                fn(np.zeros((8, 3, args.image_size, args.image_size), np.float32))
                total = time.perf_counter() - started
                inductor_config.freezing = False
                variants.append(Variant(label, fn, f"compile b1 {t1:.0f} s + b8 {total - t1:.0f} s", setup_s=total))
            except Exception as exc:  # a missing compiler, an inductor error: say so, go on
                variants.append(
                    Variant(label, lambda x: x, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                )
    return variants


def _copy(model):
    import copy

    return copy.deepcopy(model).eval()


def export_onnx(model, example, path: Path, opset: int) -> str:
    """Export with dynamic batch: the dynamo exporter, else the legacy one. Returns which worked."""
    import torch

    attempts = []
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch}}, opset_version=opset, external_data=False, optimize=True,
        )  # fmt: skip
        return f"dynamo exporter (torch.export + onnxscript), opset {opset}"
    except Exception as exc:
        attempts.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=min(opset, 20),
        )  # fmt: skip
        return "legacy TorchScript exporter (dynamo failed: " + "; ".join(attempts) + ")"
    except Exception as exc:
        attempts.append(f"legacy: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise RuntimeError("ONNX export failed: " + " | ".join(attempts))


def ort_variants(onnx_path: Path, threads: int) -> list[Variant]:
    import onnxruntime as ort

    def session(label: str, note: str, configure) -> Variant:
        started = time.perf_counter()
        options = ort.SessionOptions()
        configure(options)
        sess = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0]

        return Variant(label, run, note, setup_s=time.perf_counter() - started)

    def defaults(o):
        pass  # intra_op threads = physical cores ORT sees (the host's, not a container's CPU quota)

    def pinned(o):
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def no_spin(o):
        pinned(o)
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")

    return [
        session("onnxruntime defaults", "ORT_ENABLE_ALL, threads=auto", defaults),
        session(f"onnxruntime intra_op={threads} sequential", "ORT_ENABLE_ALL", pinned),
        session(f"onnxruntime intra_op={threads} no spinning", "allow_spinning=0", no_spin),
    ]


def served_variant(model, prep, out: Path, threads: int) -> Variant:
    """``train.artifact.export_onnx``'s file (as training writes it) in ``serve.runtimes.OnnxModel``."""
    import model_artifact
    from serve.runtimes import OnnxModel
    from train.artifact import export_onnx

    started = time.perf_counter()
    folder = out / "served"
    folder.mkdir(exist_ok=True)
    meta = model_artifact.Metadata("resnet18", [], prep)
    meta.onnx_sha256 = export_onnx(_copy(model), prep, folder / model_artifact.ONNX_FILE)
    served = OnnxModel(str(folder), meta, threads)

    def run(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(served.predict(x))  # probabilities; the log's softmax gives them back

    return Variant("onnxruntime as served", run, "train.artifact.export_onnx + serve.runtimes",
                   setup_s=time.perf_counter() - started)  # fmt: skip


def openvino_variants(ir_path: Path, threads: int, image_size: int) -> list[Variant]:
    import openvino as ov

    core = ov.Core()
    variants = []

    def compiled(label: str, config: dict, static_batch: int | None = None) -> Variant:
        started = time.perf_counter()
        model = core.read_model(str(ir_path))
        if static_batch:
            model.reshape({0: [static_batch, 3, image_size, image_size]})
        cm = core.compile_model(model, "CPU", config)
        request = cm.create_infer_request()
        props = (
            f"streams={cm.get_property('NUM_STREAMS')}, threads={cm.get_property('INFERENCE_NUM_THREADS')}, "
            f"precision={_type_name(cm.get_property('INFERENCE_PRECISION_HINT'))}"
            + (", static shapes" if static_batch else ", dynamic batch")
        )

        def run(x: np.ndarray) -> np.ndarray:
            return request.infer({0: x}, share_inputs=True)[0].copy()

        if static_batch:
            other = core.read_model(str(ir_path))
            other.reshape({0: [8, 3, image_size, image_size]})
            request8 = core.compile_model(other, "CPU", config).create_infer_request()

            def run(x: np.ndarray) -> np.ndarray:
                return (request if len(x) == static_batch else request8).infer({0: x}, share_inputs=True)[0].copy()

        return Variant(label, run, props, setup_s=time.perf_counter() - started)

    base = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    variants.append(compiled("openvino LATENCY f32", base | {"PERFORMANCE_HINT": "LATENCY"}))
    variants.append(compiled("openvino THROUGHPUT f32", base | {"PERFORMANCE_HINT": "THROUGHPUT"}))
    variants.append(
        compiled("openvino LATENCY f32 num_streams=1", base | {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    )
    variants.append(compiled("openvino LATENCY f32 static b1/b8", base | {"PERFORMANCE_HINT": "LATENCY"}, 1))
    default_precision = _type_name(core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    variants.append(
        compiled(
            f"openvino LATENCY default precision={default_precision}",
            {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
        )
    )
    return variants


def _type_name(value) -> str:
    return value.to_string() if hasattr(value, "to_string") else str(value)


def openvino_async_throughput(ir_path: Path, threads: int, batch: np.ndarray, seconds: float) -> str:
    """images/s of batch-1 requests through an AsyncInferQueue with the THROUGHPUT hint's streams."""
    import openvino as ov

    core = ov.Core()
    cm = core.compile_model(
        core.read_model(str(ir_path)), "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"},
    )  # fmt: skip
    jobs = cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(cm, jobs)
    done = 0

    def callback(_request, _userdata):
        nonlocal done
        done += 1

    queue.set_callback(callback)
    for i in range(jobs * 2):  # warm-up
        queue.start_async({0: batch[i % len(batch)][None]})
    queue.wait_all()
    done = 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        queue.start_async({0: batch[i % len(batch)][None]})
        i += 1
    queue.wait_all()
    elapsed = time.perf_counter() - started
    return f"{done / elapsed:.1f} images/s with {jobs} async batch-1 requests, streams={cm.get_property('NUM_STREAMS')}"


# ---------------------------------------------------------------------------------------
# Measurement


def measure(variants: list[Variant], x1: np.ndarray, x8: np.ndarray, iters: int, iters8: int, rounds: int) -> None:
    per1, per8 = max(1, iters // rounds), max(1, iters8 // rounds)
    for r in range(rounds):
        for v in variants:
            if v.error:
                continue
            try:
                for _ in range(2):
                    v.run(x1)
                for _ in range(per1):
                    cpu, start = time.process_time(), time.perf_counter()
                    v.run(x1)
                    v.lat1.append(time.perf_counter() - start)
                    v.cpu1.append(time.process_time() - cpu)
                v.run(x8)
                for _ in range(per8):
                    cpu, start = time.process_time(), time.perf_counter()
                    v.run(x8)
                    v.lat8.append(time.perf_counter() - start)
                    v.cpu8.append(time.process_time() - cpu)
            except Exception as exc:
                v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        gc.collect()
        print(f"  round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)


def check_answers(variants: list[Variant], x1: np.ndarray, x8: np.ndarray) -> None:
    reference = variants[0]
    ref1, ref8 = softmax(reference.run(x1)), softmax(reference.run(x8))
    for v in variants:
        if v.error:
            continue
        try:
            p1, p8 = softmax(v.run(x1)), softmax(v.run(x8))
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        v.diff1, v.diff8 = float(np.abs(p1 - ref1).max()), float(np.abs(p8 - ref8).max())
        agree = int((p8.argmax(1) == ref8.argmax(1)).sum()) + int(p1.argmax(1)[0] == ref1.argmax(1)[0])
        v.top1 = f"{agree}/9"


def table(variants: list[Variant]) -> str:
    base = variants[0]
    b50 = statistics.median(base.lat1)
    b8 = 8 / statistics.median(base.lat8)
    head = (
        f"{'variant':44s} {'b1 p50 ms':>9s} {'b1 p90 ms':>9s} {'b1 speedup':>10s} {'b8 img/s':>9s} "
        f"{'b8 speedup':>10s} {'b1 cpu ms':>9s} {'b8 cpu ms/img':>13s} {'max|dp| b1':>10s} {'max|dp| b8':>10s} "
        f"{'top1':>5s}  notes"
    )
    lines = [head, "-" * len(head)]
    for v in variants:
        if v.error or not v.lat1:
            lines.append(f"{v.name:44s} FAILED {v.error}")
            continue
        lat = sorted(v.lat1)
        p50, p90 = statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(0.9 * len(lat)))] * 1000
        ips = 8 / statistics.median(v.lat8)
        lines.append(
            f"{v.name:44s} {p50:9.1f} {p90:9.1f} {b50 * 1000 / p50:9.2f}x {ips:9.1f} {ips / b8:9.2f}x "
            f"{statistics.median(v.cpu1) * 1000:9.1f} {statistics.median(v.cpu8) * 1000 / 8:13.1f} "
            f"{v.diff1:10.2e} {v.diff8:10.2e} {v.top1:>5s}  {v.note}"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder of this project (artifact.json + model.pt)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every runtime")
    parser.add_argument("--iters", type=int, default=40, help="timed batch-1 runs per variant (all rounds)")
    parser.add_argument("--iters8", type=int, default=12, help="timed batch-8 runs per variant (all rounds)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile variants")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="torch autocast bf16 variant: auto = only with avx512_bf16/amx_bf16")  # fmt: skip
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--photos", nargs="*", default=["/tmp/photos", str(ROOT / "data/sample/test")])
    parser.add_argument("--async-seconds", type=float, default=3.0, help="OpenVINO async queue run (0: skip)")
    parser.add_argument("--out", help="keep model.onnx and the IR here (default: a temporary folder)")
    parser.add_argument("--omp-wait-policy", choices=("unset", "PASSIVE", "ACTIVE"), default="unset",
                        help="OMP_WAIT_POLICY for torch's OpenMP threads (read when torch loads; ORT and OpenVINO "
                             "have their own thread pools)")  # fmt: skip
    return parser.parse_args()


def print_environment(args) -> None:
    """The CPU, the load and every runtime's version (torch is imported here, after OMP_WAIT_POLICY)."""
    info = cpu_info()
    args.has_bf16 = "fast bf16): yes" in info
    print(info)
    print(
        f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    versions = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}", f"numpy {np.__version__}"]
    for module in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} MISSING")
    print(", ".join(versions))


def load_model(args):
    """(model, preprocessing, label): ``--model``'s artifact, or a seeded resnet18 with 257 classes."""
    import torch

    import model_artifact

    if args.model:
        model, meta = model_artifact.load(args.model)
        return model, meta.preprocessing, f"{meta.architecture} from {args.model}, {meta.num_classes} classes"
    torch.manual_seed(0)
    model = model_artifact.build_model("resnet18", 257).eval()
    return model, model_artifact.Preprocessing.for_image_size(224), "resnet18, random weights (seed 0), 257 classes"


def exported_variants(model, prep, x1: np.ndarray, x8: np.ndarray, out: Path, args) -> tuple[list, Path | None]:
    """ONNX Runtime's and OpenVINO's variants of ``model`` (each skipped when not installed), and model.onnx."""
    import torch

    onnx_path = out / "model.onnx"
    try:
        started = time.perf_counter()
        how = export_onnx(_copy(model), torch.from_numpy(x1), onnx_path, args.opset)
        print(f"ONNX: {how}, {time.perf_counter() - started:.1f} s, {onnx_path.stat().st_size / 1e6:.1f} MB")
    except Exception as exc:
        print(f"ONNX: {exc}")
        return [], None
    variants = []
    try:
        variants += ort_variants(onnx_path, args.threads)
        variants.append(served_variant(model, prep, out, args.threads))
    except ImportError as exc:
        print(f"onnxruntime: skipped ({exc})")
    try:
        variants += openvino_from_onnx(model, onnx_path, x1, x8, args)
    except ImportError as exc:
        print(f"openvino: skipped ({exc})")
    return variants, onnx_path


def openvino_from_onnx(model, onnx_path: Path, x1: np.ndarray, x8: np.ndarray, args) -> list:
    """OpenVINO's variants of the IR converted from model.onnx; also checks its direct torch conversion."""
    import openvino as ov
    import torch

    started = time.perf_counter()
    ir_path = onnx_path.with_name("model.xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(ir_path), compress_to_fp16=False)
    bin_mb = ir_path.with_suffix(".bin").stat().st_size / 1e6
    print(f"OpenVINO IR from the ONNX file: {time.perf_counter() - started:.1f} s, weights {bin_mb:.1f} MB (fp32)")
    try:
        started = time.perf_counter()
        ov_from_torch = ov.convert_model(_copy(model), example_input=torch.from_numpy(x1))
        cm = ov.Core().compile_model(ov_from_torch, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        direct = softmax(cm({0: x8})[0])
        with torch.inference_mode():
            ref = softmax(model(torch.from_numpy(x8)).numpy())
        print(
            f"OpenVINO convert_model(torch module) also works: {time.perf_counter() - started:.1f} s, "
            f"max|dp| vs eager {np.abs(direct - ref).max():.2e}"
        )
    except Exception as exc:
        print(f"OpenVINO convert_model(torch module) failed: {type(exc).__name__}: {str(exc)[:200]}")
    return openvino_variants(ir_path, args.threads, args.image_size)


def main() -> None:
    args = parse_args()
    if args.omp_wait_policy != "unset":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    print_environment(args)
    model, prep, label = load_model(args)
    args.image_size = prep.image_size
    inputs, names = load_inputs(args.photos, prep)
    x8 = np.ascontiguousarray(inputs)
    x1 = np.ascontiguousarray(x8[:1])
    print(f"model: {label}, {prep.image_size} px; inputs: {', '.join(names)}; threads {args.threads}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rt-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    variants = torch_variants(model, args.threads, args)
    exported, onnx_path = exported_variants(model, prep, x1, x8, out, args)
    variants += exported
    print(f"measuring {len(variants)} variants: {args.iters} x batch 1 and {args.iters8} x batch 8 each, "
          f"interleaved in {args.rounds} rounds")  # fmt: skip
    measure(variants, x1, x8, args.iters, args.iters8, args.rounds)
    check_answers(variants, x1, x8)
    print()
    print(table(variants))
    if onnx_path and args.async_seconds > 0 and (out / "model.xml").exists():
        try:
            figures = openvino_async_throughput(out / "model.xml", args.threads, x8, args.async_seconds)
            print(f"openvino THROUGHPUT, AsyncInferQueue: {figures}")
        except Exception as exc:
            print(f"openvino async: {type(exc).__name__}: {exc}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end; files in {out}")


if __name__ == "__main__":
    main()
