"""A course-style training script for script mode: ResNet18 on the image folders of a channel.

    Estimator(image_uri=TRAINING_IMAGE, entry_point="train_model.py", source_dir="examples/script_mode",
              hyperparameters={"lr": 0.01, "batch-size": 32, "momentum": 0.9}, ...)

It reads SM_CHANNEL_TRAINING (and SM_CHANNEL_TEST if there is one) as torchvision ImageFolders,
takes its hyperparameters as ``--key value`` arguments, prints ``test_accuracy=0.42`` for a metric
regex, and saves ``model.pth`` (a state dict) and ``labels.txt`` to SM_MODEL_DIR, as inference.py
here serves them. Started by torchrun (``distribution={"torch_distributed": {"enabled": True}}``),
each process trains on its shard with DistributedDataParallel. On SIGTERM (StopTrainingJob, spot
interruption) it saves a checkpoint to --checkpoint-dir after the current step and stops; the
next run resumes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, models, transforms

STOP = {"signal": 0}  # set by the SIGTERM handler, read between steps
SEEN = ("SM_CURRENT_HOST", "SM_HOSTS", "SM_NUM_GPUS", "SM_NUM_CPUS", "SM_HPS", "SM_CHANNEL_TRAINING", "SM_MODEL_DIR")
SEEN += ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")  # set by torchrun


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--pretrained", type=lambda s: s.lower() == "true", default=False)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAINING"))
    parser.add_argument("--test", default=os.environ.get("SM_CHANNEL_TEST"))
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    parser.add_argument("--checkpoint-dir", default="/opt/ml/checkpoints")
    return parser.parse_args(argv)


def loaders(args: argparse.Namespace, world: int, rank: int) -> tuple[DataLoader, DataLoader | None, list[str]]:
    """The training loader (this rank's shard) and the test loader, from ImageFolder channels."""
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    size = (args.image_size, args.image_size)
    train_tf = transforms.Compose(
        [transforms.Resize(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    test_tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(args.train, transform=train_tf)
    sampler = DistributedSampler(train_set, world, rank, shuffle=True) if world > 1 else None
    train = DataLoader(
        train_set, args.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=args.num_workers
    )
    test = None
    if args.test:
        test = DataLoader(
            datasets.ImageFolder(args.test, transform=test_tf), args.batch_size, num_workers=args.num_workers
        )
    return train, test, train_set.classes


def build_model(classes: int, pretrained: bool) -> nn.Module:
    """ResNet18 with a new head; with pretrained weights only the head trains."""
    model = models.resnet18(weights="DEFAULT" if pretrained else None)
    if pretrained:
        for parameter in model.parameters():
            parameter.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, classes)
    return model


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy on a loader."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    return loss / count, correct / count


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)
    print(f"checkpoint saved to {path} (epoch {epoch})", flush=True)


def stop_requested(device: torch.device, world: int) -> bool:
    """Whether any process was asked to stop: all stop at the same step, so none waits in a collective."""
    flag = torch.tensor([STOP["signal"]], device=device)
    if world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def setup(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Join torchrun's process group if there is one; print and save the environment this process sees."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seen = {name: os.environ.get(name) for name in SEEN}
    print(f"environment: {json.dumps(seen)}", flush=True)
    Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_data_dir) / f"environment-rank{rank}.json").write_text(json.dumps(seen | {"args": vars(args)}))
    return world, rank, device


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """The epoch to start from: a restarted (spot) job continues from its checkpoint."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resumed from {path} at epoch {state['epoch']}", flush=True)
    return state["epoch"]


def train(args: argparse.Namespace) -> None:
    world, rank, device = setup(args)
    train_loader, test_loader, classes = loaders(args, world, rank)
    model = build_model(len(classes), args.pretrained).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr, momentum=args.momentum)
    checkpoint = Path(args.checkpoint_dir) / "checkpoint.pt"
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    for epoch in range(resume(checkpoint, model, optimizer, device), args.epochs):
        net.train()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        for step, (images, labels) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            print(f"epoch {epoch + 1} step {step + 1}/{len(train_loader)} train_loss={loss.item():.4f}", flush=True)
            if stop_requested(device, world):
                if rank == 0:
                    save_checkpoint(checkpoint, model, optimizer, epoch)
                sys.exit(128 + signal.SIGTERM)
    if rank == 0:
        finish(args, model, test_loader, classes, device)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def finish(args: argparse.Namespace, model: nn.Module, test: DataLoader | None, classes: list[str], device) -> None:
    """Print the test metrics (one metric per line, for the tuner's regex) and save the model."""
    if test is not None:
        test_loss, test_accuracy = evaluate(model, test, device)
        print(f"test_loss={test_loss:.4f}", flush=True)
        print(f"test_accuracy={test_accuracy:.4f}", flush=True)
    Path(args.model_dir).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), Path(args.model_dir) / "model.pth")
    (Path(args.model_dir) / "labels.txt").write_text("".join(f"{name}\n" for name in classes))  # for inference.py
    print(f"model saved to {args.model_dir}", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, _frame: STOP.update(signal=signum))
    train(parse_args())
