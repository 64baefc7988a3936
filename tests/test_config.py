"""Hyperparameter parsing (every path and rejection) and SageMaker path resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from sagemaker_training import environment, mapping

from tests.conftest import failure_text, make_job, run_train
from train import config
from train.config import ConfigError, parse_hyperparameters


def through_toolkit(tmp_path, monkeypatch, hps: dict) -> list[str]:
    """What the toolkit makes of hyperparameters.json: json.loads each value, then --key value."""
    path = tmp_path / "hyperparameters.json"
    path.write_text(json.dumps(hps))
    monkeypatch.setattr(environment, "hyperparameters_file_dir", str(path))
    return mapping.to_cmd_args(environment.read_hyperparameters())


@pytest.mark.parametrize("quoted", [True, False], ids=["sdk-v2-json-quoted", "sdk-v3-raw"])
def test_quoted_and_raw_strings_parse_the_same(tmp_path, monkeypatch, quoted):
    raw = {"lr": "0.05", "batch-size": "128", "momentum": "0.7", "model": "resnet34", "pretrained": "false"}
    hps = {k: json.dumps(v) if quoted else v for k, v in raw.items()}
    args = parse_hyperparameters(through_toolkit(tmp_path, monkeypatch, hps))
    assert (args.lr, args.batch_size, args.momentum) == (0.05, 128, 0.7)
    assert (args.model, args.pretrained) == ("resnet34", False)


def test_defaults():
    args = parse_hyperparameters([])
    assert (args.model, args.pretrained, args.freeze_backbone) == ("resnet18", True, False)
    assert (args.amp, args.num_workers, args.image_size) == ("auto", None, 224)
    assert args.max_image_pixels == 40_000_000  # serving's SERVE_MAX_PIXELS default


def test_max_image_pixels():
    assert parse_hyperparameters(["--max-image-pixels", "1e6"]).max_image_pixels == 1_000_000
    assert parse_hyperparameters(["--max_image_pixels", "250000"]).max_image_pixels == 250_000


@pytest.mark.parametrize(
    "text,expected",
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_booleans(text, expected):
    assert parse_hyperparameters(["--freeze-backbone", text]).freeze_backbone is expected


def test_toolkit_bools_and_numbers_survive(tmp_path, monkeypatch):
    # The toolkit json.loads "true" to True and prints it back as "True"; "64" comes back as "64".
    argv = through_toolkit(tmp_path, monkeypatch, {"pretrained": "true", "batch-size": "64", "epochs": "3.0"})
    args = parse_hyperparameters(argv)
    assert (args.pretrained, args.batch_size, args.epochs) == (True, 64, 3)


def test_underscore_spelling_and_sagemaker_reserved_keys():
    args = parse_hyperparameters(["--batch_size", "32", "--_tuning_objective_metric", "validation:accuracy"])
    assert args.batch_size == 32


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--learning-rate", "0.1"], ["unknown hyperparameter 'learning-rate'", "allowed: amp, batch-size, ", "lr"]),
        (["--lr", "abc"], ["lr", "'abc' is not a number > 0"]),
        (["--lr", "0"], ["lr", "> 0"]),
        (["--lr", "nan"], ["lr"]),
        (["--batch-size", "0"], ["batch-size", "integer >= 1"]),
        (["--batch-size", "1.5"], ["batch-size", "integer"]),
        (["--momentum", "1.0"], ["momentum", "< 1"]),
        (["--pretrained", "maybe"], ["pretrained", "boolean"]),
        (["--amp", "fp8"], ["amp", "auto, bf16, fp16, off"]),
        (["--lr-scheduler", "poly"], ["lr-scheduler", "cosine, step, constant"]),
        (["--model", "resnet9000"], ["model", "not a supported torchvision classifier"]),
        (["--model", "inception_v3"], ["model", "not a supported"]),
        (["--num-workers", "-1"], ["num-workers", ">= 0"]),
        (["--max-image-pixels", "0"], ["max-image-pixels", "integer >= 1"]),
        (["--max-image-pixels", "lots"], ["max-image-pixels", "integer >= 1"]),
        (["lr", "0.1"], ["unexpected argument 'lr'"]),
    ],
)
def test_rejections_name_the_key_and_allowed_values(argv, words):
    with pytest.raises(ConfigError) as err:
        parse_hyperparameters(argv)
    message = str(err.value)
    for word in words:
        assert word in message
    assert "\n" not in message


def test_amp_aliases_and_workers_auto():
    assert parse_hyperparameters(["--amp", "True"]).amp == "auto"
    assert parse_hyperparameters(["--amp", "false"]).amp == "off"
    assert parse_hyperparameters(["--num-workers", "auto"]).num_workers is None
    assert parse_hyperparameters(["--num-workers", "3"]).num_workers == 3


def test_paths_from_toolkit_variables(tmp_path):
    env = {
        "SAGEMAKER_BASE_DIR": str(tmp_path),
        "SM_CHANNELS": json.dumps(["training", "validation"]),
        "SM_CHANNEL_TRAINING": "/data/train",
        "SM_CHANNEL_VALIDATION": "/data/val",
        "SM_MODEL_DIR": "/m",
        "SM_OUTPUT_DATA_DIR": "/o/data",
    }
    paths = config.resolve_paths(env)
    assert paths.channels == {"training": config.Path("/data/train"), "validation": config.Path("/data/val")}
    assert str(paths.model_dir) == "/m" and str(paths.output_data_dir) == "/o/data"
    assert paths.checkpoint_dir == tmp_path / "checkpoints"


def test_paths_fall_back_to_the_opt_ml_layout(tmp_path):
    (tmp_path / "input" / "data" / "training").mkdir(parents=True)
    paths = config.resolve_paths({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert paths.channels == {"training": tmp_path / "input" / "data" / "training"}
    assert paths.model_dir == tmp_path / "model"
    assert paths.output_dir == tmp_path / "output"


def test_checkpointconfig_local_path_is_honoured(tmp_path):
    (tmp_path / "input" / "config").mkdir(parents=True)
    checkpoint_config = {"LocalPath": str(tmp_path / "ckpt"), "S3Path": "s3://bucket/ckpt"}
    (tmp_path / "input" / "config" / "checkpointconfig.json").write_text(json.dumps(checkpoint_config))
    assert config.resolve_paths({"SAGEMAKER_BASE_DIR": str(tmp_path)}).checkpoint_dir == tmp_path / "ckpt"


def test_a_malformed_checkpointconfig_is_a_readable_failure(tmp_path):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "checkpointconfig.json").write_text("[1")
    with pytest.raises(config.TrainingError, match=r"checkpointconfig\.json is not a JSON object"):
        config.resolve_paths({"SAGEMAKER_BASE_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    "env,level",
    [
        ({}, 20),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "10"}, 10),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "warning"}, 30),
        ({"SM_LOG_LEVEL": "40"}, 40),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "DEBUG", "SM_LOG_LEVEL": "20"}, 10),
        ({"SAGEMAKER_CONTAINER_LOG_LEVEL": "loud"}, 20),
    ],
)
def test_log_level_from_the_variable_or_the_sdk_hyperparameter(env, level):
    assert config.log_level(env) == level


# --- input modes (inputdataconfig.json) ---------------------------------------------------


def _job_config(base, channels: dict | None, hosts: int = 1):
    """input/config with ``channels`` as inputdataconfig.json (None: no such file) and ``hosts`` hosts."""
    folder = base / "input" / "config"
    folder.mkdir(parents=True, exist_ok=True)
    hosts_list = [f"algo-{i + 1}" for i in range(hosts)]
    (folder / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": hosts_list}))
    if channels is not None:
        (folder / "inputdataconfig.json").write_text(json.dumps(channels))
    return base


def _refusal(base) -> str:
    with pytest.raises(config.TrainingError) as err:
        config.check_input_modes(base)
    message = str(err.value)
    assert "\n" not in message and len(message) <= 1024
    return message


@pytest.mark.parametrize("channel", ["training", "validation", "test", "pretrained"])
def test_pipe_mode_is_refused_naming_file_and_fastfile(tmp_path, channel):
    channels = {"training": {"TrainingInputMode": "File"}, channel: {"TrainingInputMode": "Pipe"}}
    message = _refusal(_job_config(tmp_path, channels))
    assert f"channel {channel!r} is in Pipe mode" in message
    assert "use TrainingInputMode File or FastFile" in message and 'input_mode="FastFile"' in message


@pytest.mark.parametrize(
    "channels,hosts",
    [
        (None, 1),  # no inputdataconfig.json (e.g. a hand-made SAGEMAKER_BASE_DIR)
        ({"training": {}, "validation": {}}, 2),  # keys missing, as scripts/demo_host.py writes them
        ({"training": {"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated"}}, 2),
        ({"training": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}}, 1),
        ({"training": {"TrainingInputMode": "File"}, "extra": {"TrainingInputMode": "Pipe"}}, 1),  # not read
        ({"training": {}, "extra": {"S3DistributionType": "ShardedByS3Key"}}, 2),
    ],
    ids=["no-file", "keys-missing", "fastfile", "sharded-one-host", "pipe-unread-channel", "sharded-unread-channel"],
)
def test_accepted_input_configurations(tmp_path, channels, hosts):
    base = _job_config(tmp_path, channels, hosts)
    assert config.check_input_modes(base) is None
    assert config.host_count(base / "input" / "config") == hosts


@pytest.mark.parametrize("channel", ["training", "validation", "test"])
def test_sharded_data_across_hosts_is_refused(tmp_path, channel):
    channels = {"training": {}, channel: {"TrainingInputMode": "FastFile", "S3DistributionType": "ShardedByS3Key"}}
    message = _refusal(_job_config(tmp_path, channels, hosts=2))
    assert f"channel {channel!r} is ShardedByS3Key across 2 hosts" in message
    assert "every host must see every class and the same file list" in message
    assert "use S3DistributionType FullyReplicated" in message


def test_sharded_pretrained_weights_across_hosts_are_refused(tmp_path):
    channels = {"training": {}, "pretrained": {"S3DistributionType": "ShardedByS3Key"}}
    message = _refusal(_job_config(tmp_path, channels, hosts=3))
    assert "channel 'pretrained' is ShardedByS3Key across 3 hosts" in message and "same weights" in message


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"training": {"TrainingInputMode": "File"', "inputdataconfig.json is not valid JSON: Expecting"),
        ("\xff\xfe", "inputdataconfig.json is not valid JSON"),
        ('["training"]', "inputdataconfig.json is not a JSON object"),
        ('{"training": "File"}', "inputdataconfig.json: channel 'training' is not a JSON object"),
    ],
    ids=["truncated", "not-text", "a-list", "channel-not-an-object"],
)
def test_a_malformed_inputdataconfig_is_refused_in_one_line(tmp_path, text, words):
    base = _job_config(tmp_path, {})
    (base / "input" / "config" / "inputdataconfig.json").write_bytes(text.encode("latin-1"))
    assert words in _refusal(base)


def _tiny_dataset(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), (i * 60, 80 if name == "a" else 0, 0)).save(root / name / f"{i}.jpg")
    return root


TINY = {"pretrained": "false", "image-size": "16", "epochs": "1", "batch-size": "2", "num-workers": "0"}


@pytest.mark.slow
def test_pipe_mode_job_writes_the_failure_file(tmp_path):
    """Through the real ``train`` executable: Pipe gives a FIFO ``training_0`` and no folder."""
    base = make_job(tmp_path / "job", {}, TINY)
    (base / "input" / "config" / "inputdataconfig.json").write_text(
        json.dumps({"training": {"TrainingInputMode": "Pipe"}})
    )
    os.mkfifo(base / "input" / "data" / "training_0")
    result = run_train(base, timeout=180)
    assert result.returncode != 0
    reason = failure_text(base)
    assert reason.startswith("channel 'training' is in Pipe mode"), result.stdout[-3000:]
    assert "File or FastFile" in reason and reason.count("\n") == 1 and "Traceback" not in reason


@pytest.mark.slow
def test_a_fastfile_channel_trains_as_a_folder(tmp_path):
    """FastFile mounts S3 as a folder: the job trains from it like File (and ignores an unread Pipe channel)."""
    base = make_job(tmp_path / "job", {"training": _tiny_dataset(tmp_path / "data")}, TINY | {"val-split": "0.34"})
    modes = {"training": {"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated"}}
    modes["extra"] = {"TrainingInputMode": "Pipe"}
    (base / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(modes))
    result = run_train(base, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert "train 4, validation 2," in result.stdout
    assert (base / "model" / "artifact.json").is_file()


def test_scratch_space_is_sagemakers_tmp_or_inside_the_base_dir(tmp_path):
    assert config.scratch_dir(Path("/opt/ml")) == Path("/tmp")  # SageMaker's documented scratch path
    assert config.scratch_dir(tmp_path) == tmp_path / "tmp"  # jobs side by side on one machine keep apart
