"""The embedded sample dataset: photo-like synthetic product shots, made deterministically.

Four classes of products (ball, box, cone, ring), each with a typical print in random
colours, on noisy gradient backgrounds with distractor blobs, at varied sizes and aspect
ratios, saved as JPEG and PNG into one folder per SageMaker channel: ``OUT/training``,
``OUT/validation``, ``OUT/test``. Small enough to train from scratch on CPU in about a
minute; colour alone predicts nothing.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from common.images import SAMPLE_CLASSES as CLASSES

SPLITS = {"training": 60, "validation": 15, "test": 15}


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    top = [rng.randint(60, 230) for _ in range(3)]
    bottom = [max(0, min(255, c + rng.randint(-90, 90))) for c in top]
    gradient = Image.linear_gradient("L").resize((w, h))
    image = Image.composite(Image.new("RGB", size, tuple(bottom)), Image.new("RGB", size, tuple(top)), gradient)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):  # out-of-focus clutter
        x, y, r = rng.randint(0, w), rng.randint(0, h), rng.randint(4, max(5, min(w, h) // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 4)))


PATTERNS = {"ball": "dots", "box": "stripes", "cone": "checks", "ring": "plain"}


def _pattern(rng: random.Random, kind: str, size: tuple[int, int], colour: tuple) -> Image.Image:
    """The object's surface: each product class has a typical print, in random colours."""
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    other = tuple(255 - c for c in colour)
    step = max(10, min(size) // rng.randint(6, 9))
    w, h = size
    for i in range(0, max(w, h) * 2, step):
        if kind == "stripes":
            draw.line((0, i, w, i - w // 3), fill=other, width=step // 2)
        elif kind == "dots":
            for j in range(0, h, step):
                draw.ellipse((i, j, i + step // 2, j + step // 2), fill=other)
        elif kind == "checks":
            for j in range(0, h, step):
                if (i // step + j // step) % 2:
                    draw.rectangle((i, j, i + step - 1, j + step - 1), fill=other)
    return image


def _draw_object(image: Image.Image, rng: random.Random, label: str) -> None:
    w, h = image.size
    r = rng.uniform(0.25, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    if label == "ball":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif label == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(4, int(r / 3)))
    else:
        sides, start = (4, math.pi / 4) if label == "box" else (3, -math.pi / 2)
        start += rng.uniform(-0.35, 0.35)
        angles = [start + 2 * math.pi * i / sides for i in range(sides)]
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=255)
    image.paste(_pattern(rng, PATTERNS[label], image.size, colour), mask=mask)


def make_image(rng: random.Random, label: str) -> Image.Image:
    """One photo-like image of ``label`` with random size, colours and placement."""
    size = (rng.randint(80, 256), rng.randint(80, 256))
    image = _background(rng, size)
    _draw_object(image, rng, label)
    noise = Image.effect_noise(size, rng.uniform(4, 18)).convert("RGB")
    return Image.blend(image, noise, 0.12).filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.8)))


def generate(out: Path, seed: int = 0, per_split: dict[str, int] | None = None) -> dict[str, int]:
    """Write the dataset under ``out``; returns the number of images per channel."""
    rng = random.Random(seed)
    counts = {}
    for split, per_class in (per_split or SPLITS).items():
        for label in CLASSES:
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = make_image(rng, label)
                if i % 4 == 3:
                    image.save(folder / f"{label}_{i:03d}.png", optimize=False)
                else:
                    image.save(folder / f"{label}_{i:03d}.jpg", quality=rng.randint(70, 95))
        counts[split] = per_class * len(CLASSES)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (one subfolder per channel)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = generate(args.out, args.seed)
    print(f"sample dataset in {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
