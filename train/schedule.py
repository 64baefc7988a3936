"""The learning-rate schedule: linear warmup, then cosine, step or constant, set once per epoch."""

from __future__ import annotations

import math
from argparse import Namespace

import torch


def lr_at(args: Namespace, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): linear warmup, then cosine, step or constant."""
    if epoch < args.lr_warmup_epochs:
        return args.lr * (epoch + 1) / (args.lr_warmup_epochs + 1)
    done, span = epoch - args.lr_warmup_epochs, max(args.epochs - args.lr_warmup_epochs, 1)
    if args.lr_scheduler == "cosine":
        return args.lr * 0.5 * (1 + math.cos(math.pi * done / span))
    if args.lr_scheduler == "step":
        return args.lr * args.lr_gamma ** (done // args.lr_step_size)
    return args.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
