"""Training's crop (drawn as torchvision's v2 transforms draw it, decoded at the scale it needs)
and evaluation's crop (serving's pixels once normalized)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

import model_artifact
from train import crops


def _prep(size: int) -> model_artifact.Preprocessing:
    return model_artifact.Preprocessing.for_image_size(size)


def _jpeg(path: Path, size: tuple[int, int], **params) -> Path:
    from tests.test_preprocess_parity import photo

    photo(size, noise=True).save(path, quality=92, **params)
    return path


@pytest.mark.parametrize("size", [(640, 480), (300, 200), (200, 900), (100, 60)])
def test_train_crops_are_drawn_as_v2_random_resized_crop_draws_them(size):
    crop, reference = crops.TrainCrop(_prep(64), min_scale=0.2), v2.RandomResizedCrop(64, scale=(0.2, 1.0))
    width, height = size
    torch.manual_seed(3)
    ours = [crop.draw(height, width) for _ in range(500)]
    torch.manual_seed(3)
    theirs = [tuple(reference.make_params([torch.empty(3, height, width)]).values()) for _ in range(500)]
    assert ours == theirs
    scales = [h * w / (height * width) for _, _, h, w in ours]
    assert min(scales) >= 0.2 * 0.9 and max(scales) <= 1.0 and len(set(ours)) > 100  # random, in range


def test_a_train_crop_equals_torchvision_v2_on_the_decoded_image(tmp_path):
    """Same crop, same flip, same pixels as v2's RandomResizedCrop + flip (no crop of a 300x200
    image is 2x128 pixels: all decode at full scale)."""
    path = _jpeg(tmp_path / "a.jpg", (300, 200))
    reference = v2.Compose([v2.RandomResizedCrop(128, antialias=True), v2.RandomHorizontalFlip()])
    decoded = torchvision.io.decode_image(str(path))
    flips = 0
    for seed in range(40):
        torch.manual_seed(seed)
        ours = crops.TrainCrop(_prep(128))(path)
        torch.manual_seed(seed)
        theirs = reference(decoded)
        assert ours.shape == theirs.shape == (3, 128, 128) and ours.dtype == torch.uint8
        assert (ours.int() - theirs.int()).abs().max() <= 1
        flips += bool((ours.int() - theirs.flip(-1).int()).abs().max() > 1)  # the flip is what differs
    assert flips > 0


def test_a_crop_decoded_at_reduced_scale_keeps_the_full_scale_pixels(tmp_path):
    """A 1600x1200 JPEG: crops of 2x the size or more decode at 1/2 or less, and barely differ."""
    path = _jpeg(tmp_path / "big.jpg", (1600, 1200))
    crop = crops.TrainCrop(_prep(160), min_scale=0.9)  # crops of 1100+ px: decoded at 1/4 scale
    assert crops._reduction(min(crop.draw(1200, 1600)[2:]), crop.size) == 4
    full = crops.TrainCrop(_prep(160), min_scale=0.9)
    full.draw = crop.draw
    torch.manual_seed(0)
    reduced = crop(path)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crops, "_reduction", lambda crop_side, size: 1)
        exact = full(path)
    assert (reduced.float() - exact.float()).abs().mean() < 3  # of 255: the same picture


def test_flips_are_drawn_half_the_time(tmp_path):
    path = _jpeg(tmp_path / "a.jpg", (100, 60))
    crop = crops.TrainCrop(_prep(32), min_scale=1.0)  # the whole image: only the flip varies
    torch.manual_seed(0)
    outputs = [crop(path) for _ in range(400)]
    flipped = sum(bool((o.int() - outputs[0].flip(-1).int()).abs().max() <= 1) for o in outputs)
    unflipped = sum(bool((o.int() - outputs[0].int()).abs().max() <= 1) for o in outputs)
    assert flipped + unflipped == 400 and 160 <= flipped <= 240


@pytest.mark.parametrize("size", [32, 64])  # 100 px // 32: decoded at 1/2 (Pillow); // 64: full (torchvision)
def test_an_exif_rotated_jpeg_is_cropped_upright(tmp_path, size):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    stored = Image.new("RGB", (400, 100), (200, 10, 10))
    stored.paste((10, 10, 200), (0, 0, 200, 100))  # blue left half: the top half once upright
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        assert crops._upright_size(image) == (100, 400)
    crop = crops.TrainCrop(_prep(size), min_scale=1.0)
    draws = []
    crop_draw = crop.draw
    crop.draw = lambda h, w: draws.append((h, w)) or crop_draw(h, w)
    pixels = crop(tmp_path / "turned.jpg").int()
    assert pixels.shape == (3, size, size) and draws == [(400, 100)]
    top, bottom = pixels[:, : size // 4], pixels[:, -size // 4 :]
    assert top[2].float().mean() > 150 > top[0].float().mean()  # blue on top
    assert bottom[0].float().mean() > 150 > bottom[2].float().mean()  # red below


def test_evaluation_batches_normalize_to_servings_pixels(tmp_path):
    """What evaluation feeds the model (uint8 pixels, normalized on the device) is eval_transform's."""
    path = _jpeg(tmp_path / "a.jpg", (500, 333))
    prep = model_artifact.Preprocessing.for_image_size(64)
    pixels = crops.EvalCrop(prep)(path)
    expected = model_artifact.eval_transform(prep)(model_artifact.decode_image(path, prep.resize_size))
    assert pixels.dtype == torch.uint8 and torch.equal(model_artifact.normalize(pixels[None], prep)[0], expected)
