"""Prepare Caltech-256 for training: its tar archive → one folder per SageMaker channel.

Reads ``256_ObjectCategories.tar`` (a local file, or downloaded once into
``OUT/.download``) and streams the images straight out of the archive into
``OUT/training``, ``OUT/validation`` and ``OUT/test``, each an ImageFolder whose class
folders keep the archive's names (``001.ak47``). The split is stratified per class and
deterministic for a given seed::

    python -m train.caltech256 --out data/caltech256 --archive 256_ObjectCategories.tar
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import random
import shutil
import sys
import tarfile
import urllib.request
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

log = logging.getLogger(__name__)

DEFAULT_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
ARCHIVE_NAME = "256_ObjectCategories.tar"
ARCHIVE_MD5 = "67b4f42ca05d46448c6bb8ecd2220f6d"
CLUTTER_CLASS = "257.clutter"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("training", "validation", "test")
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_UNKNOWN_SIZE_LOG_EVERY = 100 << 20

# A per-class plan: archive member → (split, class folder, file name).
Plan = dict[tarfile.TarInfo, tuple[str, str, str]]


class PrepareError(RuntimeError):
    """Something the user can fix: an option, the archive, the download, the output folder."""


class OptionError(PrepareError, ValueError):
    """An option has an invalid value."""


class ArchiveError(PrepareError):
    """The archive is missing, unreadable, unsafe, corrupt or holds no images."""


class DownloadError(PrepareError):
    """The archive could not be downloaded."""


class OutputExistsError(PrepareError):
    """The output channel folders already hold files."""


@dataclass(frozen=True)
class Summary:
    """What :func:`prepare` wrote."""

    out_dir: Path
    classes: tuple[str, ...]
    counts: dict[str, int]  # images per split, keyed by SPLITS
    skipped: tuple[str, ...]  # archive members that are not images directly in a class folder


def prepare(
    out_dir: str | Path,
    archive: str | Path | None = None,
    *,
    url: str = DEFAULT_URL,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    keep_clutter: bool = False,
    max_per_class: int | None = None,
    skip_md5: bool = False,
    overwrite: bool = False,
) -> Summary:
    """Write ``out_dir/{training,validation,test}/<class>/<image>`` from the archive.

    Without ``archive`` the archive is downloaded from ``url`` (once) into
    ``out_dir/.download``. Raises a :class:`PrepareError` subclass for user errors.
    """
    out = Path(out_dir)
    _validate_options(val_ratio, test_ratio, max_per_class)
    _check_output(out, overwrite)
    path = _resolve_archive(out, archive, url, skip_md5)
    with _open_tar(path) as tar:
        members = _read_members(tar, path)
        images, skipped = scan_members(members)
        if not keep_clutter:
            images.pop(CLUTTER_CLASS, None)
        if not images:
            raise ArchiveError(f"no images found as <folder>/<class>/<image> in {path}")
        plan = plan_split(images, val_ratio, test_ratio, seed, max_per_class)
        _clear_output(out)
        _write_images(tar, members, plan, out, path)
    counts = {split: sum(1 for s, _, _ in plan.values() if s == split) for split in SPLITS}
    return Summary(out, tuple(sorted(images)), counts, tuple(skipped))


def _validate_options(val_ratio: float, test_ratio: float, max_per_class: int | None) -> None:
    for name, value in (("--val-ratio", val_ratio), ("--test-ratio", test_ratio)):
        if not 0.0 <= value < 1.0:
            raise OptionError(f"{name} must be in [0, 1), got {value}")
    if val_ratio + test_ratio >= 1.0:
        total = val_ratio + test_ratio
        raise OptionError(f"--val-ratio + --test-ratio must be below 1, got {total}")
    if max_per_class is not None and max_per_class < 1:
        raise OptionError(f"--max-per-class must be at least 1, got {max_per_class}")


def _check_output(out: Path, overwrite: bool) -> None:
    for split in SPLITS:
        folder = out / split
        if not overwrite and folder.is_dir() and any(folder.iterdir()):
            raise OutputExistsError(f"{folder} is not empty; pass --overwrite to replace it")


def _clear_output(out: Path) -> None:
    for split in SPLITS:
        if (out / split).exists():
            shutil.rmtree(out / split)


def _resolve_archive(out: Path, archive: str | Path | None, url: str, skip_md5: bool) -> Path:
    if archive is None:
        path = download(url, out / ".download" / ARCHIVE_NAME)
    else:
        path = Path(archive)
        if not path.is_file():
            raise ArchiveError(f"archive not found: {path}")
    if path.name == ARCHIVE_NAME and not skip_md5:
        verify_md5(path, ARCHIVE_MD5)
    return path


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``); an existing ``dest`` is reused."""
    if dest.is_file():
        log.info("reusing the earlier download %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            written = _copy_with_progress(response, out, total)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(_download_hint(url, str(exc))) from exc
    if total and written != total:
        part.unlink(missing_ok=True)
        raise DownloadError(_download_hint(url, f"got {written} of {total} bytes"))
    part.replace(dest)
    return dest


def _download_hint(url: str, reason: str) -> str:
    return f"could not download {url} ({reason}); download the archive by hand and pass --archive PATH"


def _copy_with_progress(src: BinaryIO, dst: BinaryIO, total: int) -> int:
    written = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        before, written = written, written + len(chunk)
        if total and written * 10 // total > before * 10 // total:
            percent = written * 100 // total
            log.info("downloaded %d%% (%d of %d MB)", percent, written >> 20, total >> 20)
        elif not total and written // _UNKNOWN_SIZE_LOG_EVERY > before // _UNKNOWN_SIZE_LOG_EVERY:
            log.info("downloaded %d MB", written >> 20)
    return written


def verify_md5(path: Path, expected: str) -> None:
    """Raise :class:`ArchiveError` unless the file's MD5 is ``expected``."""
    log.info("verifying the MD5 of %s", path)
    with path.open("rb") as fh:
        actual = hashlib.file_digest(fh, "md5").hexdigest()
    if actual != expected:
        raise ArchiveError(
            f"MD5 mismatch for {path}: got {actual}, expected {expected} "
            "(incomplete or corrupt; delete it and retry, or pass --skip-md5)"
        )


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"cannot read {path} as a tar archive ({exc})") from exc


def _read_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    log.info("reading the list of files in %s", path)
    try:
        return tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"cannot read {path} as a tar archive ({exc})") from exc


def classify_member(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """``(class, file)`` for an image directly inside a class folder, else ``None``.

    Raises :class:`ArchiveError` for an absolute path or one with ``..``.
    """
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"unsafe path in archive: {member.name!r}")
    if not member.isfile() or len(path.parts) != 3:
        return None
    _, class_name, file_name = path.parts
    if file_name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return class_name, file_name


def scan_members(
    members: Iterable[tarfile.TarInfo],
) -> tuple[dict[str, dict[str, tarfile.TarInfo]], list[str]]:
    """Images by class (``{class: {file: member}}``) and the skipped non-folder members."""
    images: dict[str, dict[str, tarfile.TarInfo]] = {}
    skipped: list[str] = []
    for member in members:
        found = classify_member(member)
        if found is not None:
            images.setdefault(found[0], {})[found[1]] = member
        elif not member.isdir():
            skipped.append(member.name)
    return images, skipped


def split_files(
    files: Iterable[str],
    val_ratio: float,
    test_ratio: float,
    rng: random.Random,
    max_count: int | None = None,
) -> dict[str, list[str]]:
    """Shuffle the sorted files, cap them at ``max_count``, cut test, validation, training.

    Training always keeps at least one file (when there is one).
    """
    order = sorted(files)
    rng.shuffle(order)
    order = order[:max_count] if max_count is not None else order
    n = len(order)
    n_test = max(0, min(round(n * test_ratio), n - 1))
    n_val = max(0, min(round(n * val_ratio), n - 1 - n_test))
    return {
        "training": order[n_test + n_val :],
        "validation": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }


def plan_split(
    images: dict[str, dict[str, tarfile.TarInfo]],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    max_per_class: int | None = None,
) -> Plan:
    """Map each chosen member to ``(split, class, file)``.

    Each class is shuffled by its own ``random.Random`` seeded from ``seed`` and the
    class name, so a class's split does not depend on which other classes are present.
    """
    plan: Plan = {}
    for class_name in sorted(images):
        files = images[class_name]
        rng = random.Random(f"{seed}:{class_name}")
        for split, names in split_files(files, val_ratio, test_ratio, rng, max_per_class).items():
            for name in names:
                plan[files[name]] = (split, class_name, name)
    return plan


def _write_images(tar: tarfile.TarFile, members: list[tarfile.TarInfo], plan: Plan, out: Path, path: Path) -> None:
    log.info("writing %d images under %s", len(plan), out)
    made: set[Path] = set()
    try:
        for member in members:  # archive order: a single forward pass, also for .tar.gz
            if member not in plan:
                continue
            split, class_name, name = plan[member]
            folder = out / split / class_name
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            _copy_member(tar, member, folder / name)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # not a regular file; classify_member already excludes these
        raise ArchiveError(f"cannot extract {member.name!r}")
    with source, dest.open("wb") as target:
        shutil.copyfileobj(source, target, _CHUNK)


def format_summary(summary: Summary) -> str:
    """A few lines for the terminal: classes, images per split, skipped files."""
    lines = [f"Caltech-256 in {summary.out_dir}: {len(summary.classes)} classes"]
    lines += [f"  {split:<11}{summary.counts[split]:>7} images" for split in SPLITS]
    shown = ", ".join(summary.skipped[:5]) + (", ..." if len(summary.skipped) > 5 else "")
    lines.append(f"  skipped{len(summary.skipped):>11} files" + (f" ({shown})" if shown else ""))
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    prog = "python -m train.caltech256" if __name__ == "__main__" else None
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", type=Path, metavar="PATH", help="local .tar/.tar.gz")
    source.add_argument("--url", default=DEFAULT_URL, help="download source (default: %(default)s)")
    parser.add_argument("--val-ratio", type=float, default=0.1, metavar="R")
    parser.add_argument("--test-ratio", type=float, default=0.1, metavar="R")
    parser.add_argument("--seed", type=int, default=0, metavar="N")
    parser.add_argument("--keep-clutter", action="store_true", help=f"keep {CLUTTER_CLASS}")
    parser.add_argument("--max-per-class", type=int, metavar="N", help="cap images per class")
    parser.add_argument("--skip-md5", action="store_true", help="do not verify the archive's MD5")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 on a user error)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = prepare(
            args.out,
            args.archive,
            url=args.url,
            val_ratio=args.val_ratio,
            test_ratio=args.test_ratio,
            seed=args.seed,
            keep_clutter=args.keep_clutter,
            max_per_class=args.max_per_class,
            skip_md5=args.skip_md5,
            overwrite=args.overwrite,
        )
    except (PrepareError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
