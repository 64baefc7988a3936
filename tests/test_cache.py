"""The input cache: entries, reads of a crop's rows, the disk's reserve, and the job's caches."""

from __future__ import annotations

import logging
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import model_artifact
from train import cache, config, crops, data, distributed, main

DiskUsage = namedtuple("DiskUsage", "total used free")


def _prep(size: int) -> model_artifact.Preprocessing:
    return model_artifact.Preprocessing.for_image_size(size)


def _pixels(height: int, width: int) -> torch.Tensor:
    torch.manual_seed(height * width)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8)


def _photo(path: Path, size: tuple[int, int] = (120, 90)) -> Path:
    Image.effect_noise(size, 50).convert("RGB").save(path, quality=90)
    return path


def test_a_region_is_exactly_that_part_of_the_stored_pixels(tmp_path):
    pixels_cache = cache.PixelCache(tmp_path, short_side=64)
    stored = pixels_cache.put("a.jpg", _pixels(40, 50))  # smaller than the short side: kept as it is
    assert torch.equal(stored, _pixels(40, 50))
    for box in [(0, 0, 40, 50), (3, 7, 20, 11), (39, 49, 1, 1)]:
        region = pixels_cache.region("a.jpg", lambda h, w, box=box: box)
        top, left, height, width = box
        assert torch.equal(region, stored[:, top : top + height, left : left + width])
    assert pixels_cache.region("b.jpg", cache.whole) is None


def test_put_shrinks_to_the_short_side_and_never_enlarges(tmp_path):
    pixels_cache = cache.PixelCache(tmp_path, short_side=32)
    assert pixels_cache.put("big", _pixels(64, 100)).shape == (3, 32, 50)
    assert pixels_cache.put("small", _pixels(20, 30)).shape == (3, 20, 30)
    assert pixels_cache.region("big", cache.whole).shape == (3, 32, 50)
    assert pixels_cache.usage() == (2, 2 * cache.HEADER + 3 * (32 * 50 + 20 * 30))


def test_later_epochs_read_the_cache_and_decode_nothing(tmp_path, monkeypatch):
    path = _photo(tmp_path / "a.jpg")
    prep = model_artifact.Preprocessing.for_image_size(32)
    train = crops.TrainCrop(_prep(32), cache=cache.PixelCache(tmp_path / "t", 64))
    evaluate = crops.EvalCrop(prep, cache=cache.PixelCache(tmp_path / "e", 64))
    for pixels_cache in (train.cache, evaluate.cache):
        pixels_cache.folder.mkdir()
    first_eval, first_train = evaluate(path), train(path)
    assert torch.equal(first_eval, crops.EvalCrop(prep)(path))  # evaluation's cache keeps its exact pixels

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert torch.equal(evaluate(path), first_eval)
    assert train(path).shape == first_train.shape == (3, 32, 32)


def test_a_truncated_entry_counts_its_image_unreadable(tmp_path):
    path = _photo(tmp_path / "a.jpg")
    pixels_cache = cache.PixelCache(tmp_path / "c", 64)
    pixels_cache.folder.mkdir()
    dataset = data.ImageDataset([(path, 0)], crops.TrainCrop(_prep(32), cache=pixels_cache))
    assert dataset[0][0] is not None
    entry = pixels_cache.entry(path)
    entry.write_bytes(entry.read_bytes()[:100])
    assert dataset[0] == (None, 0, 0)


def test_writing_stops_at_the_disks_reserve_and_training_goes_on(tmp_path, monkeypatch, caplog):
    pixels_cache = cache.PixelCache(tmp_path, 64)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: DiskUsage(1000_000, 905_000, 95_000))
    with caplog.at_level(logging.WARNING):
        assert pixels_cache.put("a", _pixels(10, 10)).shape == (3, 10, 10)  # still given back
        pixels_cache.put("b", _pixels(10, 10))
    assert pixels_cache.full and pixels_cache.usage() == (0, 0)
    assert [r.getMessage() for r in caplog.records if "input cache full" in r.getMessage()] != []
    assert len([r for r in caplog.records if "input cache full" in r.getMessage()]) == 1


def test_a_failed_write_leaves_no_temporary_file_and_the_image_readable(tmp_path, monkeypatch, caplog):
    pixels_cache = cache.PixelCache(tmp_path, 64)

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", broken)
    assert torch.equal(pixels_cache.put("a", _pixels(10, 10)), _pixels(10, 10))
    assert list(tmp_path.iterdir()) == [] and pixels_cache.full
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


def test_opening_removes_only_an_earlier_jobs_entries(tmp_path):
    old = cache.PixelCache(tmp_path / "training", 64)
    old.folder.mkdir(parents=True)
    old.put("a", _pixels(5, 5))
    (old.folder / ".x.rgb.tmp-123").write_bytes(b"half")
    (old.folder / "notes.txt").write_text("the user's")
    training, evaluation = cache.open_caches(tmp_path, 64, on_first_process=True)
    assert sorted(p.name for p in training.folder.iterdir()) == ["notes.txt"]
    assert evaluation.folder.is_dir() and training.short_side == 64
    old.put("a", _pixels(5, 5))
    cache.open_caches(tmp_path, 64, on_first_process=False)  # another process of the host: keeps them
    assert old.usage()[0] == 1


def _hyperparameters(**kw) -> SimpleNamespace:
    args = config.parse_hyperparameters([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])
    return SimpleNamespace(**vars(args))


@pytest.mark.parametrize(
    ("settings", "on"),
    [
        ({"epochs": 1}, False),  # auto: one epoch decodes each image once anyway
        ({"epochs": 2}, True),
        ({"epochs": 5, "input_cache": "off"}, False),
        ({"epochs": 1, "input_cache": "true"}, True),
    ],
)
def test_the_job_caches_from_two_epochs_unless_told(tmp_path, settings, on):
    args = _hyperparameters(**settings)
    paths = SimpleNamespace(base_dir=tmp_path)
    training, evaluation = main.input_caches(args, paths, distributed.Context())
    assert (training is not None, evaluation is not None) == (on, on)
    if on:
        assert training.folder == tmp_path / "tmp" / "input-cache" / "training"  # off SageMaker: in the base dir
        assert training.short_side == 2 * args.image_size


def test_the_cache_folder_and_size_are_hyperparameters(tmp_path):
    args = _hyperparameters(epochs=3, input_cache_dir=tmp_path / "fast", input_cache_size=300)
    training, _ = main.input_caches(args, SimpleNamespace(base_dir=tmp_path), distributed.Context())
    assert training.folder == tmp_path / "fast" / "training" and training.short_side == 300
    assert "input_cache_dir" in config.OPERATIONAL  # a checkpoint resumes with another folder


def test_a_large_disk_keeps_4_gib_free_not_10_percent(tmp_path, monkeypatch):
    pixels_cache = cache.PixelCache(tmp_path, 64)
    tib = 1 << 40
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: DiskUsage(tib, tib - (5 << 30), 5 << 30))
    pixels_cache.put("a", _pixels(10, 10))  # 5 GiB free of 1 TiB: under 10%, over 4 GiB
    assert not pixels_cache.full and pixels_cache.usage()[0] == 1
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda _: DiskUsage(tib, tib - (4 << 30), 4 << 30))
    pixels_cache.put("b", _pixels(10, 10))
    assert pixels_cache.full and pixels_cache.usage()[0] == 1
