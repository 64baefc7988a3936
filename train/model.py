"""The model: a torchvision classifier, optionally from pretrained weights, with a new head."""

from __future__ import annotations

import logging
import pickle
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

import model_artifact
from train import data
from train.failure import TrainingError, first_line

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".pth", ".pt")


def weights_url(architecture: str) -> str:
    """The URL of torchvision's default ImageNet weights for ``architecture``."""
    return torchvision.models.get_model_weights(architecture).DEFAULT.url


def _unloadable(path: Path, exc: Exception) -> str:
    """Why ``path`` could not be loaded as weights, on one line."""
    if isinstance(exc, pickle.UnpicklingError):
        return f"cannot load {path}: not a plain state dict of tensors (weights_only=True refuses pickled objects)"
    return f"cannot load {path}: {type(exc).__name__}: {first_line(str(exc))}"


def _weight_files(folder: Path) -> list[Path]:
    """The weight files in the channel; a link that leads out of it is ignored, never read."""
    channel = data.Confined(folder, "pretrained")
    found = [p for p in sorted(folder.rglob("*")) if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    inside = [p for p in found if channel.allows(p)]
    channel.report()
    return inside


def _from_channel(folder: Path, architecture: str) -> dict | None:
    """Weights from the ``pretrained`` channel: torchvision's file name, or its only file."""
    expected = folder / Path(weights_url(architecture)).name
    files = _weight_files(folder)
    path = expected if expected in files else (files[0] if len(files) == 1 else None)
    if path is None:
        raise TrainingError(
            f"the pretrained channel ({folder}) should hold {expected.name} or exactly one "
            f"{'/'.join(WEIGHT_SUFFIXES)} file; found {[p.name for p in files] or 'none'}"
        )
    log.info("pretrained weights from the pretrained channel: %s", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a hostile or corrupt file: refused or unreadable, never run
        raise TrainingError(_unloadable(path, exc)) from exc
    for key in ("state_dict", "model"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _from_torchvision(architecture: str) -> dict:
    """torchvision's cache ($TORCH_HOME/hub/checkpoints), else a download."""
    url = weights_url(architecture)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a network that drops packets must not hang the job
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except OSError as exc:  # URLError, timeouts, DNS failures
        raise TrainingError(
            f"cannot get pretrained {architecture} weights: not in {cache.parent} and the download "
            f"failed ({first_line(str(exc))}). Supply {cache.name} in a 'pretrained' channel, place it in "
            f"{cache.parent}, or set pretrained=false to train from scratch"
        ) from exc
    except Exception as exc:  # a planted or corrupt cache file: refused or unreadable, never run
        raise TrainingError(
            f"{_unloadable(cache, exc)}. Delete it, supply torchvision's file in a 'pretrained' channel, "
            "or set pretrained=false"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    log.info("pretrained weights from torchvision: %s", url)
    return state


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the last Linear layer (torchvision's classifier) for one with ``num_classes``."""
    name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(head.in_features, num_classes))
    return name


def build(args, num_classes: int, pretrained_dir: Path | None) -> nn.Module:
    """The classifier to train: pretrained backbone (if asked) and a fresh head."""
    if not args.pretrained:
        model = model_artifact.build_model(args.model, num_classes)
        head = replace_head(model, num_classes)  # same init whether pretrained or not
    else:
        state = _from_channel(pretrained_dir, args.model) if pretrained_dir else _from_torchvision(args.model)
        model = model_artifact.build_model(args.model, 1000)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrainingError(f"the pretrained weights do not fit {args.model}: {str(exc).splitlines()[0]}") from exc
        head = replace_head(model, num_classes)
    if args.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head + ".")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model %s: head %r, %d classes, %.2fM trainable parameters", args.model, head, num_classes, trainable / 1e6
    )
    return model
