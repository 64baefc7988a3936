"""Where the forward pass runs: ONNX Runtime on CPUs, PyTorch on GPUs.

``SERVE_RUNTIME`` chooses (``serve.settings``): ``auto`` (the default) takes ONNX Runtime for
a CPU worker where it is installed (the CPU serving image has nothing else), PyTorch
otherwise (a GPU worker; the GPU image, which has no onnxruntime, on a CPU instance).
``gpu_id`` is what MMS hands a worker: None unless the server counted GPUs. Both
take the same preprocessed float32 batch (``model_artifact.ArrayTransform``) and return
class probabilities as a float32 numpy array, one row per image. On 2 CPUs ONNX Runtime
answers a 224 px ResNet18 image in about two thirds of eager PyTorch's time (``make bench``).

On ONNX Runtime, ``SERVE_PRECISION`` chooses between ``model.onnx`` and the artifact's
``model.int8.onnx`` (``choose_precision``): ``auto`` serves int8 when training recorded an
accuracy drop within ``SERVE_INT8_MAX_DROP`` points on the validation split. PyTorch serves
``model.pt`` (fp32) whatever the artifact holds.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np

import model_artifact

log = logging.getLogger("serve.runtimes")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def choose(setting: str, gpu: bool) -> str:
    """``onnx`` or ``torch`` for ``SERVE_RUNTIME=setting`` on a GPU (``gpu``) or CPU worker."""
    if setting == "auto":
        if gpu and installed("torch"):
            return "torch"
        return "onnx" if installed("onnxruntime") else "torch"
    if setting == "onnx" and gpu:
        raise ValueError("SERVE_RUNTIME=onnx runs on CPUs only; this worker has a GPU: use torch or auto")
    if not installed("onnxruntime" if setting == "onnx" else "torch"):
        image = "byoc-classifier-serving-gpu" if setting == "torch" else "byoc-classifier-serving-cpu"
        raise ValueError(f"SERVE_RUNTIME={setting} is not installed in this image: use auto, or the image {image}")
    return setting


def choose_precision(
    meta: model_artifact.Metadata, setting: str = "auto", max_drop: float = 0.5, int8_present: bool = True
) -> tuple[str, str]:
    """(``int8`` or ``fp32``, why) for ``SERVE_PRECISION=setting`` and an artifact whose metadata
    is ``meta`` (``int8_present``: whether its folder holds model.int8.onnx)."""
    check = meta.int8
    if check is not None and not int8_present and setting == "auto":  # repacked without it: fp32 is whole
        return "fp32", f"artifact.json records a {model_artifact.INT8_FILE}, but the model folder has none"
    if check is None:
        if setting == "int8":
            raise model_artifact.ArtifactError(
                f"SERVE_PRECISION=int8, but the artifact has no {model_artifact.INT8_FILE}: train with int8=true, "
                "run `export-onnx --int8 VALIDATION_FOLDER` on it, or use SERVE_PRECISION=auto"
            )
        return "fp32", f"the artifact has no {model_artifact.INT8_FILE}"
    cost = (
        f"int8 accuracy {check.int8_accuracy:.4f} against fp32 {check.fp32_accuracy:.4f} "
        f"({-check.accuracy_drop:+.2f} points) on {check.images} validation images"
    )
    if setting != "auto":
        return setting, f"SERVE_PRECISION={setting}; {cost}"
    if check.accuracy_drop <= max_drop + 1e-9:  # accuracies are fractions k/n: 0.9 - 0.895 is 0.5000000000000004
        return "int8", f"{cost}: within SERVE_INT8_MAX_DROP={max_drop:g}"
    return "fp32", f"{cost}: more than SERVE_INT8_MAX_DROP={max_drop:g} lost"


class OnnxModel:
    """``model.onnx`` or ``model.int8.onnx`` (``precision``) in an ONNX Runtime session on the
    CPU, with ``threads`` intra-op threads."""

    device = "cpu"

    def __init__(self, model_dir: str, meta: model_artifact.Metadata, threads: int, precision: str = "fp32"):
        import onnxruntime

        if precision == "int8":
            path = model_artifact.int8_path(model_dir, meta)
        else:
            path = model_artifact.onnx_path(model_dir, meta)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one request batch at a time per worker: parallelism is within the graph
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # threads spin while the graph runs (turned off, a 2-CPU forward pass takes longer) and,
        # for fp32, stop when it ends: the worker and the gateway need those CPUs to answer (make
        # bench: p50 -3 ms). int8's many short operators lose to it: 224 px, 2 threads, a request
        # every 50 ms, 13.5 ms a forward pass with it against 6.6 ms without (bench/serve_int8.py)
        if precision == "fp32":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the client's business
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.precision = precision
        self.name = f"onnxruntime {onnxruntime.__version__}, {path.name}"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) of a preprocessed batch (N, 3, H, W)."""
        return self.session.run([model_artifact.ONNX_OUTPUT], {model_artifact.ONNX_INPUT: batch})[0]

    def is_broken(self, exc: Exception) -> bool:
        """A CPU session does not break: errors are per batch."""
        return False


class TorchModel:
    """``model.pt`` in eager PyTorch, on the worker's GPU or on the CPU with ``threads`` threads."""

    def __init__(self, model_dir: str, meta: model_artifact.Metadata, gpu_id: int | None, threads: int):
        import torch

        use_gpu = gpu_id is not None and torch.cuda.is_available()
        self.torch = torch
        self.device = torch.device("cuda", int(gpu_id)) if use_gpu else torch.device("cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.model = model_artifact.load_network(model_dir, meta, self.device)
        self.name = f"torch {torch.__version__} on {self.device}"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) of a preprocessed batch (N, 3, H, W)."""
        with self.torch.inference_mode():
            inputs = self.torch.from_numpy(batch).to(self.device)
            return self.model(inputs).float().softmax(dim=1).cpu().numpy()

    def is_broken(self, exc: Exception) -> bool:
        """A CUDA error other than out-of-memory leaves the device unusable for this process."""
        if self.device.type != "cuda" or isinstance(exc, self.torch.cuda.OutOfMemoryError):
            return False
        return "CUDA" in str(exc) or type(exc).__name__ == "AcceleratorError"


def load(
    model_dir: str, gpu_id: int | None, runtime: str, threads: int, precision: str = "auto", int8_max_drop: float = 0.5
):
    """(model, metadata): the artifact's metadata and its network on the chosen runtime and,
    on ONNX Runtime, precision (logged with the reason)."""
    meta = model_artifact.load_metadata(model_dir)
    if choose(runtime, gpu_id is not None) == "onnx":
        present = os.path.lexists(os.path.join(model_dir, model_artifact.INT8_FILE))
        chosen, why = choose_precision(meta, precision, int8_max_drop, present)
        model = OnnxModel(model_dir, meta, threads, chosen)
        model.name += f" ({chosen}: {why})"
        return model, meta
    if precision == "int8":
        raise ValueError("SERVE_PRECISION=int8 runs on ONNX Runtime (the CPU image); PyTorch serves model.pt: use auto")
    return TorchModel(model_dir, meta, gpu_id, threads), meta
