"""Fuzz the serving container: thousands of generated requests, then its health.

    python bench/fuzz.py --image byoc-classifier-serving-cpu:latest --model build/demo/model \\
        --count 10000 --seed 1 --clients 8 --memory 2g [--network host] [--bursts 2]

Starts the image with ``docker run -d -m 2g`` (the model folder mounted read-only at
/opt/ml/model), waits for ``/ping``, and sends ``--count`` seeded payloads from ``--clients``
threads to 127.0.0.1: valid and mutated, truncated images of every format and mode Pillow
writes, decompression bombs, JSON shapes, deep nesting, huge numbers, odd text encodings,
wrong content types and Accept headers, custom attributes, oversize bodies, and the
management API and other paths that must not work. A thread polls ``/ping`` every 0.5 s.
``--bursts N`` then sends N rounds of 8 worst-case requests at once (bombs just under and
over the pixel limit, the most images per request, bodies at the payload limit).

It prints a table of status counts per category and the bad answers: a 5xx, a reset or
timeout, a 2xx where nothing should work, a valid request that is not answered 200, an error
body that is not one-line JSON or shows a traceback or a memory address. Then worker
restarts (from the server's log), ``/ping`` failures, the container's peak memory, OOM kills,
whether it still predicts, and payloads/s. Exit code 1 if any of these is wrong.

A registration request (``POST /models?url=...``) only ever names a tiny HTTP server of the
fuzzer's own on 127.0.0.1; it must never be called. With the default bridge network the
container's 127.0.0.1 is its own, so that check only means something with ``--network host``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.client
import http.server
import io
import json
import random
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model_artifact
from bench.serve_process import free_port

MB = 1024 * 1024
# serve.workers' log lines: a worker that dies (killed, OOM-killed, crashed, or over the timeout and
# killed) logs "worker <i> stopped (<reason>): starting a new one" once; one that cannot come back
# logs why (tests/test_workers.py and tests/test_gateway.py kill workers and see these lines).
RESTART_MARK = "): starting a new one"
DEATH_MARKS = ("could not load the model", "died while loading", "did not listen", "before it listened")
MANAGEMENT_MARKS = ("unregistered", "Scaling down", "scaled down", "Model fuzz")
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{6,}")
CATEGORIES = {  # relative share of the generated payloads
    "valid_image": 8,
    "valid_json": 5,
    "mutated": 22,
    "truncated": 8,
    "bomb": 3,
    "json_shape": 8,
    "json_nesting": 3,
    "json_numbers": 6,
    "json_text": 6,
    "content_type": 7,
    "accept": 5,
    "attributes": 6,
    "oversize": 1.5,
    "management": 2,
    "paths": 3,
}


@dataclass(frozen=True)
class Limits:
    """The serving limits the container is started with (and the payloads aim at)."""

    max_payload_mb: int = 6
    max_images: int = model_artifact.MAX_IMAGES
    max_pixels: int = model_artifact.MAX_IMAGE_PIXELS

    @property
    def max_payload(self) -> int:
        return self.max_payload_mb * MB  # sagemaker-inference: MB * 1024 * 1024

    def env(self) -> dict[str, str]:
        return {
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_mb),
            "SERVE_MAX_IMAGES": str(self.max_images),
            "SERVE_MAX_PIXELS": str(self.max_pixels),
        }


@dataclass
class Case:
    """One request, and what a right answer to it is."""

    category: str
    method: str
    path: str
    headers: dict[str, str | bytes]
    body: bytes | None
    note: str = ""
    expect: frozenset[int] | None = None  # the only right statuses (None: any non-5xx)
    must_fail: bool = False  # a 2xx is wrong (management API, paths that must not exist)
    images: int = 0  # predictions a 200 must carry
    chunked: bool = False


@dataclass
class Answer:
    """What came back: an HTTP status, or "reset"/"timeout"."""

    status: int | str
    body: bytes = b""
    seconds: float = 0.0
    detail: str = ""


# --- images ---------------------------------------------------------------------------


def picture(rng: random.Random, width: int, height: int) -> Image.Image:
    """An RGB picture: a coloured background with a few rectangles and ellipses."""
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 6)):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


# (format, mode, save options, content type)
SEED_SPECS: list[tuple[str, str, dict, str]] = [
    ("JPEG", "RGB", {"quality": 90}, "image/jpeg"),
    ("JPEG", "RGB", {"progressive": True, "quality": 70}, "image/jpeg"),
    ("JPEG", "L", {}, "image/jpeg"),
    ("JPEG", "CMYK", {}, "image/jpeg"),
    ("JPEG", "RGB", {"orientation": 6}, "image/jpeg"),
    ("PNG", "RGB", {}, "image/png"),
    ("PNG", "RGBA", {}, "image/png"),
    ("PNG", "P", {"transparency": 0}, "image/png"),
    ("PNG", "L", {}, "image/png"),
    ("PNG", "LA", {}, "image/png"),
    ("PNG", "1", {}, "image/png"),
    ("PNG", "I;16", {}, "image/png"),
    ("WEBP", "RGB", {"quality": 80}, "image/webp"),
    ("WEBP", "RGBA", {"lossless": True}, "image/webp"),
    ("WEBP", "RGB", {"frames": 3}, "image/webp"),
    ("GIF", "P", {}, "image/gif"),
    ("GIF", "P", {"frames": 4}, "image/gif"),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}, "image/tiff"),
    ("TIFF", "CMYK", {}, "image/tiff"),
    ("TIFF", "I;16", {}, "image/tiff"),
    ("TIFF", "RGB", {"frames": 3, "compression": "tiff_deflate"}, "image/tiff"),
    ("BMP", "RGB", {}, "image/bmp"),
    ("BMP", "1", {}, "image/bmp"),
    ("BMP", "P", {}, "image/bmp"),
    ("ICO", "RGBA", {}, "image/x-icon"),
    ("TGA", "RGB", {}, "image/x-tga"),
    ("PPM", "RGB", {}, "image/x-portable-pixmap"),
    ("JPEG2000", "RGB", {}, "image/jp2"),
]


def encode(rng: random.Random, spec: tuple[str, str, dict, str], width: int, height: int) -> bytes:
    """One seed image in memory, as ``spec`` says (animated/multi-page when it has frames)."""
    fmt, mode, options, _ = spec
    options = dict(options)
    frames = options.pop("frames", 1)
    orientation = options.pop("orientation", None)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    images = [_to_mode(picture(rng, width, height), mode) for _ in range(frames)]
    if frames > 1:
        options |= {"save_all": True, "append_images": images[1:], "duration": 40, "loop": 0}
    out = io.BytesIO()
    images[0].save(out, fmt, **options)
    return out.getvalue()


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":  # 16-bit grayscale: spread the 8-bit values over 0..65535
        gray = image.convert("L")
        return Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (v, v)))
    if mode == "P":
        return image.quantize(16)
    return image.convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_constant(width: int, height: int, bit_depth: int = 1, color_type: int = 0, extra: bytes = b"") -> bytes:
    """A PNG whose pixels are all 0, compressed as it streams: megapixels in kilobytes."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    line = bytes(1 + (width * channels * bit_depth + 7) // 8)  # filter byte 0, then zero pixels
    rows = max(1, 4 * MB // len(line))
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(line * min(rows, height - start)) for start in range(0, height, rows)]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = b"".join(parts) + compressor.flush()
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG header declaring ``width`` x ``height`` with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame are ``width`` x ``height``, with one LZW block."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def bmp_header_only(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width`` x ``height`` and no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + bytes(64)


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian 8-bit grayscale TIFF declaring ``width`` x ``height``, one short strip."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    tags += [(273, 4, 8 + 2 + 9 * 12 + 4), (277, 3, 1), (278, 4, height), (279, 4, 64)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(64)


def with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the dimensions in its header replaced (PNG with its CRC fixed, JPEG SOF)."""
    if data.startswith(PNG_SIGNATURE):
        ihdr = struct.pack(">II", width, height) + data[24:29]
        return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at > 0:
            size = struct.pack(">HH", min(height, 65535), min(width, 65535))
            return data[: at + 5] + size + data[at + 9 :]
    if data.startswith(b"GIF"):
        return data[:6] + struct.pack("<HH", width % 65536, height % 65536) + data[10:]
    if data.startswith(b"BM"):
        return data[:18] + struct.pack("<ii", width, height) + data[26:]
    return data


MAGICS = [PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP"]
MAGICS += [b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"\x00\x00\x01\x00", b"P6\n", b"8BPS"]


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    """A random structural change of ``data``; returns it and what was done."""
    kind = rng.choice(["flip", "flip_header", "insert", "delete", "splice", "magic", "repeat", "size"])
    out = bytearray(data)
    if kind in ("flip", "flip_header"):
        span = min(len(out), 64) if kind == "flip_header" else len(out)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(span)] ^= rng.randrange(1, 256)
    elif kind == "insert":
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.randbytes(rng.randint(1, 256))
    elif kind == "delete":
        at = rng.randrange(len(out))
        del out[at : at + rng.randint(1, 256)]
    elif kind == "splice":
        out = out[: rng.randrange(len(out) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif kind == "magic":
        magic = rng.choice(MAGICS)
        out[: len(magic)] = magic
    elif kind == "repeat":
        at = rng.randrange(len(out))
        out[at:at] = out[at : at + rng.randint(1, 64)] * rng.randint(2, 500)
    else:
        width, height = (rng.choice([0, 1, 2, 255, 65535, rng.randrange(1, 70000)]) for _ in range(2))
        out = bytearray(with_size(data, width, height))
        kind = f"size {width}x{height}"
    return bytes(out), kind


# --- payloads -------------------------------------------------------------------------

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"]
WRONG_TYPES = ["text/plain", "application/octet-stream", "image/", "image", "*/*", "image/svg+xml", "video/mp4"]
WRONG_TYPES += [
    "multipart/form-data; boundary=fz",
    "application/x-www-form-urlencoded",
    "text/csv",
    "application/x-npy",
]
WRONG_TYPES += ["application/jsonlines", "image/jpeg, image/png", "x" * 5000, "image/\u00e9\u00e8", ";;;", ""]
ACCEPTS = ["application/json", "*/*", "", "text/html", "image/png", "application/json;q=0", "application/*"]
ACCEPTS += ["text/csv, application/json", "application/jsonlines", "*", ";;;,,,", "a" * 6000, "application/\u00fcber"]
ACCEPTS += ["application/json, */*;q=0.1", "text/plain;q=1, application/json;q=0.5", "APPLICATION/JSON"]
ATTRIBUTES = ["top_k=3", "top_k=abc", "top_k=1e999", "top_k=99999999999999999999999", "top_k=0", "top_k=-1"]
ATTRIBUTES += ["top_k=", "top_k", "=", ",,,,", "top_k=3,top_k=abc", "a=b,top_k=2", "top_k=1" + "0" * 5000]
ATTRIBUTES += ["top_k=\uff13", "top_k=3.0", "top_k=3.5", "top_k=nan", "top_k=inf", "top_k = 2 ", "x" * 6000]
ATTRIBUTES += ["top_k=" + "9" * 30, "top_k=\u0663", "top_k=2;top_k=3", "t" * 20000]
HUGE_NUMBERS = ["1e999", "-1e999", "1" + "0" * 400, "1" + "0" * 5000, "NaN", "Infinity", "-Infinity", "1e308"]
HUGE_NUMBERS += ["3.0", "3.5", "-0", "0", "99999999999999999999", "1E2", "0x10", "1e-999", "-1", "2.0000000001"]
HUGE_NUMBERS += ['"3"', "[3]", '{"k": 3}', "true", "false", "null", '""', '"\\u0033"', "1" * 4300, "5e-324"]


class Payloads:
    """The seeded generator of fuzz cases: ``cases(count)`` yields them."""

    def __init__(self, seed: int, limits: Limits, canary_url: str = "http://127.0.0.1:9/"):
        self.rng = random.Random(seed)
        self.limits = limits
        self.canary_url = canary_url.rstrip("/")
        self.seeds = self._seeds()

    def _seeds(self) -> list[tuple[str, bytes]]:
        """(content type, bytes) of every spec at two random sizes from 16 to 300 px."""
        seeds = []
        for spec in SEED_SPECS:
            for _ in range(2):
                size = self.rng.randint(16, 300), self.rng.randint(16, 300)
                seeds.append((spec[3], encode(self.rng, spec, *size)))
        seeds.append(("image/png", png_constant(40, 30, bit_depth=16, color_type=2)))  # 48-bit RGB PNG
        return seeds

    def cases(self, count: int, skip: tuple[str, ...] = ()) -> Iterator[Case]:
        """``count`` cases, categories drawn by their share (``skip``: categories left out)."""
        names = [name for name in CATEGORIES if name not in skip]
        weights = [CATEGORIES[name] for name in names]
        for _ in range(count):
            name = self.rng.choices(names, weights)[0]
            yield getattr(self, name)()

    # helpers

    def seed(self) -> tuple[str, bytes]:
        return self.rng.choice(self.seeds)

    def b64(self, data: bytes | None = None) -> str:
        return base64.b64encode(data if data is not None else self.seed()[1]).decode()

    def post(self, category: str, body: bytes | None, content_type: str | None, note: str, **kw) -> Case:
        headers: dict[str, str | bytes] = {} if content_type is None else {"Content-Type": content_type}
        headers |= kw.pop("headers", {})
        return Case(category, kw.pop("method", "POST"), kw.pop("path", "/invocations"), headers, body, note, **kw)

    def json_case(self, category: str, text: str | bytes, note: str, **kw) -> Case:
        body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        return self.post(category, body, self.rng.choice(JSON_TYPES), note, **kw)

    # categories

    def valid_image(self) -> Case:
        content_type, data = self.seed()
        sent_as = "application/x-image" if self.rng.random() < 0.2 else content_type
        chunked = self.rng.random() < 0.1  # no Content-Length: 411 Length Required is right too
        expect = frozenset({200, 411} if chunked else {200})
        return self.post("valid_image", data, sent_as, content_type, expect=expect, images=1, chunked=chunked)

    def valid_json(self) -> Case:
        n = self.rng.randint(1, 4)
        payload: dict = {"instances": [{"b64": self.b64()} for _ in range(n)]}
        if self.rng.random() < 0.5:
            payload["top_k"] = self.rng.randint(1, 10)
        return self.json_case("valid_json", json.dumps(payload), f"{n} images", expect=frozenset({200}), images=n)

    def mutated(self) -> Case:
        content_type, data = self.seed()
        body, kind = mutate(self.rng, data, self.seed()[1])
        if self.rng.random() < 0.3:
            text = json.dumps({"instances": [{"b64": self.b64(body)}]})
            return self.json_case("mutated", text, f"json {content_type} {kind}")
        return self.post("mutated", body, content_type, f"{content_type} {kind}")

    def truncated(self) -> Case:
        content_type, data = self.seed()
        cut = self.rng.randrange(min(len(data), 80)) if self.rng.random() < 0.3 else self.rng.randrange(len(data))
        return self.post("truncated", data[:cut], content_type, f"{content_type} cut at {cut} of {len(data)}")

    @functools.cached_property
    def bombs(self) -> list[tuple[str, str, bytes]]:
        """(note, content type, bytes): small files that declare huge pixel counts."""
        side = int(self.limits.max_pixels**0.5)
        under, over = side - (side * side > self.limits.max_pixels), side + 1
        jpeg = with_size(self.seeds[0][1], 6000, 6000)
        return [
            (f"png 1-bit {under}x{under} (under the limit)", "image/png", png_constant(under, under)),
            (f"png 1-bit {over}x{over} (over the limit)", "image/png", png_constant(over, over)),
            ("png 1-bit 20000x20000", "image/png", png_constant(20000, 20000)),
            ("png 1-bit 100000x1 (extreme aspect)", "image/png", png_constant(100000, 1)),
            ("png 1-bit 1x100000 (extreme aspect)", "image/png", png_constant(1, 100000)),
            ("png header 100000x100000", "image/png", png_header_only(100000, 100000)),
            ("png header 65535x65535", "image/png", png_header_only(65535, 65535)),
            ("png zTXt 16 MB", "image/png", png_constant(16, 16, extra=self._text_chunk(b"zTXt"))),
            ("png iCCP 16 MB", "image/png", png_constant(16, 16, color_type=2, bit_depth=8, extra=self._iccp())),
            ("gif header 65535x65535", "image/gif", gif_header_only(65535, 65535)),
            ("gif header 6000x6000", "image/gif", gif_header_only(6000, 6000)),
            ("bmp header 30000x30000", "image/bmp", bmp_header_only(30000, 30000)),
            ("bmp header 6000x-6000", "image/bmp", bmp_header_only(6000, -6000)),
            ("tiff header 100000x100000", "image/tiff", tiff_header_only(100000, 100000)),
            ("tiff header 6000x6000", "image/tiff", tiff_header_only(6000, 6000)),
            ("jpeg sof 6000x6000", "image/jpeg", jpeg),
            ("jpeg sof 65535x65535", "image/jpeg", with_size(self.seeds[0][1], 65535, 65535)),
            ("gif 300 frames", "image/gif", self._many_frames()),
        ]

    @staticmethod
    def _text_chunk(kind: bytes) -> bytes:
        return png_chunk(kind, b"Comment\x00\x00" + zlib.compress(bytes(16 * MB), 9))

    @staticmethod
    def _iccp() -> bytes:
        return png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(16 * MB), 9))

    def _many_frames(self) -> bytes:
        frames = [picture(self.rng, 32, 32).quantize(4) for _ in range(300)]
        out = io.BytesIO()
        frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=10)
        return out.getvalue()

    def bomb(self) -> Case:
        note, content_type, data = self.rng.choice(self.bombs)
        size = re.search(r"(\d+)x-?(\d+)", note)
        over = size is not None and int(size[1]) * int(size[2]) > self.limits.max_pixels
        expect = frozenset({400, 413}) if over else None  # over the pixel limit: never decoded
        if self.rng.random() < 0.25:
            count = self.rng.randint(1, 4)
            text = json.dumps({"instances": [{"b64": self.b64(data)}] * count})
            return self.json_case("bomb", text, f"json {count} x {note}", expect=expect)
        return self.post("bomb", data, content_type, note, expect=expect)

    def json_shape(self) -> Case:
        good = {"b64": self.b64()}
        shapes: list[tuple[str, object]] = [
            ("list", [good]), ("string", "instances"), ("null", None), ("number", 42), ("true", True),
            ("empty object", {}), ("instances null", {"instances": None}), ("instances string", {"instances": "x"}),
            ("instances empty", {"instances": []}), ("instances object", {"instances": good}),
            ("instance null", {"instances": [None]}), ("instance list", {"instances": [[good]]}),
            ("instance string", {"instances": ["b64"]}), ("b64 null", {"instances": [{"b64": None}]}),
            ("b64 number", {"instances": [{"b64": 123}]}), ("b64 list", {"instances": [{"b64": [good["b64"]]}]}),
            ("B64 key", {"instances": [{"B64": good["b64"]}]}), ("instance key", {"instance": [good]}),
            ("too many", {"instances": [{"b64": self.b64(self.seeds[10][1])}] * (self.limits.max_images + 1)}),
            ("b64 not base64", {"instances": [{"b64": "not base64!"}]}), ("b64 abc", {"instances": [{"b64": "YWJj"}]}),
            ("b64 unpadded", {"instances": [{"b64": good["b64"].rstrip("=")[:-1]}]}),
            ("b64 urlsafe", {"instances": [{"b64": good["b64"].replace("+", "-").replace("/", "_")}]}),
            ("b64 mime lines", {"instances": [{"b64": "\n".join(re.findall(".{1,76}", good["b64"]))}]}),
            ("b64 data uri", {"instances": [{"b64": "data:image/png;base64," + good["b64"]}]}),
            ("b64 zeros", {"instances": [{"b64": "A" * self.rng.randint(4, 400_000) * 4}]}),
            ("extra keys", {"instances": [good | {"url": self.canary_url}], "extra": {"a": [1, 2]}}),
            ("url instance", {"instances": [{"url": self.canary_url + "/image.jpg"}]}),
            ("empty b64", {"instances": [{"b64": ""}]}),
        ]  # fmt: skip
        note, payload = self.rng.choice(shapes)
        return self.json_case("json_shape", json.dumps(payload), note)

    def json_nesting(self) -> Case:
        depth = self.rng.choice([100, 1000, 5000, 100_000])
        good = json.dumps({"b64": self.b64(self.seeds[10][1])})
        bodies = [
            ("[ open", "[" * depth),
            ("{ open", '{"a":' * depth),
            ("[] closed", "[" * depth + "]" * depth),
            ("{} closed", '{"a":' * depth + "1" + "}" * depth),
            ("instances nested", '{"instances": ' + "[" * depth + good + "]" * depth + "}"),
            ("top_k nested", '{"instances": [' + good + '], "top_k": ' + "[" * depth + "]" * depth + "}"),
            ("b64 nested", '{"instances": [{"b64": ' + '{"b64":' * depth + "1" + "}" * depth + "}]}"),
        ]
        note, text = self.rng.choice(bodies)
        return self.json_case("json_nesting", text, f"{note} depth {depth}")

    def json_numbers(self) -> Case:
        number = self.rng.choice(HUGE_NUMBERS)
        good = json.dumps({"b64": self.b64(self.seeds[10][1])})
        bodies = [
            ("top_k", '{"instances": [' + good + '], "top_k": ' + number + "}"),
            ("instances", '{"instances": ' + number + "}"),
            ("instance", '{"instances": [' + number + "]}"),
            ("b64", '{"instances": [{"b64": ' + number + "}]}"),
            ("document", number),
        ]
        where, text = self.rng.choice(bodies)
        return self.json_case("json_numbers", text, f"{where} = {number[:40]}")

    def json_text(self) -> Case:
        good = self.b64(self.seeds[10][1])
        doc = json.dumps({"instances": [{"b64": good}]})
        bodies: list[tuple[str, bytes | str]] = [
            ("escaped key", '{"\\u0069nstances": [{"b64": "' + good + '"}]}'),
            ("fullwidth key", '{"\uff49nstances": [{"b64": "' + good + '"}]}'),
            ("lone surrogate", '{"instances": [{"b64": "\\ud800"}], "top_k": "\\udfff"}'),
            ("raw surrogate", '{"instances": [{"b64": "\ud800"}]}'),
            ("nul", '{"instances": [{"b64": "\\u0000' + good + '"}]}'),
            ("emoji b64", '{"instances": [{"b64": "\U0001f600\u202e' + good[:20] + '"}]}'),
            ("duplicate keys", '{"instances": [{"b64": "' + good + '"}], "instances": "x"}'),
            ("duplicate b64", '{"instances": [{"b64": "' + good + '", "b64": 1}]}'),
            ("invalid utf-8", b'{"instances": [{"b64": "\xff\xfe\xc0\xaf"}]}'),
            ("utf-16", doc.encode("utf-16")), ("utf-32-le", doc.encode("utf-32-le")),
            ("utf-8 bom", b"\xef\xbb\xbf" + doc.encode()), ("trailing garbage", doc + "}]garbage"),
            ("two documents", doc + "\n" + doc), ("single quotes", doc.replace('"', "'")),
            ("trailing comma", doc[:-1] + ",}"), ("comment", "// x\n" + doc), ("whitespace", " \t\r\n "),
            ("nul byte", b"\x00"), ("bare word", "instances"), ("latin-1", '{"\xe9": 1}'.encode("latin-1")),
        ]  # fmt: skip
        note, text = self.rng.choice(bodies)
        return self.json_case("json_text", text, note)

    def content_type(self) -> Case:
        content_type, data = self.seed()
        choice = self.rng.random()
        if choice < 0.15:
            return self.post("content_type", data, None, f"{content_type} without Content-Type")
        if choice < 0.3:
            text = json.dumps({"instances": [{"b64": self.b64(data)}]}).encode()
            return self.post("content_type", text, content_type, f"json sent as {content_type}")
        if choice < 0.45:
            return self.post("content_type", data, self.rng.choice(JSON_TYPES), f"{content_type} sent as json")
        if choice < 0.55:
            odd = self.rng.choice(["IMAGE/JPEG", "image/jpeg; charset=utf-8", "image/png ; q=1", " image/webp "])
            return self.post("content_type", data, odd, f"{content_type} sent as {odd!r}")
        wrong = self.rng.choice(WRONG_TYPES)
        return self.post("content_type", data, wrong, f"{content_type} sent as {wrong[:40]!r}")

    def accept(self) -> Case:
        content_type, data = self.seed()
        accept = self.rng.choice(ACCEPTS)
        return self.post("accept", data, content_type, f"Accept {accept[:40]!r}", headers={"Accept": accept})

    def attributes(self) -> Case:
        content_type, data = self.seed()
        value = self.rng.choice(ATTRIBUTES)
        headers = {"X-Amzn-SageMaker-Custom-Attributes": value}
        if self.rng.random() < 0.3:
            text = json.dumps({"instances": [{"b64": self.b64(data)}], "top_k": self.rng.randint(1, 3)}).encode()
            return self.post("attributes", text, "application/json", f"json + {value[:40]!r}", headers=headers)
        return self.post("attributes", data, content_type, f"{value[:40]!r}", headers=headers)

    def oversize(self) -> Case:
        limit, jpeg = self.limits.max_payload, self.seeds[0][1]
        if self.rng.random() < 0.2:  # exactly at the limit: a valid image padded after its end
            body = jpeg + bytes(limit - len(jpeg))
            return self.post("oversize", body, "image/jpeg", "jpeg padded to the limit", expect=frozenset({200}))
        size = limit + self.rng.choice([1, 1024, self.rng.randint(1, 6 * MB)])
        kind = self.rng.choice(["jpeg", "json", "random"])
        if kind == "jpeg":
            body, content_type = jpeg + bytes(size - len(jpeg)), "image/jpeg"
        elif kind == "json":
            head, tail = b'{"instances": [{"b64": "', b'"}]}'
            body, content_type = head + b"A" * (size - len(head) - len(tail)) + tail, "application/json"
        else:
            body, content_type = self.rng.randbytes(size), "image/png"
        chunked = self.rng.random() < 0.25
        note = f"{kind} {size - limit} bytes over{' chunked' if chunked else ''}"
        expect = frozenset({411, 413} if chunked else {413})
        return self.post("oversize", body, content_type, note, expect=expect, chunked=chunked)

    def management(self) -> Case:
        url = f"{self.canary_url}/model-{self.rng.randrange(1000)}.mar"
        calls = [
            ("POST", f"/models?url={url}&model_name=fuzz&initial_workers=1&synchronous=true"),
            ("POST", f"/models?url={url}"),
            ("POST", "/models?url=/opt/ml/model&model_name=fuzz&initial_workers=1"),
            ("DELETE", "/models/model"), ("PUT", "/models/model?min_worker=3&synchronous=true"),
            ("PUT", "/models/model?min_worker=0"), ("GET", "/models"), ("GET", "/models/model"),
            ("GET", "/api-description"), ("OPTIONS", "/"), ("OPTIONS", "/models"),
        ]  # fmt: skip
        method, path = self.rng.choice(calls)
        return Case("management", method, path, {}, b"" if method != "GET" else None, path, must_fail=True)

    def paths(self) -> Case:
        content_type, data = self.seed()
        calls = [
            ("GET", "/invocations"), ("PUT", "/invocations"), ("DELETE", "/invocations"), ("PATCH", "/invocations"),
            ("HEAD", "/invocations"), ("POST", "/predictions/model"), ("PUT", "/predictions/model"),
            ("POST", "/model/predict"), ("POST", "/invocations/../models"), ("GET", "/../../etc/passwd"),
            ("POST", "/%2e%2e/models"), ("GET", "/" + "a" * self.rng.choice([300, 4000, 20000])),
            ("POST", "/invocations/" + "x/" * 500), ("POST", "/predictions/../../models/model"),
        ]  # fmt: skip
        method, path = self.rng.choice(calls)
        body = data if method in ("POST", "PUT", "PATCH") else None
        headers = {"Content-Type": content_type} if body else {}
        return Case("paths", method, path, headers, body, f"{method} {path[:60]}", must_fail=True)


@functools.lru_cache(maxsize=4)
def worst_cases(limits: Limits) -> list[Case]:
    """Eight requests that cost the server the most memory within (or just over) the limits."""
    side = int(limits.max_pixels**0.5)
    under, over = side - (side * side > limits.max_pixels), side + 1
    bomb = png_constant(under, under)
    rgb = png_constant(under, under, bit_depth=8, color_type=2)  # 8-bit RGB, about 120 KB
    per_image = len(base64.b64encode(rgb)) + 14  # {"b64": "..."},
    fits = min(limits.max_images, (limits.max_payload - 100) // per_image)
    padded = rgb + bytes(limits.max_payload - len(rgb))  # decoders stop at IEND
    within, rejected = frozenset({200, 400, 413}), frozenset({400, 413})

    def post(note: str, body: bytes, content_type: str, expect: frozenset[int], images: int = 1) -> Case:
        return Case("worst", "POST", "/invocations", {"Content-Type": content_type}, body, note, expect, images=images)

    def instances(data: bytes, n: int) -> bytes:
        return json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}] * n}).encode()

    return [
        post(f"png 1-bit {under}x{under}", bomb, "image/png", within),
        post(f"png 1-bit {over}x{over}", png_constant(over, over), "image/png", rejected),
        post("png 1-bit 20000x20000", png_constant(20000, 20000), "image/png", rejected),
        post(f"json {limits.max_images} x png 1-bit {under}x{under}", instances(bomb, limits.max_images),
             "application/json", within, limits.max_images),
        post(f"json {fits} x png RGB {under}x{under} (max payload)", instances(rgb, fits), "application/json",
             within, fits),
        post(f"png RGB {under}x{under} padded to {limits.max_payload} bytes", padded, "image/png", within),
        post(f"{limits.max_payload + 1} bytes", padded + b"\x00", "image/png", frozenset({413})),
        post(f"png 1-bit {limits.max_pixels}x1 (extreme aspect)", png_constant(limits.max_pixels, 1), "image/png",
             within),
    ]  # fmt: skip


# --- HTTP -----------------------------------------------------------------------------


def send(port: int, case: Case, timeout: float = 90) -> Answer:
    """Send ``case`` to 127.0.0.1:``port`` on a new connection; never raises for network errors."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(case.method, case.path, skip_accept_encoding=True)
        for name, value in case.headers.items():
            conn.putheader(name, value.encode() if isinstance(value, str) else value)
        if case.chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif case.body is not None:
            conn.putheader("Content-Length", str(len(case.body)))
        conn.endheaders()
        _send_body(conn, case)
        response = conn.getresponse()
        return Answer(response.status, response.read(), time.monotonic() - started)
    except TimeoutError:
        return Answer("timeout", seconds=time.monotonic() - started, detail=f"no answer within {timeout:.0f} s")
    except (OSError, http.client.HTTPException) as exc:
        return Answer("reset", seconds=time.monotonic() - started, detail=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _send_body(conn: http.client.HTTPConnection, case: Case) -> None:
    if case.body is None:
        return
    data = case.body
    if case.chunked:
        step = 256 * 1024
        parts = [b"%x\r\n%s\r\n" % (len(data[i : i + step]), data[i : i + step]) for i in range(0, len(data), step)]
        data = b"".join(parts) + b"0\r\n\r\n"
    # the server may answer (413) and close before reading it all: its answer is read next
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.sock.sendall(data)


def judge(case: Case, answer: Answer) -> str | None:
    """Why ``answer`` is a bad answer to ``case``, or None when it is right."""
    status = answer.status
    if isinstance(status, str):
        return f"{status}: {answer.detail}"
    if status >= 500:
        return f"{status}"
    if case.must_fail and status < 300:
        return f"{status} from an API that must not answer"
    if case.expect is not None and status not in case.expect:
        return f"{status}, expected {'/'.join(map(str, sorted(case.expect)))}"
    text = answer.body.decode("utf-8", "replace")
    if "Traceback" in text:
        return "traceback in the body"
    if ADDRESS.search(text):
        return "memory address in the body"
    if status == 200 and case.images:
        return _check_predictions(text, case.images)
    if status >= 400 and case.method != "HEAD":
        return _check_error_body(text)
    return None


def _check_predictions(text: str, images: int) -> str | None:
    try:
        predictions = json.loads(text)["predictions"]
    except (ValueError, KeyError, TypeError):
        return "200 without JSON predictions"
    return None if len(predictions) == images else f"{len(predictions)} predictions for {images} images"


def _check_error_body(text: str) -> str | None:
    if "\n" in text.strip():
        return "error body is not one line"
    try:
        parsed = json.loads(text)
    except ValueError:
        return "error body is not JSON"
    return None if isinstance(parsed, dict) else "error body is not a JSON object"


class CanaryServer:
    """An HTTP server on 127.0.0.1 that only counts requests (it answers 404 to all)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_error(404)

            do_POST = do_HEAD = do_GET

            def log_message(self, *args) -> None:
                pass

        self.hits = hits
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CanaryServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class PingPoller:
    """GET /ping every ``interval`` seconds in a thread; counts what is not 200."""

    def __init__(self, port: int, interval: float = 0.5):
        self.port, self.interval = port, interval
        self.total, self.failures, self.examples = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            answer = send(self.port, Case("ping", "GET", "/ping", {}, None), timeout=5)
            self.total += 1
            if answer.status != 200:
                self.failures += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{answer.status} {answer.detail or answer.body[:100]!r}")

    def __enter__(self) -> PingPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- running --------------------------------------------------------------------------


@dataclass
class Tally:
    """Status counts per category, and the bad answers (all counted, a few kept)."""

    counts: Counter = field(default_factory=Counter)  # (category, status) -> n
    bad_counts: Counter = field(default_factory=Counter)  # (category, reason) -> n
    examples: list[str] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, case: Case, answer: Answer) -> None:
        reason = judge(case, answer)
        with self.lock:
            self.sent += 1
            self.counts[case.category, answer.status] += 1
            if reason is None:
                return
            key = (case.category, reason.split(":")[0])
            self.bad_counts[key] += 1
            if self.bad_counts[key] <= 2:
                body = answer.body[:300].decode("utf-8", "replace").replace("\n", "\\n")
                self.examples.append(f"[{case.category}] {case.method} {case.path[:80]} ({case.note[:80]}): {reason}"
                                     f"{' -> ' + body if body else ''}")  # fmt: skip

    @property
    def bad(self) -> int:
        return sum(self.bad_counts.values())


def run(port: int, cases: Iterator[Case], clients: int, timeout: float = 90, max_seconds: float = 3600) -> Tally:
    """Send ``cases`` from ``clients`` threads until they run out or ``max_seconds`` pass."""
    tally, lock = Tally(), threading.Lock()
    started = time.monotonic()

    def client() -> None:
        while time.monotonic() - started < max_seconds:
            with lock:
                case = next(cases, None)
            if case is None:
                return
            tally.add(case, send(port, case, timeout))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.seconds = time.monotonic() - started
    return tally


def burst(port: int, cases: list[Case], timeout: float = 240) -> list[tuple[Case, Answer]]:
    """Send all ``cases`` at the same moment, one thread each; their answers in order."""
    answers: list[Answer | None] = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def one(i: int) -> None:
        barrier.wait()
        answers[i] = send(port, cases[i], timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return list(zip(cases, answers, strict=True))


# --- the container --------------------------------------------------------------------


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Health:
    """The container after the run: restarts, memory, OOM kills."""

    restarts: int
    log_lines: list[str]
    management_lines: list[str]
    running: bool
    oom_killed: bool
    oom_kills: int | None
    peak_bytes: int | None
    usage_bytes: int | None
    limit_bytes: int | None
    log_tail: list[str] = field(default_factory=list)
    image_id: str = ""


CGROUP_SCRIPT = """cd /sys/fs/cgroup
if [ -f memory/memory.max_usage_in_bytes ]; then
  echo peak $(cat memory/memory.max_usage_in_bytes); echo usage $(cat memory/memory.usage_in_bytes)
  echo limit $(cat memory/memory.limit_in_bytes); grep '^oom_kill ' memory/memory.oom_control
else
  echo peak $(cat memory.peak 2>/dev/null); echo usage $(cat memory.current); echo limit $(cat memory.max)
  grep '^oom_kill ' memory.events
fi"""


class Container:
    """The serving image under ``docker run -d -m MEMORY``; removed on exit."""

    def __init__(self, image: str, model: Path, memory: str = "2g", env: dict[str, str] | None = None,
                 network: str = "bridge", keep: bool = False):  # fmt: skip
        self.image, self.model, self.memory, self.env, self.network = image, model, memory, env or {}, network
        self.cid, self.port, self.keep = "", free_port(), keep

    def __enter__(self) -> Container:
        args = ["run", "-d", "-m", self.memory, "--memory-swap", self.memory]
        if self.network == "host":  # the container's 127.0.0.1 is this machine's (canary check)
            args += ["--network", "host", "-e", f"SAGEMAKER_BIND_TO_PORT={self.port}"]
        else:
            args += ["-p", f"127.0.0.1:{self.port}:8080"]
        args += [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        args += ["-v", f"{self.model.resolve()}:/opt/ml/model:ro", self.image, "serve"]
        self.cid = docker(*args).stdout.strip()
        return self

    def __exit__(self, *exc) -> None:
        if self.cid and self.keep:
            print(f"kept container {self.cid[:12]}: docker rm -f {self.cid[:12]}", file=sys.stderr)
        elif self.cid:
            docker("rm", "-f", self.cid, check=False)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /ping answers 200; raises with the log if the container stops first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if send(self.port, Case("ping", "GET", "/ping", {}, None), timeout=5).status == 200:
                return time.monotonic() - started
            if not self.state().get("Running"):
                break
            time.sleep(0.5)
        raise RuntimeError(f"no /ping 200 within {timeout:.0f} s; log:\n{self.logs()[-3000:]}")

    def wait_predicting(self, timeout: float = 120) -> None:
        """Wait until a valid image is predicted (the port answers while the worker loads)."""
        started = time.monotonic()
        while send(self.port, valid_case(), timeout=timeout).status != 200:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"no prediction within {timeout:.0f} s; log:\n{self.logs()[-3000:]}")
            time.sleep(1)

    def logs(self) -> str:
        result = docker("logs", self.cid, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", self.cid, "--format", "{{json .State}}").stdout)

    def memory_stats(self) -> dict[str, int]:
        """peak, usage, limit and oom_kill of the container's memory cgroup (v1 or v2)."""
        result = docker("exec", self.cid, "sh", "-c", CGROUP_SCRIPT, check=False)
        stats = {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stats[key] = int(value)
        return stats

    def health(self) -> Health:
        log = self.logs().splitlines()
        state = self.state()
        stats = self.memory_stats() if state.get("Running") else {}
        marks = (RESTART_MARK, *DEATH_MARKS)
        return Health(
            restarts=sum(RESTART_MARK in line for line in log),
            log_lines=[line for line in log if any(m in line for m in marks)],
            management_lines=[line for line in log if any(m in line for m in MANAGEMENT_MARKS)],
            running=bool(state.get("Running")),
            oom_killed=bool(state.get("OOMKilled")),
            oom_kills=stats.get("oom_kill"),
            peak_bytes=stats.get("peak"),
            usage_bytes=stats.get("usage"),
            limit_bytes=stats.get("limit"),
            log_tail=log[-15:],
            image_id=docker("inspect", self.cid, "--format", "{{.Image}}").stdout.strip().removeprefix("sha256:")[:12],
        )


# --- the report -----------------------------------------------------------------------


@dataclass
class Report:
    """Everything one fuzz run found; ``failures()`` is empty when the container passed."""

    tally: Tally
    ping_total: int
    ping_failures: int
    ping_examples: list[str]
    canary_hits: list[str]
    health: Health
    start_usage: int | None
    final_status: int | str
    bursts: list[tuple[Case, Answer]] = field(default_factory=list)
    requested: int = 0

    def failures(self) -> list[str]:
        h, found = self.health, []
        checks = [
            (self.tally.bad, f"{self.tally.bad} bad answers"),
            (h.restarts, f"{h.restarts} worker restarts"),
            (self.ping_failures, f"{self.ping_failures} /ping failures of {self.ping_total}"),
            (h.oom_killed or h.oom_kills, f"OOM: docker OOMKilled={h.oom_killed}, cgroup oom_kill={h.oom_kills}"),
            (not h.running, "the container stopped"),
            (self.canary_hits, f"the fuzzer's HTTP server got {len(self.canary_hits)} requests"),
            (self.final_status != 200, f"a valid request after the run got {self.final_status}"),
            (self.tally.sent < self.requested, f"only {self.tally.sent} of {self.requested} payloads sent in time"),
        ]
        found += [message for failed, message in checks if failed]
        found += [f"burst: {c.note}: {judge(c, a)}" for c, a in self.bursts if judge(c, a)]
        return found

    def format(self) -> str:
        lines = [format_table(self.tally), ""]
        if self.tally.examples:
            lines += ["bad answers (up to 2 per category and reason):", *self.tally.examples, ""]
        if self.bursts:
            lines += ["worst-case bursts:"]
            lines += [f"  {a.status} {a.seconds:5.1f} s  {c.note}: {judge(c, a) or 'ok'}" for c, a in self.bursts]
            lines += [""]
        lines += self._health_lines()
        failures = self.failures()
        if failures:
            lines += ["", "last lines of the container's log:", *[f"  {x[:200]}" for x in self.health.log_tail]]
        lines += ["", "FAILED: " + "; ".join(failures) if failures else "PASSED: no bad answer, restart or OOM"]
        return "\n".join(lines)

    def _health_lines(self) -> list[str]:
        h, t = self.health, self.tally
        lines = [
            f"payloads: {t.sent} in {t.seconds:.0f} s ({t.sent / max(t.seconds, 1e-9):.1f}/s), bad answers: {t.bad}",
            f"worker restarts: {h.restarts} ('{RESTART_MARK}' lines in the server's log)",
            f"/ping: {self.ping_failures} failures of {self.ping_total} polls {self.ping_examples[:3]}",
            f"memory: {mb(self.start_usage)} after start, {mb(h.usage_bytes)} at the end, peak {mb(h.peak_bytes)}"
            f" of {mb(h.limit_bytes)}; docker OOMKilled={h.oom_killed}, cgroup oom_kill={h.oom_kills}",
            f"container (image {h.image_id}) running: {h.running}; a valid request after the run: {self.final_status}",
            f"requests to the fuzzer's own HTTP server: {len(self.canary_hits)} {self.canary_hits[:3]}",
        ]
        if h.log_lines:
            lines += ["worker lines in the log (first 8):", *[f"  {line[:200]}" for line in h.log_lines[:8]]]
        if h.management_lines:
            lines += ["management lines in the log (first 5):", *[f"  {x[:200]}" for x in h.management_lines[:5]]]
        return lines


def mb(value: int | None) -> str:
    return "?" if value is None else f"{value / MB:.0f} MB"


def format_table(tally: Tally) -> str:
    """Categories x statuses, with a bad-answer column and totals."""
    statuses = sorted({s for _, s in tally.counts}, key=lambda s: (isinstance(s, str), str(s)))
    categories = sorted(
        {c for c, _ in tally.counts}, key=lambda c: list(CATEGORIES).index(c) if c in CATEGORIES else 99
    )
    bad = Counter()
    for (category, _), n in tally.bad_counts.items():
        bad[category] += n
    head = f"{'category':<14}" + "".join(f"{s!s:>8}" for s in statuses) + f"{'total':>8}{'bad':>8}"
    rows = [head, "-" * len(head)]
    for category in categories:
        cells = [tally.counts[category, s] for s in statuses]
        rows.append(f"{category:<14}" + "".join(f"{n:>8}" for n in cells) + f"{sum(cells):>8}{bad[category]:>8}")
    totals = [sum(tally.counts[c, s] for c in categories) for s in statuses]
    rows += ["-" * len(head), f"{'total':<14}" + "".join(f"{n:>8}" for n in totals) + f"{sum(totals):>8}{tally.bad:>8}"]
    return "\n".join(rows)


def valid_case() -> Case:
    """A plain valid JPEG request (for the warm-up and the check after the run)."""
    out = io.BytesIO()
    picture(random.Random(0), 120, 90).save(out, "JPEG")
    return Case("valid", "POST", "/invocations", {"Content-Type": "image/jpeg"}, out.getvalue(), images=1)


def fuzz(image: str, model: Path, count: int, seed: int = 1, clients: int = 8, memory: str = "2g",
         limits: Limits | None = None, network: str = "bridge", max_seconds: float = 3600,
         skip: tuple[str, ...] = (), bursts: int = 0, log_path: Path | None = None, keep: bool = False,
         ) -> Report:  # fmt: skip
    """Start the container, send ``count`` seeded payloads (then ``bursts`` worst-case rounds), report.
    ``log_path``: where to save the container's whole log."""
    limits = limits or Limits()
    with CanaryServer() as canary, Container(image, model, memory, limits.env(), network, keep) as box:
        box.wait_ready()
        box.wait_predicting()
        payloads = Payloads(seed, limits, canary.url)
        _ = payloads.bombs  # build them before the clock starts
        start_usage = box.memory_stats().get("usage")
        with PingPoller(box.port) as ping:
            tally = run(box.port, payloads.cases(count, skip), clients, max_seconds=max_seconds)
            worst = [pair for _ in range(bursts) for pair in burst(box.port, worst_cases(limits))]
        final = send(box.port, valid_case(), timeout=60).status
        health = box.health()
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(box.logs())
    return Report(
        tally, ping.total, ping.failures, ping.examples, canary.hits, health, start_usage, final, worst, count
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="byoc-classifier-serving-cpu:latest")
    parser.add_argument("--model", type=Path, required=True, help="a model folder (model.pt, artifact.json)")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--memory", default="2g", help="docker run -m (and --memory-swap)")
    parser.add_argument("--network", choices=["bridge", "host"], default="bridge")
    parser.add_argument("--max-payload-mb", type=int, default=6)
    parser.add_argument("--max-images", type=int, default=model_artifact.MAX_IMAGES)
    parser.add_argument("--max-pixels", type=int, default=model_artifact.MAX_IMAGE_PIXELS)
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(CATEGORIES), help="categories to leave out")
    parser.add_argument("--bursts", type=int, default=0, help="rounds of 8 worst-case requests at once, afterwards")
    parser.add_argument("--log", type=Path, help="save the container's log here")
    parser.add_argument("--keep", action="store_true", help="leave the container for inspection")
    args = parser.parse_args(argv)
    limits = Limits(args.max_payload_mb, args.max_images, args.max_pixels)
    report = fuzz(args.image, args.model, args.count, args.seed, args.clients, args.memory, limits, args.network,
                  args.max_seconds, tuple(args.skip), args.bursts, args.log, args.keep)  # fmt: skip
    print(f"{args.image}, {args.count} payloads, seed {args.seed}, {args.clients} clients, -m {args.memory}\n")
    print(report.format())
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
