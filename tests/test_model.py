"""Building the classifier: head replacement, freezing, pretrained weight sources."""

from __future__ import annotations

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
