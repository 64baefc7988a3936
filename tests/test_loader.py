"""The sampler, collate, and the loader whose workers put batches in reused shared buffers."""

from __future__ import annotations

import mmap
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import model_artifact
from tests.test_data import image_folder
from train import crops, data, loader


def test_all_unreadable_batch_collates_to_none():
    assert loader.collate([(None, 0, 3), (None, 1, 4)]) == (None, None, [3, 4])


def test_sampler_shards_evenly_and_resumes_where_it_stopped():
    ranks = [loader.EpochSampler(10, r, 3, seed=1) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded so every rank runs the same steps
    assert {i for shard in shards for i in shard} == set(range(10))
    full = list(ranks[0])
    ranks[0].set_epoch(2, skip=2)
    assert list(ranks[0]) == full[2:] and len(ranks[0]) == 2
    ranks[0].set_epoch(3)
    assert list(ranks[0]) != full


def test_evaluation_shards_cover_each_sample_once():
    shards = [list(loader.EpochSampler(10, r, 3, seed=0, shuffle=False)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_loader_yields_batches_from_a_worker(tmp_path):
    root = image_folder(tmp_path / "training", {"a": 5, "b": 5})
    prep = model_artifact.Preprocessing.for_image_size(16)
    samples = data.scan(root, ["a", "b"], "training")
    sampler = loader.EpochSampler(len(samples), 0, 1, seed=0)
    batches = loader.make_loader(data.ImageDataset(samples, crops.TrainCrop(prep)), sampler, 4, 1, True, 16)
    seen = [(images.clone(), labels) for images, labels, _ in batches]
    assert [len(labels) for _, labels in seen] == [4, 4]  # the size-2 remainder is dropped for BatchNorm
    assert seen[0][0].dtype == torch.uint8  # normalized on the device
    assert seen[0][0].is_contiguous(memory_format=torch.channels_last)  # as the model takes it: no conversion
    direct = [batches.dataset[i] for i in range(4)]
    assert loader.collate(direct)[0].shape == (4, 3, 16, 16)


def test_a_batch_keeps_each_image_whatever_its_memory_layout():
    torch.manual_seed(0)
    chw = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)  # as eval_pixels makes them
    hwc = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8).permute(2, 0, 1)  # as the crops make them
    images, labels, bad = loader.collate([(chw, 0, 0), (None, 1, 1), (hwc, 2, 2)])
    assert torch.equal(images[0], chw) and torch.equal(images[1], hwc)
    assert labels.tolist() == [0, 2] and bad == [1]


class Stamped(Dataset):
    """Image i is filled with i % 251, and its label is i; every 7th is unreadable."""

    def __init__(self, size: int, count: int):
        self.size, self.count = size, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index % 7 == 3:
            return None, index, index
        pixels = torch.full((self.size, self.size, 3), index % 251, dtype=torch.uint8)
        return pixels.permute(2, 0, 1), index, index


def _holds_its_images(images: torch.Tensor, labels: torch.Tensor) -> bool:
    expected = (labels % 251).to(torch.uint8).view(-1, 1, 1, 1).expand_as(images)
    return torch.equal(images, expected)


def test_workers_reuse_their_slots_and_a_batch_holds_until_two_more_are_handed_out():
    sampler = loader.EpochSampler(400, 0, 1, seed=0)
    batches = loader.make_loader(Stamped(8, 400), sampler, 8, 2, True, 8)
    addresses, previous = set(), None
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for images, labels, bad in batches:
            time.sleep(0.002)  # a slower consumer: the workers fill every slot ahead of it
            assert _holds_its_images(images, labels), "a batch's images are not its own"
            assert all(i % 7 == 3 for i in bad) and not any(i % 7 == 3 for i in labels.tolist())
            if previous is not None:  # the batch before this one is still intact
                assert _holds_its_images(*previous)
            previous = images, labels
            addresses.add(images.data_ptr())
        previous = None
        assert not batches.buffers.pixels.any(), "the buffers' pages are given back after each pass"
    assert 2 < len(addresses) <= 2 * loader.SLOTS  # each worker cycles through its own slots


def test_the_pass_after_an_abandoned_one_is_whole():
    sampler = loader.EpochSampler(200, 0, 1, seed=0)
    batches = loader.make_loader(Stamped(8, 200), sampler, 8, 2, True, 8)
    for step, _ in enumerate(batches):
        if step == 3:
            break  # as a stop request leaves the epoch; its workers still finish what they were given
    labels_seen = []
    for images, labels, _ in batches:
        assert _holds_its_images(images, labels)
        labels_seen += labels.tolist()
    assert sorted(labels_seen) == [i for i in range(200) if i % 7 != 3]  # every readable image, once


def test_without_a_mapping_batches_go_through_dev_shm_with_a_warning(monkeypatch, caplog):
    def refused(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refused)
    sampler = loader.EpochSampler(64, 0, 1, seed=0)
    batches = loader.make_loader(Stamped(8, 64), sampler, 8, 1, True, 8)
    assert batches.buffers is None
    assert all(_holds_its_images(images, labels) for images, labels, _ in batches)
    assert "loader: no reused batch buffers ([Errno 12] Cannot allocate memory)" in caplog.text


SMALL_SHM = """
import mmap, sys
from tests.test_loader import Stamped, _holds_its_images
from train import loader
def refused(*args):
    raise OSError("refused")
if sys.argv[1] == "off":  # no mapping: a new /dev/shm segment per batch, as PyTorch's default
    mmap.mmap = refused
sampler = loader.EpochSampler(64, 0, 1, seed=0)
batches = loader.make_loader(Stamped(96, 64), sampler, 32, 2, False, 96)
assert all(_holds_its_images(images, labels) for images, labels, _ in batches)
print("ok")
"""


@pytest.mark.parametrize("buffers", ["on", "off"])
def test_a_one_megabyte_dev_shm_is_enough(buffers):
    # Docker's default /dev/shm (64 MB, SageMaker local mode's) cannot hold a batch of 512 at
    # 224 px; here one batch (32 x 96 x 96 x 3 = 0.9 MB) is near the 1 MB we leave.
    mount = 'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", mount, "sh", sys.executable, "-c", SMALL_SHM, buffers]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path.cwd())
    if "unshare failed" in done.stderr or "permission denied" in done.stderr.lower():
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    if buffers == "on":
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    else:  # the test can fail: PyTorch's default needs /dev/shm for every batch
        assert done.returncode != 0 and "shared memory" in done.stderr, done.stderr[-2000:]
