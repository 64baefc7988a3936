"""serve.runtimes: which runtime a worker takes, ONNX Runtime against eager PyTorch, threads,
artifacts without or with a tampered model.onnx, and the settings that choose."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import model_artifact
from serve import runtimes
from serve.settings import Settings
from train import artifact


def without(monkeypatch, *missing: str) -> None:
    """Pretend that ``missing`` modules are not installed (as in the other serving image)."""
    installed = runtimes.installed
    monkeypatch.setattr(runtimes, "installed", lambda module: module not in missing and installed(module))


# --- choosing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting,gpu,missing,expected",
    [
        ("auto", False, (), "onnx"),  # a CPU worker where ONNX Runtime is installed (the CPU image)
        ("auto", True, (), "torch"),  # a GPU worker
        ("auto", False, ("onnxruntime",), "torch"),  # the GPU image (no onnxruntime) on a CPU instance
        ("auto", True, ("torch",), "onnx"),  # the CPU image on a GPU instance: it still serves, on the CPU
        ("auto", False, ("torch",), "onnx"),
        ("onnx", False, (), "onnx"),
        ("torch", False, (), "torch"),
        ("torch", True, ("onnxruntime",), "torch"),
    ],
)
def test_choose(monkeypatch, setting, gpu, missing, expected):
    without(monkeypatch, *missing)
    assert runtimes.choose(setting, gpu) == expected


def test_onnx_is_refused_on_a_gpu_worker():
    with pytest.raises(ValueError, match="SERVE_RUNTIME=onnx runs on CPUs only") as err:
        runtimes.choose("onnx", gpu=True)
    assert "\n" not in str(err.value) and "use torch or auto" in str(err.value)


@pytest.mark.parametrize(
    "setting,missing,image",
    [("torch", "torch", "byoc-classifier-serving-gpu"), ("onnx", "onnxruntime", "byoc-classifier-serving-cpu")],
)
def test_a_runtime_that_is_not_installed_names_the_image_that_has_it(monkeypatch, setting, missing, image):
    without(monkeypatch, missing)
    with pytest.raises(ValueError) as err:
        runtimes.choose(setting, gpu=False)
    reason = str(err.value)
    assert reason.startswith(f"SERVE_RUNTIME={setting} is not installed in this image") and "\n" not in reason
    assert reason.endswith(f"use auto, or the image {image}")


def test_installed_looks_without_importing():
    assert runtimes.installed("onnxruntime") and runtimes.installed("torch")
    assert not runtimes.installed("surely_not_a_module_here")


# --- the two runtimes on one artifact --------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(small_model):
    model, meta = runtimes.load(str(small_model), None, "onnx", threads=2)
    assert isinstance(model, runtimes.OnnxModel) and meta.class_names == ["ant", "bee", "cat"]
    return model


@pytest.fixture(scope="module")
def torch_model(small_model):
    threads = torch.get_num_threads()
    model, _ = runtimes.load(str(small_model), None, "torch", threads=threads)
    assert isinstance(model, runtimes.TorchModel)
    return model


def batch(size: int, seed: int = 0) -> np.ndarray:
    """``size`` noise photos through serving's preprocessing (32 px), as the handler stacks them."""
    transform = model_artifact.ArrayTransform(model_artifact.Preprocessing.for_image_size(32))
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (48 + 7 * i, 40, 3), dtype=np.uint8)) for i in range(size)]
    return np.stack([transform(image) for image in images])


@pytest.mark.parametrize("size", [1, 8])
def test_onnx_runtime_and_pytorch_agree(onnx_model, torch_model, small_model, size):
    inputs = batch(size)
    onnx, eager = onnx_model.predict(inputs), torch_model.predict(inputs)
    assert onnx.shape == eager.shape == (size, 3) and onnx.dtype == eager.dtype == np.float32
    assert np.abs(onnx - eager).max() <= model_artifact.ONNX_TOLERANCE
    assert np.allclose(onnx.sum(axis=1), 1, atol=1e-5)
    net, _ = model_artifact.load(small_model)
    with torch.no_grad():
        reference = net(torch.from_numpy(inputs)).softmax(1).numpy()
    assert np.abs(eager - reference).max() <= 1e-6  # TorchModel is plain eager PyTorch + softmax


def test_a_batch_answers_each_image_as_alone(onnx_model):
    inputs = batch(8, seed=1)
    together = onnx_model.predict(inputs)
    alone = np.concatenate([onnx_model.predict(inputs[i : i + 1]) for i in range(8)])
    assert np.abs(together - alone).max() <= 1e-6


def test_names_say_which_runtime_and_device(onnx_model, torch_model):
    import onnxruntime

    assert onnx_model.name == (
        f"onnxruntime {onnxruntime.__version__}, model.onnx (fp32: the artifact has no model.int8.onnx)"
    )
    assert onnx_model.device == "cpu"
    assert torch_model.name == f"torch {torch.__version__} on cpu"


def test_the_thread_setting_reaches_the_onnx_session(small_model):
    meta = model_artifact.load_metadata(small_model)
    for threads in (1, 3):
        options = runtimes.OnnxModel(str(small_model), meta, threads).session.get_session_options()
        assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1
    assert runtimes.OnnxModel(str(small_model), meta, 1).session.get_providers() == ["CPUExecutionProvider"]


def test_the_thread_setting_reaches_pytorch_on_the_cpu(small_model):
    before = torch.get_num_threads()
    try:
        runtimes.TorchModel(str(small_model), model_artifact.load_metadata(small_model), None, threads=1)
        assert torch.get_num_threads() == 1
        runtimes.TorchModel(str(small_model), model_artifact.load_metadata(small_model), None, threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_gpu_worker_without_cuda_runs_pytorch_on_the_cpu(small_model):
    """MMS hands a gpu_id only where it counted GPUs; without CUDA, PyTorch still serves on the CPU."""
    model, _ = runtimes.load(str(small_model), 0, "auto", threads=torch.get_num_threads())
    assert isinstance(model, runtimes.TorchModel)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "error,broken",
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (torch.AcceleratorError("an accelerator failed") if hasattr(torch, "AcceleratorError") else None, True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (ValueError("a bad batch"), False),
    ],
)
def test_only_a_cuda_failure_other_than_out_of_memory_breaks_a_worker(torch_model, onnx_model, monkeypatch,
                                                                      error, broken):  # fmt: skip
    if error is None:
        pytest.skip("this torch has no AcceleratorError")
    assert not onnx_model.is_broken(error) and not torch_model.is_broken(error)  # on the CPU nothing is
    monkeypatch.setattr(torch_model, "device", torch.device("cuda", 0))
    assert torch_model.is_broken(error) == broken


# --- artifacts without, or with a changed, model.onnx ----------------------------------------


@pytest.fixture(scope="module")
def torch_only(tmp_path_factory):
    """An artifact written with ``save(onnx=False)``, as before ONNX export existed."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("torch-only") / "model"
    prep = model_artifact.Preprocessing.for_image_size(32)
    meta = model_artifact.Metadata("resnet18", ["ant", "bee", "cat"], prep)
    artifact.save(path, model_artifact.build_model("resnet18", 3).state_dict(), meta, onnx=False)
    assert not (path / model_artifact.ONNX_FILE).exists()
    return path


def test_an_artifact_without_model_onnx_names_export_onnx_under_onnx_runtime(torch_only):
    with pytest.raises(model_artifact.ArtifactError) as err:
        runtimes.load(str(torch_only), None, "onnx", threads=1)
    reason = str(err.value)
    assert "no model.onnx" in reason and "`export-onnx`" in reason and "byoc-classifier-serving-gpu" in reason
    assert "\n" not in reason


def test_an_artifact_without_model_onnx_serves_under_pytorch(torch_only):
    model, meta = runtimes.load(str(torch_only), None, "torch", threads=torch.get_num_threads())
    probabilities = model.predict(batch(2))
    assert probabilities.shape == (2, 3) and meta.onnx_sha256 == ""


def test_export_onnx_makes_an_old_artifact_serve_on_onnx_runtime(torch_only, tmp_path):
    """What the reason advises works: ``export-onnx`` adds model.onnx, and both runtimes then agree."""
    shutil.copytree(torch_only, tmp_path / "model")
    assert artifact.main([str(tmp_path / "model")]) == 0
    onnx, _ = runtimes.load(str(tmp_path / "model"), None, "onnx", threads=1)
    eager, _ = runtimes.load(str(torch_only), None, "torch", threads=torch.get_num_threads())
    inputs = batch(3, seed=2)
    assert np.abs(onnx.predict(inputs) - eager.predict(inputs)).max() <= model_artifact.ONNX_TOLERANCE


@pytest.mark.parametrize("change", ["one byte", "missing"])
def test_a_changed_model_onnx_is_refused(small_model, tmp_path, change):
    model = tmp_path / "model"
    shutil.copytree(small_model, model)
    path = model / model_artifact.ONNX_FILE
    if change == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    expected = "does not match the checksum in artifact.json" if change == "one byte" else "model.onnx not found"
    with pytest.raises(model_artifact.ArtifactError, match=expected):
        runtimes.load(str(model), None, "onnx", threads=1)
    runtimes.load(str(model), None, "torch", threads=torch.get_num_threads())  # model.pt is intact


# --- int8 or fp32 on ONNX Runtime ----------------------------------------------------------


def with_int8(drop_points: float | None) -> model_artifact.Metadata:
    meta = model_artifact.Metadata("resnet18", ["a", "b"], model_artifact.Preprocessing.for_image_size(32))
    if drop_points is not None:
        fp32 = 0.9
        meta.int8 = model_artifact.Int8Check("0" * 64, "test", 1000, fp32, fp32 - drop_points / 100, 0.97)
    return meta


@pytest.mark.parametrize(
    "drop,setting,max_drop,expected,why",
    [
        (None, "auto", 0.5, "fp32", "the artifact has no model.int8.onnx"),
        (None, "fp32", 0.5, "fp32", "the artifact has no model.int8.onnx"),
        (0.3, "auto", 0.5, "int8", "(-0.30 points) on 1000 validation images: within SERVE_INT8_MAX_DROP=0.5"),
        (0.5, "auto", 0.5, "int8", "within SERVE_INT8_MAX_DROP=0.5"),
        (-0.2, "auto", 0.0, "int8", "(+0.20 points)"),
        (0.7, "auto", 0.5, "fp32", "(-0.70 points) on 1000 validation images: more than SERVE_INT8_MAX_DROP=0.5 lost"),
        (0.7, "auto", 1.0, "int8", "within SERVE_INT8_MAX_DROP=1"),
        (3.0, "int8", 0.5, "int8", "SERVE_PRECISION=int8; int8 accuracy 0.8700 against fp32 0.9000"),
        (0.1, "fp32", 0.5, "fp32", "SERVE_PRECISION=fp32"),
    ],
)
def test_choose_precision(drop, setting, max_drop, expected, why):
    chosen, reason = runtimes.choose_precision(with_int8(drop), setting, max_drop)
    assert chosen == expected and why in reason and "\n" not in reason


def test_int8_forced_without_an_int8_model_names_what_to_do():
    expected = "no model.int8.onnx: train with int8=true, run `export-onnx --int8 VALIDATION_FOLDER`"
    with pytest.raises(model_artifact.ArtifactError, match=re.escape(expected)):
        runtimes.choose_precision(with_int8(None), "int8")


def test_int8_forced_on_pytorch_is_refused(small_model):
    with pytest.raises(ValueError, match="SERVE_PRECISION=int8 runs on ONNX Runtime"):
        runtimes.load(str(small_model), None, "torch", threads=1, precision="int8")


@pytest.fixture(scope="module")
def int8_model(small_model, tmp_path_factory):
    """small_model with a model.int8.onnx calibrated on noise, recorded with a zero drop."""
    from train import quantize

    path = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(small_model, path)
    meta = model_artifact.load_metadata(path)
    sha256 = quantize.quantize(path / model_artifact.ONNX_FILE, list(batch(8, seed=3)), path / model_artifact.INT8_FILE)
    meta.int8 = model_artifact.Int8Check(sha256, "test", 8, 0.5, 0.5, 1.0)
    artifact.write_metadata(path, meta)
    return path


def test_auto_serves_a_recorded_int8_model_on_onnx_runtime_and_fp32_on_pytorch(int8_model):
    onnx, _ = runtimes.load(str(int8_model), None, "onnx", threads=1)
    assert onnx.precision == "int8" and ", model.int8.onnx (int8: " in onnx.name
    fp32, _ = runtimes.load(str(int8_model), None, "onnx", threads=1, precision="fp32")
    eager, _ = runtimes.load(str(int8_model), None, "torch", threads=torch.get_num_threads())
    inputs = batch(4, seed=4)
    assert np.abs(fp32.predict(inputs) - eager.predict(inputs)).max() <= model_artifact.ONNX_TOLERANCE
    quantized = onnx.predict(inputs)
    assert quantized.shape == (4, 3) and np.allclose(quantized.sum(axis=1), 1, atol=1e-4)
    assert not np.array_equal(quantized, fp32.predict(inputs))  # another file answered


def test_a_recorded_int8_model_missing_from_the_folder_serves_fp32_unless_forced(int8_model, tmp_path):
    """A model.tar.gz repacked with model.onnx alone still serves, in fp32, and says why."""
    model = tmp_path / "model"
    shutil.copytree(int8_model, model)
    (model / model_artifact.INT8_FILE).unlink()
    served, _ = runtimes.load(str(model), None, "onnx", threads=1)
    assert served.precision == "fp32"
    assert "artifact.json records a model.int8.onnx, but the model folder has none" in served.name
    with pytest.raises(model_artifact.ArtifactError, match=r"model\.int8\.onnx not found"):
        runtimes.load(str(model), None, "onnx", threads=1, precision="int8")


def test_a_changed_int8_model_is_refused(int8_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(int8_model, model)
    data = bytearray((model / model_artifact.INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (model / model_artifact.INT8_FILE).write_bytes(bytes(data))
    with pytest.raises(model_artifact.ArtifactError, match=r"model\.int8\.onnx does not match the checksum"):
        runtimes.load(str(model), None, "onnx", threads=1)
    runtimes.load(str(model), None, "onnx", threads=1, precision="fp32")  # model.onnx is intact


# --- settings --------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch):
    """A clean serving environment; returns monkeypatch to set variables with."""
    for name in ("SERVE_RUNTIME", "SERVE_THREADS", "SERVE_TORCH_THREADS", "SAGEMAKER_MODEL_SERVER_WORKERS",
                 "SERVE_PRECISION", "SERVE_INT8_MAX_DROP"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("raw,runtime", [(None, "auto"), ("", "auto"), ("onnx", "onnx"), (" Torch ", "torch"),
                                         ("AUTO", "auto")])  # fmt: skip
def test_settings_read_serve_runtime(env, raw, runtime):
    if raw is not None:
        env.setenv("SERVE_RUNTIME", raw)
    assert Settings.from_env().runtime == runtime


@pytest.mark.parametrize("raw", ["tensorrt", "onnxruntime", "cuda"])
def test_a_bad_serve_runtime_is_named(env, raw):
    env.setenv("SERVE_RUNTIME", raw)
    with pytest.raises(ValueError) as err:
        Settings.from_env()
    assert str(err.value) == f"SERVE_RUNTIME={raw!r} must be one of auto, onnx, torch"


def test_settings_read_serve_threads_and_the_old_name(env):
    env.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    from serve.settings import available_cpus

    assert Settings.from_env().threads == available_cpus()  # CPUs / workers
    env.setenv("SERVE_TORCH_THREADS", "3")
    assert Settings.from_env().threads == 3  # the old name still works
    env.setenv("SERVE_THREADS", "5")
    assert Settings.from_env().threads == 5  # the new name wins
    env.delenv("SERVE_TORCH_THREADS")
    assert Settings.from_env().threads == 5


@pytest.mark.parametrize("name", ["SERVE_THREADS", "SERVE_TORCH_THREADS"])
@pytest.mark.parametrize("raw,words", [("many", "is not an integer"), ("0", "must be between 1 and any")])
def test_a_bad_thread_count_is_named(env, name, raw, words):
    env.setenv(name, raw)
    with pytest.raises(ValueError) as err:
        Settings.from_env()
    assert str(err.value) == f"{name}={raw!r} {words}"


@pytest.mark.parametrize(
    "variables,precision,max_drop",
    [({}, "auto", 0.5), ({"SERVE_PRECISION": " INT8 "}, "int8", 0.5), ({"SERVE_PRECISION": "fp32"}, "fp32", 0.5),
     ({"SERVE_INT8_MAX_DROP": "1.5"}, "auto", 1.5), ({"SERVE_INT8_MAX_DROP": "0"}, "auto", 0.0)],
)  # fmt: skip
def test_settings_read_the_precision(env, variables, precision, max_drop):
    for name, value in variables.items():
        env.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.precision, settings.int8_max_drop) == (precision, max_drop)


@pytest.mark.parametrize(
    "name,value,message",
    [("SERVE_PRECISION", "fp16", "SERVE_PRECISION='fp16' must be one of auto, int8, fp32"),
     ("SERVE_INT8_MAX_DROP", "half", "SERVE_INT8_MAX_DROP='half' is not a number"),
     ("SERVE_INT8_MAX_DROP", "-1", "SERVE_INT8_MAX_DROP='-1' must be between 0 and 100"),
     ("SERVE_INT8_MAX_DROP", "nan", "must be between 0 and 100")],
)  # fmt: skip
def test_bad_precision_settings_are_named(env, name, value, message):
    env.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env()
