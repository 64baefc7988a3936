"""Which files are images, and the classes of the embedded sample dataset."""

from __future__ import annotations

# File suffixes (lower case) that the trainer loads as images and the local search counts.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The embedded sample dataset (``make sample-data``): one product class per typical print.
SAMPLE_CLASSES = ("ball", "box", "cone", "ring")
