"""Tests for train.caltech256 against small fake archives (no network beyond 127.0.0.1)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from train import caltech256
from train.caltech256 import (
    ArchiveError,
    DownloadError,
    OptionError,
    OutputExistsError,
    PrepareError,
    prepare,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT = "256_ObjectCategories"
CLASSES = ("001.ak47", "002.american-flag", "056.dog", "198.spider", "257.clutter")
KEPT = CLASSES[:-1]
PER_CLASS = 10
QUIRKS = (
    f"{ROOT}/056.dog/greg/056_0001.jpg",
    f"{ROOT}/056.dog/greg/Thumbs.db",
    f"{ROOT}/198.spider/RENAME2",
)


def _jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (index * 37 % 256, index * 11 % 256, 128)).save(buffer, "JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None) -> None:
    info = tarfile.TarInfo(name)
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_archive(path: Path, mode: str = "w", extra: tuple[tuple[str, bytes], ...] = ()) -> Path:
    """A Caltech-256-shaped archive: 5 classes x 10 JPEGs, the two real quirks, ``extra``."""
    with tarfile.open(path, mode) as tar:
        _add(tar, ROOT)
        for c, class_name in enumerate(CLASSES):
            _add(tar, f"{ROOT}/{class_name}")
            prefix = class_name.split(".")[0]
            for i in range(1, PER_CLASS + 1):
                _add(tar, f"{ROOT}/{class_name}/{prefix}_{i:04d}.jpg", _jpeg(c * PER_CLASS + i))
        _add(tar, f"{ROOT}/056.dog/greg")
        for name in QUIRKS:
            _add(tar, name, _jpeg(0) if name.endswith(".jpg") else b"junk")
        for name, data in extra:
            _add(tar, name, data)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "fake_caltech.tar")


def files_by_split(out: Path) -> dict[str, set[str]]:
    """``{split: {"<class>/<file>", ...}}`` as written on disk."""
    return {
        split: {p.relative_to(out / split).as_posix() for p in (out / split).rglob("*") if p.is_file()}
        for split in caltech256.SPLITS
    }


def class_counts(out: Path, split: str) -> dict[str, int]:
    folder = out / split
    if not folder.is_dir():
        return {}
    return {d.name: sum(1 for _ in d.iterdir()) for d in sorted(folder.iterdir())}


def test_default_split_is_stratified(archive: Path, tmp_path: Path) -> None:
    summary = prepare(tmp_path, archive)
    assert summary.classes == KEPT
    assert summary.counts == {"training": 32, "validation": 4, "test": 4}
    assert class_counts(tmp_path, "training") == dict.fromkeys(KEPT, 8)
    assert class_counts(tmp_path, "validation") == dict.fromkeys(KEPT, 1)
    assert class_counts(tmp_path, "test") == dict.fromkeys(KEPT, 1)
    splits = files_by_split(tmp_path)
    assert not (splits["training"] & splits["validation"] or splits["training"] & splits["test"])
    assert not splits["validation"] & splits["test"]
    everything = splits["training"] | splits["validation"] | splits["test"]
    assert "001.ak47/001_0007.jpg" in everything and len(everything) == 40
    assert (tmp_path / "training/001.ak47/001_0001.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_other_ratios(archive: Path, tmp_path: Path) -> None:
    summary = prepare(tmp_path, archive, val_ratio=0.2, test_ratio=0.3)
    assert summary.counts == {"training": 20, "validation": 8, "test": 12}
    assert class_counts(tmp_path, "test") == dict.fromkeys(KEPT, 3)


def test_small_class_keeps_a_training_image(archive: Path, tmp_path: Path) -> None:
    summary = prepare(tmp_path, archive, val_ratio=0.5, test_ratio=0.45, max_per_class=2)
    assert summary.counts == {"training": 4, "validation": 0, "test": 4}
    assert class_counts(tmp_path, "training") == dict.fromkeys(KEPT, 1)


def test_same_seed_same_split_other_seed_differs(archive: Path, tmp_path: Path) -> None:
    prepare(tmp_path / "a", archive, seed=7)
    prepare(tmp_path / "b", archive, seed=7)
    prepare(tmp_path / "c", archive, seed=8)
    a, b, c = (files_by_split(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c
    assert a["training"] | a["validation"] | a["test"] == c["training"] | c["validation"] | c["test"]


def test_clutter_dropped_by_default_and_kept_with_flag(archive: Path, tmp_path: Path) -> None:
    dropped = prepare(tmp_path / "default", archive)
    kept = prepare(tmp_path / "kept", archive, keep_clutter=True)
    assert "257.clutter" not in dropped.classes
    assert not (tmp_path / "default/training/257.clutter").exists()
    assert kept.classes == CLASSES
    assert class_counts(tmp_path / "kept", "training")["257.clutter"] == 8


def test_quirks_are_skipped_and_counted(archive: Path, tmp_path: Path) -> None:
    summary = prepare(tmp_path, archive)
    assert sorted(summary.skipped) == sorted(QUIRKS)
    written = set().union(*files_by_split(tmp_path).values())
    assert not any("greg" in name or "RENAME2" in name for name in written)
    assert sum(class_counts(tmp_path, s).get("056.dog", 0) for s in caltech256.SPLITS) == 10
    assert "skipped          3 files" in caltech256.format_summary(summary)


def test_max_per_class(archive: Path, tmp_path: Path) -> None:
    summary = prepare(tmp_path, archive, max_per_class=3, keep_clutter=True)
    assert summary.counts == {"training": 15, "validation": 0, "test": 0}
    assert class_counts(tmp_path, "training") == dict.fromkeys(CLASSES, 3)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_gzipped_archive_gives_the_same_split(archive: Path, tmp_path: Path, suffix: str) -> None:
    gz = make_archive(tmp_path / f"fake{suffix}", mode="w:gz")
    prepare(tmp_path / "gz", gz)
    prepare(tmp_path / "plain", archive)
    assert files_by_split(tmp_path / "gz") == files_by_split(tmp_path / "plain")
    assert sum(map(len, files_by_split(tmp_path / "gz").values())) == 40


@pytest.mark.parametrize("bad_name", ["../evil.jpg", "/tmp/evil.jpg", f"{ROOT}/001.ak47/../../evil.jpg"])
def test_unsafe_member_path_is_refused(tmp_path: Path, bad_name: str) -> None:
    bad = make_archive(tmp_path / "bad.tar", extra=((bad_name, _jpeg(1)),))
    with pytest.raises(ArchiveError, match="unsafe path"):
        prepare(tmp_path / "out", bad)
    assert not (tmp_path / "out" / "training").exists()
    assert not (tmp_path / "evil.jpg").exists()


def test_non_empty_output_is_refused_unless_overwrite(archive: Path, tmp_path: Path) -> None:
    stale = tmp_path / "training" / "old" / "stale.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(tmp_path, archive)
    assert stale.exists()
    summary = prepare(tmp_path, archive, overwrite=True)
    assert not stale.exists()
    assert summary.counts["training"] == 32


def test_bad_options_raise_value_errors(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--val-ratio"):
        prepare(tmp_path, archive, val_ratio=1.5)
    with pytest.raises(OptionError, match="below 1"):
        prepare(tmp_path, archive, val_ratio=0.5, test_ratio=0.5)
    with pytest.raises(OptionError, match="--max-per-class"):
        prepare(tmp_path, archive, max_per_class=0)


def test_not_a_tar_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive" * 100)
    with pytest.raises(ArchiveError, match="cannot read"):
        prepare(tmp_path / "out", junk)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def http_server(archive: Path, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve the fake archive as http://127.0.0.1:PORT/256_ObjectCategories.tar."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(archive, root / "256_ObjectCategories.tar")
    requests: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_download_then_reuse(
    http_server: tuple[str, list[str]],
    archive: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, requests = http_server
    url = f"{base}/256_ObjectCategories.tar"
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="train.caltech256"):
        summary = prepare(out, url=url, skip_md5=True)
    downloaded = out / ".download" / "256_ObjectCategories.tar"
    assert downloaded.read_bytes() == archive.read_bytes()
    assert not downloaded.with_name("256_ObjectCategories.tar.part").exists()
    assert summary.counts["training"] == 32
    assert requests == ["/256_ObjectCategories.tar"]
    assert any("100%" in r.getMessage() for r in caplog.records)
    again = prepare(out, url=url, skip_md5=True, overwrite=True)
    assert requests == ["/256_ObjectCategories.tar"]  # no second request
    assert again == summary


def test_download_http_error_is_clear(http_server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = http_server
    with pytest.raises(DownloadError, match=r"404.*--archive PATH"):
        prepare(tmp_path, url=f"{base}/missing.tar", skip_md5=True)
    assert not (tmp_path / ".download" / "256_ObjectCategories.tar.part").exists()
    assert not (tmp_path / ".download" / "256_ObjectCategories.tar").exists()


def test_download_connection_refused_is_clear(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="download the archive by hand and pass --archive"):
        prepare(tmp_path, url=f"http://127.0.0.1:{port}/256_ObjectCategories.tar", skip_md5=True)


def test_md5_mismatch_for_the_real_archive_name(archive: Path, tmp_path: Path) -> None:
    named = tmp_path / "256_ObjectCategories.tar"
    shutil.copy(archive, named)
    with pytest.raises(ArchiveError, match="MD5 mismatch"):
        prepare(tmp_path / "out", named)
    assert not (tmp_path / "out" / "training").exists()
    assert prepare(tmp_path / "out", named, skip_md5=True).counts["test"] == 4


def test_errors_share_one_base_class() -> None:
    for error in (ArchiveError, DownloadError, OptionError, OutputExistsError):
        assert issubclass(error, PrepareError) and issubclass(error, RuntimeError)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "train.caltech256", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_cli_missing_archive_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run_cli("--out", str(tmp_path / "out"), "--archive", str(tmp_path / "nope.tar"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: archive not found")
    assert "Traceback" not in result.stderr


def test_cli_success_prints_summary(archive: Path, tmp_path: Path) -> None:
    result = _run_cli("--out", str(tmp_path), "--archive", str(archive), "--keep-clutter", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "5 classes" in result.stdout and "40 images" in result.stdout
    assert class_counts(tmp_path, "validation") == dict.fromkeys(CLASSES, 1)


def test_verify_md5_accepts_the_right_digest(archive: Path) -> None:
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    caltech256.verify_md5(archive, digest)  # no error
    with pytest.raises(ArchiveError, match=digest):
        caltech256.verify_md5(archive, "0" * 32)
