"""model_artifact.eval_transform without torch: PIL + numpy, and the proof that it matches.

    python bench/runtimes/preprocess.py [--photos DIR ...] [--quick]

``EvalTransform`` (no torch import) turns an upright RGB PIL image, as
``model_artifact.decode_image`` returns it, into the same float32 CHW array that
``model_artifact.eval_transform`` (torchvision v2) produces:

1. ``v2.Resize(resize_size, antialias=True)`` on a PIL image is torchvision's
   ``_resize_image_pil``: the short side becomes ``resize_size``, the long side
   ``int(resize_size * long / short)`` (truncated, not rounded); an image already of that
   size is returned untouched; otherwise ``image.resize((w, h), resample=Image.BILINEAR)``
   with PIL's defaults (no ``reducing_gap``, no box). PIL's BILINEAR resize always
   antialiases (its filter support scales with the reduction), which is why torchvision
   warns that ``antialias`` is ignored for PIL input. Same call here, so the same pixels.
2. ``v2.CenterCrop(image_size)``: top = ``int(round((h - crop) / 2.0))`` and likewise left,
   with Python's round (half to even: an odd margin of 33 puts 16 rows on top, not 17);
   zero padding first if the image is smaller than the crop (cannot happen with
   ``resize_size >= image_size``, kept for parity).
3. ``v2.PILToTensor`` + ``v2.ToDtype(float32, scale=True)`` + ``v2.Normalize``: torch computes
   ``x.to(float32).mul_(1/255)`` then ``.sub_(mean).div_(std)`` in float32. Each output
   value depends on one uint8 input value and its channel, so a 3x256 float32 table built
   with the same float32 operations reproduces it bit for bit; the per-pixel work is then a
   table lookup.

The check (``main``) needs torch, torchvision and the repository's ``model_artifact``; it
decodes real photos and generated images of many sizes and modes through
``model_artifact.decode_image`` (EXIF orientation, transparency, 16-bit, CMYK, palette ...),
applies both transforms and prints the largest absolute difference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height): torchvision's ``_compute_resized_output_size`` for an int size."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def normalize_table(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(3, 256) float32: channel c, byte v -> ((float32(v) * float32(1/255)) - mean[c]) / std[c] in float32."""
    values = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return ((values[None, :] - mean32) / std32).astype(np.float32)


class EvalTransform:
    """RGB PIL image -> normalized float32 array (3, image_size, image_size), as torchvision does it."""

    def __init__(self, resize_size: int, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resize_size, self.image_size = int(resize_size), int(image_size)
        self.table = normalize_table(mean, std)

    @classmethod
    def from_preprocessing(cls, prep) -> EvalTransform:
        """From ``model_artifact.Preprocessing`` or the ``preprocessing`` dict of artifact.json."""
        get = prep.get if isinstance(prep, dict) else lambda key: getattr(prep, key)
        return cls(get("resize_size"), get("image_size"), tuple(get("mean")), tuple(get("std")))

    def resize(self, image: Image.Image) -> Image.Image:
        size = resized_size(image.width, image.height, self.resize_size)
        if size == image.size:
            return image
        return image.resize(size, resample=Image.BILINEAR)

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """Center crop of an (H, W, 3) uint8 array, zero-padded first when smaller than the crop."""
        crop = self.image_size
        height, width = pixels.shape[:2]
        if crop > height or crop > width:
            top, left = max(crop - height, 0) // 2, max(crop - width, 0) // 2
            bottom, right = (max(crop - height, 0) + 1) // 2, (max(crop - width, 0) + 1) // 2
            pixels = np.pad(pixels, ((top, bottom), (left, right), (0, 0)))
            height, width = pixels.shape[:2]
        top = round((height - crop) / 2.0)  # Python's round: half to even, as torchvision
        left = round((width - crop) / 2.0)
        return pixels[top : top + crop, left : left + crop]

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image (model_artifact.decode_image returns one), got mode {image.mode}")
        pixels = self.crop(np.asarray(self.resize(image)))
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return out


# ---------------------------------------------------------------------------------------
# The check against torchvision (needs torch and the repository).


def _photo_files(folders) -> list:
    from pathlib import Path

    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found += sorted(
                p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".tif")
            )
    return found


def _variants(photo: Image.Image, rng: np.random.Generator):
    """(name, encoded bytes): one photo at several sizes, modes, formats and EXIF orientations."""
    import io

    def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **kwargs)
        return out.getvalue()

    rgb = photo.convert("RGB")
    w, h = rgb.size
    sizes = [(w, h), (w // 2 + 1, h // 3 + 7), (257, 513), (256, 300), (300, 256), (224, 224), (225, 1001), (97, 61)]
    sizes.append((int(rng.integers(200, 1200)), int(rng.integers(200, 1200))))
    for size in sizes:
        img = rgb.resize(size, Image.BICUBIC)
        yield f"RGB {size[0]}x{size[1]} png", encode(img, "PNG")
        yield f"RGB {size[0]}x{size[1]} jpeg q90", encode(img, "JPEG", quality=90)
    small = rgb.resize((max(1, w * 2 // 3), max(1, h * 2 // 3)), Image.BICUBIC)
    sw, sh = small.size
    alpha = Image.fromarray(rng.integers(0, 256, (sh, sw), dtype=np.uint8))
    rgba = small.copy()
    rgba.putalpha(alpha)
    yield "RGBA png", encode(rgba, "PNG")
    yield "L png", encode(small.convert("L"), "PNG")
    yield "L jpeg", encode(small.convert("L"), "JPEG", quality=85)
    yield "LA png", encode(small.convert("LA"), "PNG")
    yield "P png (adaptive palette)", encode(small.quantize(colors=200), "PNG")
    pal = small.quantize(colors=64)
    yield "P png with transparency", encode(pal, "PNG", transparency=0)
    yield "P gif", encode(small.quantize(colors=128), "GIF")
    yield "CMYK jpeg", encode(small.convert("CMYK"), "JPEG", quality=90)
    yield "CMYK tiff", encode(small.convert("CMYK"), "TIFF")
    gray16 = (np.asarray(small.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    yield "I;16 png", encode(Image.fromarray(gray16), "PNG")
    yield "I 32-bit tiff", encode(Image.fromarray(gray16.astype(np.int32)), "TIFF")
    yield "webp lossy", encode(small, "WEBP", quality=80)
    yield "bmp", encode(small, "BMP")
    for orientation in (2, 3, 5, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        yield f"jpeg EXIF orientation {orientation}", encode(small, "JPEG", quality=90, exif=exif.tobytes())


def _synthetic(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Photo-like stand-ins when no photos are found: smooth gradients + noise + shapes."""
    from PIL import ImageDraw

    images = []
    for _ in range(count):
        w, h = int(rng.integers(120, 900)), int(rng.integers(120, 900))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([(x / w) * 255, (y / h) * 255, ((x + y) / (w + h)) * 255], axis=-1)
        base += rng.normal(0, 18, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            draw.ellipse((x0, y0, x0 + int(rng.integers(5, w)), y0 + int(rng.integers(5, h))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))  # fmt: skip
        images.append(img)
    return images


def main() -> None:
    import argparse
    import sys
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Compare EvalTransform with model_artifact.eval_transform")
    parser.add_argument(
        "--photos",
        nargs="*",
        default=["/tmp/photos", "data/sample/test"],
        help="folders of real photos (scikit-image's skimage/data, scikit-learn's china.jpg ...)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="at most 6 photos")
    parser.add_argument("--max-photos", type=int, default=40, help="photos taken evenly from the folders")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch

    import model_artifact

    prep = model_artifact.Preprocessing.for_image_size(args.image_size)
    reference = model_artifact.eval_transform(prep)
    ours = EvalTransform.from_preprocessing(prep)
    rng = np.random.default_rng(0)

    # 1. The per-pixel arithmetic, exhaustively: every byte value in every channel.
    ramp = Image.fromarray(np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1))
    scaled = torch.from_numpy(np.asarray(ramp).copy()).permute(2, 0, 1)
    from torchvision.transforms.v2 import functional as F

    expected = F.normalize(F.to_dtype(scaled, torch.float32, scale=True), list(prep.mean), list(prep.std))
    table_diff = np.abs(expected.numpy().reshape(3, 256) - ours.table).max()
    print(f"normalization table vs torchvision, all 3x256 byte values: max abs diff {table_diff:.3g}")

    # 2. Whole images through model_artifact.decode_image (as serving and evaluation do).
    photos = _photo_files(args.photos)
    limit = 6 if args.quick else args.max_photos
    if len(photos) > limit:
        photos = photos[:: -(-len(photos) // limit)][:limit]
    sources = []
    for path in photos:
        try:
            with Image.open(path) as image:
                image.load()
                sources.append((str(path), image.copy() if image.mode != "P" else image.convert("RGBA")))
        except (OSError, ValueError) as exc:
            print(f"  skipped {path}: {exc}")
    if not sources:
        print("no photos found: generated images only")
    sources += [(f"synthetic {i}", img) for i, img in enumerate(_synthetic(rng, 3 if args.quick else 8))]
    worst, count, exact, mismatched_shapes = 0.0, 0, 0, 0
    per_source = []
    time_ref = time_ours = 0.0
    modes_seen: set[str] = set()
    for name, photo in sources:
        source_worst = 0.0
        for variant, data in _variants(photo, rng):
            with Image.open(__import__("io").BytesIO(data)) as raw:
                modes_seen.add(raw.mode)
            for draft in (None, prep.resize_size):
                image = model_artifact.decode_image(data, draft_size=draft)
                t0 = time.perf_counter()
                a = reference(image).numpy()
                t1 = time.perf_counter()
                b = ours(image)
                t2 = time.perf_counter()
                time_ref, time_ours = time_ref + t1 - t0, time_ours + t2 - t1
                count += 1
                if a.shape != b.shape:
                    mismatched_shapes += 1
                    print(f"  SHAPE {name} {variant}: {a.shape} vs {b.shape}")
                    continue
                diff = float(np.abs(a - b).max())
                exact += diff == 0.0
                source_worst = max(source_worst, diff)
                if diff > 0:
                    print(f"  differs: {name} {variant} draft={draft}: {diff:.3g}")
        per_source.append((name, photo.size, photo.mode, source_worst))
        worst = max(worst, source_worst)
    for name, size, mode, diff in per_source:
        label = Path(name).name if "/" in name else name
        print(f"  {label:32s} {size[0]:5d}x{size[1]:<5d} {mode:5s} max abs diff {diff:.3g}")
    print(
        f"{count} decoded images ({len(sources)} sources x sizes/modes/formats/EXIF, decode with and without JPEG "
        f"draft) in file modes {sorted(modes_seen)}: max abs diff {worst:.3g}, bit-identical {exact}/{count}, "
        f"shape mismatches {mismatched_shapes}"
    )
    print(
        f"transform time: torchvision {time_ref * 1000 / count:.2f} ms/image, "
        f"PIL+numpy {time_ours * 1000 / count:.2f} ms/image"
    )


if __name__ == "__main__":
    main()
