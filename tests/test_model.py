"""Building the classifier: head replacement, freezing, pretrained weight sources."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

import model_artifact
from train import model as model_lib
from train.failure import TrainingError


def args(**kw):
    return SimpleNamespace(**({"model": "resnet18", "pretrained": False, "freeze_backbone": False} | kw))


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121"])
def test_new_head_matches_what_serving_builds(architecture):
    pretrained_shape = model_artifact.build_model(architecture, 1000)
    model_lib.replace_head(pretrained_shape, 7)
    served = model_artifact.build_model(architecture, 7)
    ours = {k: v.shape for k, v in pretrained_shape.state_dict().items()}
    assert ours == {k: v.shape for k, v in served.state_dict().items()}


def test_freeze_backbone_trains_the_head_only():
    net = model_lib.build(args(freeze_backbone=True), 5, None)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def _resnet18_weights() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_pretrained_from_the_pretrained_channel(tmp_path):
    weights = _resnet18_weights()
    torch.save({"state_dict": weights}, tmp_path / "my-weights.pth")
    net = model_lib.build(args(pretrained=True), 3, tmp_path)
    torch.testing.assert_close(net.conv1.weight, weights["conv1.weight"])
    assert net.fc.out_features == 3


def test_pretrained_channel_with_several_files_is_ambiguous(tmp_path):
    for name in ("a.pth", "b.pth"):
        torch.save({}, tmp_path / name)
    with pytest.raises(TrainingError, match="exactly one"):
        model_lib.build(args(pretrained=True), 3, tmp_path)


def test_pretrained_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    weights = _resnet18_weights()
    torch.save(weights, cache / "resnet18-f37072fd.pth")
    net = model_lib.build(args(pretrained=True), 4, None)
    torch.testing.assert_close(net.layer1[0].conv1.weight, weights["layer1.0.conv1.weight"])


def test_offline_without_weights_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(model_lib, "weights_url", lambda arch: "http://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(TrainingError) as err:
        model_lib.build(args(pretrained=True), 4, None)
    message = str(err.value)
    assert "pretrained channel" in message.replace("'", "") and "pretrained=false" in message
    assert "resnet18-f37072fd.pth" in message


def test_weights_for_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "w.pth")
    with pytest.raises(TrainingError, match="do not fit resnet18"):
        model_lib.build(args(pretrained=True), 3, tmp_path)


class _Touch:
    """Unpickling this creates ``marker``: the code a planted weights file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": _Touch(marker)}, path)


def test_a_planted_hub_checkpoint_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    marker = tmp_path / "MARKER"
    _plant(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    with pytest.raises(TrainingError) as err:
        model_lib.build(args(pretrained=True), 4, None)
    assert not marker.exists()
    reason = str(err.value)
    assert "\n" not in reason and "resnet18-f37072fd.pth" in reason and "pretrained=false" in reason


def test_a_planted_pretrained_channel_file_runs_no_code(tmp_path):
    marker = tmp_path / "MARKER"
    _plant(tmp_path / "pretrained" / "resnet18-f37072fd.pth", marker)
    with pytest.raises(TrainingError) as err:
        model_lib.build(args(pretrained=True), 4, tmp_path / "pretrained")
    assert not marker.exists()
    assert "\n" not in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)


@pytest.mark.parametrize("name", ["resnet18-f37072fd.pth", "mine.pth"])
def test_weights_outside_the_pretrained_channel_are_not_read(tmp_path, name, caplog):
    torch.save(_resnet18_weights(), tmp_path / "outside.pth")
    channel = tmp_path / "pretrained"
    channel.mkdir()
    (channel / name).symlink_to(tmp_path / "outside.pth")
    with pytest.raises(TrainingError, match="found none"):
        model_lib.build(args(pretrained=True), 3, channel)
    assert f"pretrained: ignored 1 link(s) that lead outside the channel {channel} (first: {channel / name})" in [
        r.getMessage() for r in caplog.records
    ]


def test_links_inside_the_pretrained_channel_work(tmp_path):
    weights = _resnet18_weights()
    real = tmp_path / "store" / "pretrained"
    (real / "store").mkdir(parents=True)
    torch.save(weights, real / "store" / "mine.pth")
    (real / "resnet18-f37072fd.pth").symlink_to(real / "store" / "mine.pth")
    (tmp_path / "channel").symlink_to(real)  # the channel itself is a link, as in tests' make_job
    net = model_lib.build(args(pretrained=True), 3, tmp_path / "channel")
    torch.testing.assert_close(net.conv1.weight, weights["conv1.weight"])
