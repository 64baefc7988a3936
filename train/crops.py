"""Image file → uint8 crop (3, size, size): training's augmentation and evaluation's preprocessing.

``TrainCrop`` draws the random resized crop and flip exactly as torchvision's v2 transforms
draw them, decodes only at the scale the crop needs and cuts and resizes in one pass (or reads
the crop's rows from the input cache); ``EvalCrop`` is the artifact's evaluation transform up
to the uint8 pixels. Batches stay uint8: ``model_artifact.normalize`` runs on the device.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional

import model_artifact
from train.cache import PixelCache, whole
from train.config import MAX_IMAGE_PIXELS

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec's (not a dependency):
# decode_jpeg (libjpeg-turbo, straight into a tensor) is 1.5x faster than Pillow's decode and
# copy out (bench/input_pipeline.py), and the torchvision pin in constraints.txt keeps it. Its
# warning would otherwise repeat for every image.
TORCHVISION_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"
warnings.filterwarnings("ignore", message=TORCHVISION_IO_DEPRECATION, category=DeprecationWarning)


class TrainCrop:
    """Training's augmentation, file → uint8 (3, size, size): a random resized crop and a
    horizontal flip, drawn exactly as ``v2.RandomResizedCrop`` and ``v2.RandomHorizontalFlip``
    draw them, and cut and resized in one pass (torch's vectorized uint8 antialiased resize).

    A JPEG decodes at the reduced scale (1/2, 1/4, 1/8) that still leaves the drawn crop at
    least ``size`` pixels on each side (Pillow's draft), else at full scale with libjpeg-turbo
    through ``torchvision.io``; other formats decode with Pillow.
    """

    def __init__(
        self,
        prep: model_artifact.Preprocessing,
        min_scale: float = 0.08,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        cache: PixelCache | None = None,
    ):
        self.size, self.resize_size, self.max_pixels, self.cache = prep.image_size, prep.resize_size, max_pixels, cache
        self.crop = v2.RandomResizedCrop(self.size, scale=(min_scale, 1.0), antialias=True)

    def __call__(self, source: Path | str) -> torch.Tensor:
        region = self.cache.region(source, self.draw) if self.cache is not None else self.decoded(source)
        if region is None:  # not cached yet
            region = self.first_visit(source)
        out = functional.resize(region, [self.size, self.size], antialias=True)
        return functional.horizontal_flip(out) if torch.rand(1) < 0.5 else out  # as v2.RandomHorizontalFlip

    def draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A crop (top, left, height, width) of an image of that size, as v2.RandomResizedCrop draws it."""
        top, left, crop_h, crop_w = self.crop.make_params([_size_only(height, width)]).values()
        return top, left, crop_h, crop_w

    def decoded(self, source: Path | str) -> torch.Tensor:
        """The drawn crop (3, h, w), decoded at the smallest scale that keeps it ``size`` or more."""
        with Image.open(source) as image:
            model_artifact.check_size(image, self.max_pixels, self.resize_size)  # as evaluation refuses it
            width, height = _upright_size(image)
            top, left, crop_h, crop_w = self.draw(height, width)
            pixels = _decode(image, source, _reduction(min(crop_h, crop_w), self.size))
        sy, sx = pixels.shape[-2] / height, pixels.shape[-1] / width  # 1 unless reduced
        top, left = round(top * sy), round(left * sx)
        return pixels[:, top : top + max(round(crop_h * sy), 1), left : left + max(round(crop_w * sx), 1)]

    def first_visit(self, source: Path | str) -> torch.Tensor:
        """Decode (at the scale the cache needs) and cache the image; the drawn crop of it."""
        with Image.open(source) as image:
            model_artifact.check_size(image, self.max_pixels, self.resize_size)  # as evaluation refuses it
            reduce = _reduction(min(image.size), self.cache.short_side)
            pixels = self.cache.put(source, _decode(image, source, reduce))
        top, left, crop_h, crop_w = self.draw(*pixels.shape[-2:])
        return pixels[:, top : top + crop_h, left : left + crop_w]


def _decode(image: Image.Image, source: Path | str, reduce: int) -> torch.Tensor:
    """Upright RGB uint8 (3, H, W) in channels-last memory (what the fast resize wants)."""
    if image.format == "JPEG" and reduce == 1 and image.mode in ("RGB", "L"):
        data = torchvision.io.read_file(str(source))
        decoded = torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        return decoded.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    if reduce > 1 and image.format == "JPEG":
        image.draft("RGB", (image.width // reduce, image.height // reduce))
    image.load()
    return torch.from_numpy(np.array(model_artifact.to_rgb(image))).permute(2, 0, 1)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once EXIF orientation is applied, without decoding."""
    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if turned else image.size


def _size_only(height: int, width: int) -> torch.Tensor:
    """A tensor of an image's shape and no pixels: what ``make_params`` reads the size from."""
    return torch.empty(()).expand(3, height, width)


def _reduction(crop_side: int, size: int) -> int:
    """The largest JPEG scale denominator (1, 2, 4, 8) that keeps ``crop_side`` at least ``size``."""
    return next(d for d in (8, 4, 2, 1) if crop_side // d >= size or d == 1)


class EvalCrop:
    """Evaluation's preprocessing, file → uint8 (3, size, size): the artifact's decoder and
    ``eval_pixels``; ``model_artifact.normalize`` on the device completes ``eval_transform``."""

    def __init__(self, prep: model_artifact.Preprocessing, max_pixels: int | None = MAX_IMAGE_PIXELS, cache=None):
        self.prep, self.max_pixels = prep, max_pixels
        self.cache: PixelCache | None = cache  # keeps the result: it never changes
        self.pixels = model_artifact.eval_pixels(prep)

    def __call__(self, source: Path | str) -> torch.Tensor:
        cached = self.cache.region(source, whole) if self.cache is not None else None
        if cached is not None:
            return cached
        pixels = self.pixels(model_artifact.decode_image(source, self.prep.resize_size, self.max_pixels))
        return self.cache.put(source, pixels) if self.cache is not None else pixels
