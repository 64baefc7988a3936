"""Channel folders → datasets (``train.loader`` batches them).

Accepted layouts (channel ``training`` required, ``validation``/``test`` optional):

- one ImageFolder per channel: ``training/<class>/<image>``;
- the course layout, one ``training`` channel with ``train/ valid/ test/`` subfolders;
- one flat ImageFolder (also raw Caltech-256, ``001.ak47/...257.clutter/``, optionally
  inside ``256_ObjectCategories/``): validation and test are split off per class,
  deterministically.

Unreadable images are skipped and counted; only more than ``max-bad-fraction`` of them
fails the job. Any exception while reading one file counts it as unreadable, and so does an
image over ``max-image-pixels`` (before decoding, or once resized for evaluation). Nothing
outside a channel is read: an image file or class folder whose real path (links followed)
leaves its channel is ignored, with one warning per split.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from common.images import IMAGE_EXTENSIONS
from train import distributed
from train.failure import TrainingError, first_line

log = logging.getLogger(__name__)
VALIDATION_FOLDERS = ("valid", "val", "validation")
CALTECH_WRAPPER = "256_ObjectCategories"
CLUTTER = "257.clutter"
Sample = tuple[Path, int]


@dataclass
class Splits:
    """The samples of each split and the class names (index order)."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    layout: str


def _printable(path: Path) -> str:
    """``path`` for a log line: quoted when its name holds line breaks or other control characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


class Confined:
    """One split's channel: an entry whose real path leaves it is ignored (never read) and counted."""

    def __init__(self, channel: Path, what: str):
        self.channel, self.what = channel, what
        self.top = os.path.realpath(channel)  # the channel itself may be a link
        self.ignored: dict[Path, None] = {}  # ordered, each entry once

    def allows(self, path: Path) -> bool:
        """Whether ``path``, links followed, stays inside the channel; remembers it if not."""
        if os.path.commonpath([os.path.realpath(path), self.top]) == self.top:
            return True
        self.ignored.setdefault(path)
        return False

    def report(self) -> None:
        """One warning line for the split, if anything was ignored."""
        if self.ignored:
            first = next(iter(self.ignored))
            log.warning(
                "%s: ignored %d link(s) that lead outside the channel %s (first: %s)",
                self.what,
                len(self.ignored),
                _printable(self.channel),
                _printable(first),
            )


def _subfolders(root: Path, channel: Confined) -> list[str]:
    folders = [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir()]
    return [p.name for p in folders if channel.allows(p)]


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _images(folder: Path, channel: Confined) -> list[Path]:
    if not channel.allows(folder):
        return []
    return [p for p in sorted(folder.iterdir()) if _is_image_file(p) and channel.allows(p)]


def scan(root: Path, folders: list[str], what: str, channel: Confined | None = None) -> list[Sample]:
    """(path, label) for every image file directly inside each class folder and inside the channel."""
    confined = channel or Confined(root, what)
    samples: list[Sample] = []
    try:
        for label, folder in enumerate(folders):
            files = _images(root / folder, confined)
            if not files:
                raise TrainingError(f"class folder {folder!r} in {what} has no images ({root / folder})")
            samples += [(p, label) for p in files]
    finally:
        if channel is None:  # else the caller reports, once per split
            confined.report()
    return samples


def _class_folders(root: Path, what: str, drop_clutter: bool, channel: Confined) -> list[str]:
    if not root.is_dir():
        raise TrainingError(f"{what} is not a folder: {root}")
    folders = [f for f in _subfolders(root, channel) if not (drop_clutter and f == CLUTTER)]
    if not folders:
        raise TrainingError(f"{what} has no class folders: expected {what}/<class>/<image files> in {root}")
    if len(folders) == 1:
        raise TrainingError(f"{what} has a single class ({folders[0]!r}): a classifier needs two or more")
    return folders


def _same_classes(expected: list[str], root: Path, what: str, drop_clutter: bool, channel: Confined) -> None:
    found = _class_folders(root, what, drop_clutter, channel)
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise TrainingError(
            f"{what} classes differ from training: missing {missing or 'none'}, extra {extra or 'none'}"
        )


def stratified_split(samples: list[Sample], fractions: tuple[float, ...], seed: int) -> list[list[Sample]]:
    """Split per class by ``fractions`` (the rest stays first); same seed, same split."""
    parts: list[list[Sample]] = [[] for _ in range(len(fractions) + 1)]
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    for label in sorted(by_class):
        items = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(items)
        start = 0
        for i, fraction in enumerate(fractions, start=1):
            count = min(round(len(items) * fraction), len(items) - start - 1)
            parts[i] += items[start : start + max(count, 0)]
            start += max(count, 0)
        parts[0] += items[start:]
    return parts


def _layout(channels: dict[str, Path], training: Confined) -> tuple[dict[str, Path], dict[str, Path], str]:
    """The folder of each split, the channel each split must stay inside, and the layout's name."""
    root = channels["training"]
    if root.is_dir() and _subfolders(root, training) == [CALTECH_WRAPPER]:
        root = root / CALTECH_WRAPPER
    sub = set(_subfolders(root, training)) if root.is_dir() else set()
    val_folder = next((f for f in VALIDATION_FOLDERS if f in sub), None)
    if "train" in sub and val_folder:
        dirs = {"training": root / "train", "validation": root / val_folder}
        if "test" in sub:
            dirs["test"] = root / "test"
        return dirs, dict.fromkeys(dirs, channels["training"]), "course (train/valid/test subfolders)"
    dirs = {k: v for k, v in channels.items() if k in ("validation", "test")} | {"training": root}
    return dirs, {k: channels[k] for k in dirs}, "one ImageFolder per channel"


def resolve_splits(channels: dict[str, Path], args) -> Splits:
    """Find the layout of the channels and list the samples of each split."""
    if "training" not in channels:
        raise TrainingError(f"no 'training' channel (got: {sorted(channels) or 'none'})")
    confined = {"training": Confined(channels["training"], "training")}
    try:
        dirs, roots, layout = _layout(channels, confined["training"])
        confined |= {name: Confined(roots[name], name) for name in dirs if name != "training"}
        return _list_splits(dirs, layout, confined, args)
    finally:
        for channel in confined.values():
            channel.report()


def _list_splits(dirs: dict[str, Path], layout: str, confined: dict[str, Confined], args) -> Splits:
    folders = _class_folders(dirs["training"], "training", args.drop_clutter, confined["training"])
    train = scan(dirs["training"], folders, "training", confined["training"])
    split_off = [name for name in ("validation", "test") if name not in dirs]
    fractions = {"validation": args.val_split, "test": args.test_split}
    found = {}
    if split_off:
        layout += f"; {' and '.join(split_off)} split off training by class"
        train, *rest = stratified_split(train, tuple(fractions[n] for n in split_off), args.seed)
        found = dict(zip(split_off, rest, strict=True))
    for name in ("validation", "test"):
        if name in dirs:
            _same_classes(folders, dirs[name], name, args.drop_clutter, confined[name])
            found[name] = scan(dirs[name], folders, name, confined[name])
    return Splits(folders, train, found.get("validation", []), found.get("test", []), layout)


def _describe(exc: BaseException) -> str:
    """``struct.error: unpack requires ...``: the exception's type and the first line of its message."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    message = first_line(str(exc))
    return f"{name}: {message}" if message else name


class ImageDataset(Dataset):
    """Reads each sample with ``load`` (a file → uint8 tensor (3, H, W)); an unreadable or
    oversized file yields ``None``, not a crash."""

    def __init__(self, samples: list[Sample], load: Callable[[Path], torch.Tensor]):
        self.samples, self.load = samples, load

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            return self.load(path), label, index
        except Exception as exc:  # Pillow raises many kinds on hostile files: count them, never crash the worker
            log.warning("skipping unreadable image %s: %s", _printable(path), _describe(exc))
            return None, label, index


class BadFiles:
    """Unreadable files of a split seen so far; fails once they exceed the allowed share of it.

    Each process reads a shard: ``add`` counts this process's files (enough to fail early when
    they alone are too many), ``merge`` (all processes together) those of every process."""

    def __init__(self, samples: list[Sample], max_fraction: float, what: str):
        self.samples, self.max_fraction, self.what = samples, max_fraction, what
        self.indices: set[int] = set()

    def add(self, indices: list[int]) -> None:
        """Record unreadable sample indices; raise if too many."""
        self.indices.update(indices)
        self._check()

    def merge(self) -> None:
        """Every process's unreadable files, on every process (a collective); raise if too many."""
        self.indices = distributed.union(self.indices)
        self._check()

    def _check(self) -> None:
        if len(self.indices) > self.max_fraction * len(self.samples):
            first = self.samples[min(self.indices)][0]
            raise TrainingError(
                f"{len(self.indices)} of {len(self.samples)} {self.what} images are unreadable "
                f"(e.g. {first}), more than max-bad-fraction={self.max_fraction}: "
                "fix or remove them, or raise max-bad-fraction"
            )
