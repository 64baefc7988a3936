"""What the job is told: hyperparameters and the SageMaker paths, parsed once.

Hyperparameters arrive as ``--key value`` arguments (the sagemaker-training toolkit turns
``hyperparameters.json`` into them after ``json.loads`` of each value, so SDK v2's
JSON-quoted strings and SDK v3's raw strings both end up here as plain text).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.arguments import number
from common.cpus import available_cpus  # re-exported: train.config.available_cpus
from model_artifact import MAX_IMAGE_PIXELS  # serving's SERVE_MAX_PIXELS default; train.data imports it from here
from train.failure import TrainingError, one_line

DEFAULT_BASE_DIR = "/opt/ml"
AMP_MODES = ("auto", "bf16", "fp16", "off")
CACHE_MODES = ("auto", "on", "off")
LR_SCHEDULERS = ("cosine", "step", "constant")
# Hyperparameters that do not change what is learned: a checkpoint resumes across changes of these.
OPERATIONAL = (
    "num_workers", "log_interval", "checkpoint_dir", "profile", "profile_steps", "max_bad_fraction", "input_cache_dir",
    "int8",
)  # fmt: skip
# The channels the trainer reads, all as folders of files; others in inputdataconfig.json are ignored.
TRAINER_CHANNELS = ("training", "validation", "test", "pretrained")
_SHARDING_HARM = {
    "data": "each host would get different files, perhaps different classes, but every host must see every "
    "class and the same file list (the processes split it among themselves)",
    "pretrained": "a host could get no weights file, but every host must load the same weights",
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class ConfigError(TrainingError):
    """A hyperparameter is unknown or has an invalid value."""


@dataclass(frozen=True)
class Paths:
    """Where SageMaker puts inputs and collects outputs (``/opt/ml`` or SAGEMAKER_BASE_DIR)."""

    base_dir: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    channels: dict[str, Path]


def base_dir(env: os._Environ | dict | None = None) -> Path:
    """``/opt/ml``, or SAGEMAKER_BASE_DIR: a folder laid out like it, to train off SageMaker."""
    env = os.environ if env is None else env
    return Path(env.get("SAGEMAKER_BASE_DIR", DEFAULT_BASE_DIR))


def resolve_paths(env: os._Environ | dict | None = None) -> Paths:
    """Read the toolkit's SM_* variables, falling back to the ``/opt/ml`` layout."""
    env = os.environ if env is None else env
    base = base_dir(env)
    if "SM_CHANNELS" in env:
        names = json.loads(env["SM_CHANNELS"])
        channels = {n: Path(env.get(f"SM_CHANNEL_{n.upper()}", base / "input/data" / n)) for n in names}
    else:
        data = base / "input" / "data"
        channels = {p.name: p for p in sorted(data.iterdir()) if p.is_dir()} if data.is_dir() else {}
    return Paths(
        base_dir=base,
        model_dir=Path(env.get("SM_MODEL_DIR", base / "model")),
        output_dir=Path(env.get("SM_OUTPUT_DIR", base / "output")),
        output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", base / "output" / "data")),
        checkpoint_dir=checkpoint_local_path(base),
        channels=channels,
    )


def scratch_dir(base: Path) -> Path:
    """Scratch space: SageMaker's ``/tmp`` (on the job's storage, never uploaded); off SageMaker
    (SAGEMAKER_BASE_DIR) a folder inside the base dir, so jobs side by side keep apart."""
    return Path("/tmp") if base == Path(DEFAULT_BASE_DIR) else base / "tmp"


def checkpoint_local_path(base: Path) -> Path:
    """``LocalPath`` of ``input/config/checkpointconfig.json`` (SageMaker writes it with checkpoint_s3_uri)."""
    path = base / "input" / "config" / "checkpointconfig.json"
    if not path.is_file():
        return base / "checkpoints"
    try:
        local = json.loads(path.read_text()).get("LocalPath")
    except (ValueError, AttributeError) as exc:
        raise TrainingError(f"{path} is not a JSON object: {exc}") from exc
    return Path(local) if local else base / "checkpoints"


def read_json_object(path: Path) -> dict | None:
    """The JSON object in ``path`` (None when there is no such file); anything else is a one-line TrainingError."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path} is not valid JSON: {one_line(str(exc))}") from exc
    if not isinstance(value, dict):
        raise TrainingError(f"{path} is not a JSON object")
    return value


def host_count(config_dir: Path) -> int:
    """How many hosts the job has: the ``hosts`` of ``resourceconfig.json`` (1 without it)."""
    hosts = (read_json_object(config_dir / "resourceconfig.json") or {}).get("hosts")
    return len(hosts) if isinstance(hosts, list) and hosts else 1


def check_input_modes(base: Path) -> None:
    """Refuse, in one line, channel settings of ``inputdataconfig.json`` that this trainer cannot honour.

    Missing file or keys mean File and FullyReplicated (local mode and scripts/demo_host.py write
    only some). FastFile mounts S3 as a folder: it is read as one. Other channels are not read.
    """
    config_dir = base / "input" / "config"
    path = config_dir / "inputdataconfig.json"
    channels = read_json_object(path) or {}
    hosts = host_count(config_dir)
    for name in TRAINER_CHANNELS:
        if name in channels:
            settings = channels[name]
            if not isinstance(settings, dict):
                raise TrainingError(f"{path}: channel {name!r} is not a JSON object")
            _check_channel(name, settings, hosts)


def _check_channel(name: str, settings: dict, hosts: int) -> None:
    """Pipe mode: refused. ShardedByS3Key: refused with several hosts (with one it changes nothing)."""
    mode = str(settings.get("TrainingInputMode") or "File")
    if mode.lower() == "pipe":
        raise TrainingError(
            f"channel {name!r} is in Pipe mode (records streamed through a FIFO, no files): this trainer reads "
            'image files; use TrainingInputMode File or FastFile (e.g. input_mode="FastFile" on the Estimator '
            "or TrainingInput)"
        )
    distribution = str(settings.get("S3DistributionType") or "FullyReplicated")
    if distribution.lower() == "shardedbys3key" and hosts > 1:
        why = _SHARDING_HARM["pretrained" if name == "pretrained" else "data"]
        raise TrainingError(
            f"channel {name!r} is ShardedByS3Key across {hosts} hosts: {why}; use S3DistributionType "
            'FullyReplicated (distribution="FullyReplicated" on the TrainingInput)'
        )


def log_level(env: os._Environ | dict | None = None) -> int:
    """SAGEMAKER_CONTAINER_LOG_LEVEL (``10``/``DEBUG``), else the SDK's ``container_log_level`` (SM_LOG_LEVEL).

    The toolkit lets the hyperparameter (always INFO unless given) override the variable; here
    the variable wins, so that ``environment={"SAGEMAKER_CONTAINER_LOG_LEVEL": "DEBUG"}`` works.
    """
    env = os.environ if env is None else env
    for name in ("SAGEMAKER_CONTAINER_LOG_LEVEL", "SM_LOG_LEVEL"):
        text = str(env.get(name, "")).strip()
        if text.isdigit():
            return int(text)
        if isinstance(logging.getLevelName(text.upper()), int):
            return logging.getLevelName(text.upper())
    return logging.INFO


def cpus_per_process(processes_on_this_host: int) -> int:
    """This host's CPUs shared among its training processes: auto ``num-workers``."""
    return max(1, available_cpus() // processes_on_this_host)


# --- value types: each raises ArgumentTypeError with the allowed values -------------------


def boolean(text: str) -> bool:
    """true/True/1/yes or false/False/0/no."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false/1/0)")


def _choice(values: tuple[str, ...], aliases: dict[str, str] | None = None):
    def parse(text: str) -> str:
        value = (aliases or {}).get(text.lower(), text.lower())
        if value not in values:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(values)}")
        return value

    return parse


def _workers(text: str) -> int | None:
    return None if text.lower() == "auto" else number(int, 0)(text)


def _model_name(text: str) -> str:
    import torchvision  # deferred: parsing --help should not wait for torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if text not in names or text in ("googlenet", "inception_v3"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a supported torchvision classifier (e.g. resnet18, resnet50, "
            "mobilenet_v3_large, efficientnet_b0, convnext_tiny, vit_b_16)"
        )
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2
        message = message.replace("argument --", "hyperparameter ")
        raise ConfigError(message)


def get_args_parser() -> argparse.ArgumentParser:
    """The one parser: every hyperparameter, its type and default."""
    p = _Parser(prog="python -m train", description=__doc__, allow_abbrev=False)
    fraction = number(float, 0, 1, high_open=True)
    p.add_argument("--epochs", type=number(int, 1), default=10)
    p.add_argument("--batch-size", type=number(int, 1), default=64, help="per process")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=0.01)
    p.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=number(float, 0), default=1e-4)
    p.add_argument("--lr-scheduler", type=_choice(LR_SCHEDULERS), default="cosine")
    p.add_argument("--lr-warmup-epochs", type=number(int, 0), default=0)
    p.add_argument("--lr-step-size", type=number(int, 1), default=3, help="step scheduler")
    p.add_argument("--lr-gamma", type=number(float, 0, 1, low_open=True), default=0.1)
    p.add_argument("--crop-min-scale", type=number(float, 0, 1, low_open=True), default=0.08, help="RandomResizedCrop")
    cache_aliases = {"true": "on", "1": "on", "false": "off", "0": "off"}
    p.add_argument("--input-cache", type=_choice(CACHE_MODES, cache_aliases), default="auto", help="auto: 2+ epochs")
    p.add_argument("--input-cache-size", type=number(int, 16, 4096), default=None, help="short side; 2 x image-size")
    p.add_argument("--input-cache-dir", type=Path, default=None, help="default /tmp/input-cache (scratch space)")
    p.add_argument("--label-smoothing", type=fraction, default=0.0)
    p.add_argument("--model", type=_model_name, default="resnet18")
    p.add_argument("--pretrained", type=boolean, default=True)
    p.add_argument("--freeze-backbone", type=boolean, default=False, help="train the head only")
    p.add_argument("--image-size", type=number(int, 16, 1024), default=224)
    p.add_argument("--num-workers", type=_workers, default=None, help="auto: one per CPU")
    amp_aliases = {"true": "auto", "1": "auto", "false": "off", "0": "off"}
    p.add_argument("--amp", type=_choice(AMP_MODES, amp_aliases), default="auto")
    p.add_argument("--channels-last", type=boolean, default=True)
    p.add_argument("--seed", type=number(int, 0), default=42)
    p.add_argument("--val-split", type=fraction, default=0.1, help="flat layouts only")
    p.add_argument("--test-split", type=fraction, default=0.0, help="flat layouts only")
    p.add_argument("--drop-clutter", type=boolean, default=True, help="Caltech-256 layout")
    p.add_argument("--max-bad-fraction", type=number(float, 0, 1), default=0.01)
    p.add_argument(
        "--max-image-pixels", type=number(int, 1), default=MAX_IMAGE_PIXELS, help="larger images count as unreadable"
    )
    p.add_argument("--log-interval", type=number(int, 0), default=50, help="steps; 0: off")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="default BASE/checkpoints")
    p.add_argument("--profile", type=boolean, default=False, help="step timings, a trace and a report in output data")
    p.add_argument("--profile-steps", type=number(int, 1, 50), default=5, help="steps torch.profiler traces")
    p.add_argument("--int8", type=boolean, default=True, help="model.int8.onnx too, checked on validation")
    return p


def parse_hyperparameters(argv: list[str]) -> argparse.Namespace:
    """Parse ``--key value`` pairs; reject unknown keys, naming the allowed ones."""
    parser = get_args_parser()
    known = {o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"help"}
    normalized: list[str] = []
    pairs = iter(argv)
    for token in pairs:
        if token in ("-h", "--help"):
            parser.print_help()
            raise SystemExit(0)
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: hyperparameters are --key value")
        key, _, inline = token[2:].partition("=")
        value = inline if inline else next(pairs, "")
        if key.startswith("_"):  # SageMaker's own, e.g. _tuning_objective_metric
            continue
        key = key.replace("_", "-")
        if key not in known:
            raise ConfigError(f"unknown hyperparameter {key!r}; allowed: {', '.join(sorted(known))}")
        normalized += [f"--{key}", value]
    return parser.parse_args(normalized)
