"""The input cache: each image decoded once per job, its pixels kept on local disk.

Training images are kept resized so that their short side is at most ``input-cache-size``
pixels (never enlarged; 2 x image-size by default, so most drawn crops still shrink to the
image size); later epochs read back only the rows of the drawn crop, then crop and resize: no
decoding. Evaluation images are kept as the exact center crops that evaluation feeds the model.
Entries are raw RGB, written atomically, so the processes of a host (sharing the folder) fill it
together. Writing stops, with one warning, where the disk would keep less than 10% of itself
or 4 GiB free (whichever is less); the images not cached are decoded as without a cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional

log = logging.getLogger(__name__)
HEADER = 8  # two little-endian uint32: height, width; then height * width * 3 bytes (RGB, row by row)
RESERVE_FRACTION, RESERVE_BYTES = 0.1, 4 << 30  # left free: 10% of the disk or 4 GiB, whichever is less
MIN_EPOCHS = 2  # input-cache=auto: a one-epoch job decodes each image once anyway
Box = tuple[int, int, int, int]  # top, left, height, width


class PixelCache:
    """RGB pixels of image files, one raw file per image in ``folder``."""

    def __init__(self, folder: Path, short_side: int):
        self.folder, self.short_side = Path(folder), short_side
        self.full = False  # set once the disk's reserve is reached: no more writes

    def entry(self, source: Path | str) -> Path:
        """The cache file of an image file (named by the hash of its path)."""
        return self.folder / f"{hashlib.blake2b(str(source).encode(), digest_size=12).hexdigest()}.rgb"

    def region(self, source: Path | str, draw: Callable[[int, int], Box]) -> torch.Tensor | None:
        """The part (top, left, height, width) that ``draw(height, width)`` picks of the cached
        pixels, as uint8 (3, h, w); None if the image is not cached. Only its rows are read."""
        try:
            fd = os.open(self.entry(source), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            height, width = struct.unpack("<II", os.pread(fd, HEADER, 0))
            top, left, crop_h, crop_w = draw(height, width)
            rows = np.empty((crop_h, width, 3), dtype=np.uint8)
            if os.preadv(fd, [rows], HEADER + top * width * 3) != rows.nbytes:
                raise OSError(f"input cache entry {self.entry(source)} is truncated")
        finally:
            os.close(fd)
        return torch.from_numpy(np.ascontiguousarray(rows[:, left : left + crop_w])).permute(2, 0, 1)

    def put(self, source: Path | str, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` (3, H, W) resized to the cache's short side (if larger), and stored
        unless the disk has reached its reserve."""
        if min(pixels.shape[-2:]) > self.short_side:
            pixels = functional.resize(pixels, self.short_side, antialias=True)
        hwc = pixels.permute(1, 2, 0).contiguous()
        if not self.full and not self._reserve_reached(hwc.numel()):
            try:
                self._write(self.entry(source), hwc)
            except OSError as exc:  # the cache only saves time: never fail an image for it
                self.full = True
                log.warning("input cache off: cannot write in %s: %s", self.folder, exc)
        return hwc.permute(2, 0, 1)

    def _reserve_reached(self, size: int) -> bool:
        disk = shutil.disk_usage(self.folder)
        reserve = min(RESERVE_FRACTION * disk.total, RESERVE_BYTES)
        if disk.free - size >= reserve:
            return False
        self.full = True
        log.warning("input cache full: %s would leave less than %.1f GB of its disk free", self.folder, reserve / 1e9)
        return True

    @staticmethod
    def _write(path: Path, hwc: torch.Tensor) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<II", *hwc.shape[:2]))
                f.write(hwc.numpy().data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) in the folder now."""
        sizes = [entry.stat().st_size for entry in self.folder.glob("*.rgb")]
        return len(sizes), sum(sizes)


def whole(height: int, width: int) -> Box:
    """The whole image, for ``PixelCache.region``."""
    return 0, 0, height, width


def open_caches(folder: Path, short_side: int, on_first_process: bool) -> tuple[PixelCache, PixelCache]:
    """The job's training and evaluation caches in ``folder``; the host's first process removes
    entries an earlier job left there (only those: the folder may be the user's)."""
    caches = PixelCache(folder / "training", short_side), PixelCache(folder / "evaluation", short_side)
    for pixels in caches:
        pixels.folder.mkdir(parents=True, exist_ok=True)
        if on_first_process:
            for entry in [*pixels.folder.glob("*.rgb"), *pixels.folder.glob(".*.rgb.tmp-*")]:
                entry.unlink(missing_ok=True)
    disk = shutil.disk_usage(folder)
    log.info(
        "input cache on: %s, training images kept at up to %d px on the short side; %.1f GB free of %.1f GB",
        folder, short_side, disk.free / 1e9, disk.total / 1e9,
    )  # fmt: skip
    return caches
