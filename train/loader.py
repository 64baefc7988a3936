"""Dataset → batches: the sampler, the DataLoader, and where its workers put the batches.

A worker process stacks its images into one of its slots of ``BatchBuffers``: an anonymous
shared memory mapping made before the workers fork, reused batch after batch. Only the slot's
number crosses the process boundary. PyTorch's default instead sends each batch as a new
segment in ``/dev/shm``, which costs page faults on both sides for every batch (0.19 ms of
0.67 per image with the input cache, ``bench/input_pipeline.py``), and which Docker's default
64 MB ``/dev/shm`` (SageMaker local mode's) cannot hold: a worker failed with "unable to
allocate shared memory" at 224 px and batch 128, with 2 workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

log = logging.getLogger(__name__)

PREFETCH = 4  # batches each worker prepares ahead
# A worker writes a slot again only once the loader has handed out two more batches after the
# one in it (its PREFETCH batches ahead, then the one being trained on, and one to spare).
SLOTS = PREFETCH + 2


class Slot(NamedTuple):
    """Which worker's slot holds a batch, and how many images are in it."""

    worker: int
    slot: int
    count: int


class BatchBuffers:
    """``SLOTS`` uint8 batches (batch, size, size, 3) per worker in one shared anonymous mapping.

    Pages are taken when first written and given back after each pass over the loader, so an
    idle loader (evaluation's, while training) holds no memory."""

    def __init__(self, workers: int, batch_size: int, image_size: int):
        self.shape = (workers, SLOTS, batch_size, image_size, image_size, 3)
        self.memory = mmap.mmap(-1, math.prod(self.shape))  # MAP_SHARED: forked workers write into it
        self.pixels = torch.frombuffer(self.memory, dtype=torch.uint8).view(self.shape)
        self.written = 0  # batches this process (a worker) has put in its slots

    def put(self, images: list[torch.Tensor]) -> Slot | None:
        """Stack (H, W, 3) images into this worker's next slot; None if they do not fit one."""
        info = get_worker_info()
        if info is None or len(images) > self.shape[2] or images[0].shape != self.shape[3:]:
            return None
        slot = Slot(info.id, self.written % SLOTS, len(images))
        self.written += 1
        torch.stack(images, out=self.pixels[slot.worker, slot.slot, : slot.count])
        return slot

    def batch(self, slot: Slot) -> torch.Tensor:
        """The batch in ``slot``, (count, 3, size, size) channels-last, without a copy."""
        return self.pixels[slot.worker, slot.slot, : slot.count].permute(0, 3, 1, 2)

    def release(self) -> None:
        """Give the pages back (the slots read as zeros until written again)."""
        with contextlib.suppress(OSError, ValueError):  # a kernel without it, or the mapping closed at exit
            self.memory.madvise(mmap.MADV_REMOVE)


class Collate:
    """Stack the readable images into a uint8 batch in channels-last memory (as the model takes
    it; ``model_artifact.normalize`` runs on the device); report the indices of unreadable ones.

    In a worker with ``buffers``, the batch goes into its next slot and the slot is returned."""

    def __init__(self, buffers: BatchBuffers | None = None):
        self.buffers = buffers

    def __call__(self, batch):
        good = [item for item in batch if item[0] is not None]
        bad = [item[2] for item in batch if item[0] is None]
        if not good:
            return None, None, bad
        # (H, W, 3) views: the crops are channels-last already, so stacking them is a plain copy
        pixels = [item[0].permute(1, 2, 0) for item in good]
        labels = [item[1] for item in good]
        slot = self.buffers.put(pixels) if self.buffers is not None else None
        if slot is not None:
            return slot, labels, bad
        out = None
        if get_worker_info() is not None:  # as default_collate: into shared memory, no copy to send
            storage = pixels[0]._typed_storage()._new_shared(len(pixels) * pixels[0].numel(), device=pixels[0].device)
            out = pixels[0].new(storage).resize_(len(pixels), *pixels[0].shape)
        return torch.stack(pixels, out=out).permute(0, 3, 1, 2), torch.tensor(labels), bad


collate = Collate()  # no buffers: each batch a tensor of its own


class EpochSampler(Sampler[int]):
    """A per-epoch permutation from (seed, epoch), sharded evenly across ranks, resumable."""

    def __init__(self, size: int, rank: int, world: int, seed: int, shuffle: bool = True):
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.per_rank = math.ceil(size / world) if shuffle else len(range(rank, size, world))
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch``, leaving out its first ``skip`` samples (already trained)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if not self.shuffle:  # evaluation: plain shards, no padding, so metrics stay exact
            return iter(range(self.rank, self.size, self.world))
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.repeat(math.ceil(self.per_rank * self.world / self.size))[: self.per_rank * self.world]
        return iter(order[self.rank :: self.world][self.skip :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.skip


class BatchLoader:
    """The batches (uint8 images (n, 3, size, size) channels-last, labels, unreadable indices)
    of a DataLoader whose workers fill ``BatchBuffers``.

    A batch's images stay valid until the loader has handed out two more batches: the epoch
    loop is done with each one before it takes the next. Copy them to keep them longer."""

    def __init__(self, loader: DataLoader, buffers: BatchBuffers | None):
        self.loader, self.buffers = loader, buffers
        self.dataset, self.sampler, self.num_workers = loader.dataset, loader.sampler, loader.num_workers

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for images, labels, bad in self.loader:
                if isinstance(images, Slot):
                    images, labels = self.buffers.batch(images), torch.tensor(labels)
                yield images, labels, bad
        finally:  # the pass is over (or abandoned): no batch of it is in use any more
            if self.buffers is not None:
                self.buffers.release()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode in parallel already; threads would oversubscribe


def make_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int, train: bool, image_size: int):
    """A loader of ``image_size`` images whose workers stay alive across epochs.

    Not pinned: a copy to the GPU from ordinary memory is done when the call returns, so the
    slot can be written again; the epoch loop's ``loss.item()`` waits for each step anyway."""
    buffers = None
    if workers > 0 and len(sampler) > 0:
        try:
            buffers = BatchBuffers(workers, batch_size, image_size)
        except OSError as exc:  # the kernel refused the mapping: each batch then goes through /dev/shm
            log.warning("loader: no reused batch buffers (%s): batches go through /dev/shm", exc)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(buffers),
        drop_last=train and len(sampler) > batch_size,  # no size-1 batch for BatchNorm
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        multiprocessing_context="fork" if workers > 0 else None,  # the workers inherit the buffers' mapping
    )
    return BatchLoader(loader, buffers)
