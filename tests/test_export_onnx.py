"""model.onnx in the artifact: ``export-onnx`` (``train.artifact.main``) upgrades artifacts written
before, checksums, ``save(onnx=False)``, ``copy_files`` and old artifact.json files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import model_artifact
from model_artifact import ArtifactError, Metadata, Preprocessing
from serve.portable_code import CODE_DIR
from train import artifact

CLASSES = ["ant", "bee", "cat"]
EXPORT_ONNX = Path(sys.executable).parent / "export-onnx"


def write_old(path: Path) -> Path:
    """An artifact as written before ONNX export: no model.onnx, no onnx_sha256 in artifact.json."""
    torch.manual_seed(0)
    net = model_artifact.build_model("resnet18", len(CLASSES))
    artifact.save(path, net.state_dict(), Metadata("resnet18", CLASSES, Preprocessing.for_image_size(32)), onnx=False)
    meta_path = path / model_artifact.METADATA_FILE
    raw = json.loads(meta_path.read_text())
    del raw["onnx_sha256"]
    meta_path.write_text(json.dumps(raw, indent=2, sort_keys=True))
    shutil.rmtree(path / CODE_DIR)
    return path


@pytest.fixture(scope="module")
def old_template(tmp_path_factory) -> Path:
    return write_old(tmp_path_factory.mktemp("old") / "model")


@pytest.fixture(scope="module")
def onnx_template(tmp_path_factory) -> Path:
    """An artifact written now: with model.onnx."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("new") / "model"
    net = model_artifact.build_model("resnet18", len(CLASSES))
    artifact.save(path, net.state_dict(), Metadata("resnet18", CLASSES, Preprocessing.for_image_size(32)))
    return path


@pytest.fixture
def old(old_template, tmp_path) -> Path:
    return Path(shutil.copytree(old_template, tmp_path / "old"))


@pytest.fixture
def new(onnx_template, tmp_path) -> Path:
    return Path(shutil.copytree(onnx_template, tmp_path / "new"))


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) by name, with its SHA-256 (links: their target)."""
    items = [path] if not path.is_dir() or path.is_symlink() else sorted(path.rglob("*"))
    return {
        str(p.relative_to(path.parent)): (
            f"-> {p.readlink()}"
            if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file()
            else "/"
        )
        for p in items
    }


def tarball_of(folder: Path, path: Path) -> Path:
    """model.tar.gz as SageMaker packs /opt/ml/model: the folder's contents at the top."""
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for item in sorted(folder.iterdir()):
            archive.add(item, arcname=item.name)
    return path


def assert_serves_with_onnx(model_dir: Path) -> None:
    """What the CPU serving image does: the verified model.onnx answers like the weights."""
    import onnxruntime

    model, meta = model_artifact.load(model_dir)
    session = onnxruntime.InferenceSession(str(model_artifact.onnx_path(model_dir, meta)))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    got = session.run([model_artifact.ONNX_OUTPUT], {model_artifact.ONNX_INPUT: x.numpy()})[0]
    assert np.abs(got - expected).max() <= model_artifact.ONNX_TOLERANCE


def test_old_artifact_json_still_loads(old):
    """artifact.json without onnx_sha256 reads; onnx_path says what to do."""
    assert "onnx_sha256" not in json.loads((old / model_artifact.METADATA_FILE).read_text())
    model, meta = model_artifact.load(old)
    assert meta.onnx_sha256 == "" and meta.class_names == CLASSES and not model.training
    with pytest.raises(ArtifactError, match=r"has no model\.onnx.*run `export-onnx`.*PyTorch image"):
        model_artifact.onnx_path(old, meta)


def test_export_onnx_upgrades_a_model_folder(old, capsys):
    weights_before = (old / model_artifact.WEIGHTS_FILE).read_bytes()
    before = model_artifact.load_metadata(old)
    assert artifact.main([str(old)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [out.strip()] and "model.onnx written (resnet18, 3 classes, sha256 " in out
    assert err == ""
    meta = model_artifact.load_metadata(old)
    assert len(meta.onnx_sha256) == 64 and meta.onnx_sha256[:12] in out
    assert meta.weights_sha256 == before.weights_sha256 and meta.preprocessing == before.preprocessing
    assert (old / model_artifact.WEIGHTS_FILE).read_bytes() == weights_before
    assert (old / CODE_DIR / "inference.py").is_file()
    assert not [p.name for p in old.iterdir() if ".tmp-" in p.name]  # no temporary file left behind
    assert_serves_with_onnx(old)


@pytest.mark.slow
def test_export_onnx_upgrades_a_tarball(old, tmp_path, capsys):
    tarball = tarball_of(old, tmp_path / "model.tar.gz")
    assert artifact.main([str(tarball)]) == 0
    assert "model.onnx written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz", "old"]  # repacked in place
    extracted = tmp_path / "extracted"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        archive.extractall(extracted, filter="data")
    assert {model_artifact.ONNX_FILE, *model_artifact.ARTIFACT_FILES} <= set(names)
    assert (extracted / model_artifact.WEIGHTS_FILE).read_bytes() == (old / model_artifact.WEIGHTS_FILE).read_bytes()
    served = model_artifact.copy_files(extracted, tmp_path / "served")  # what serving does with it
    assert_serves_with_onnx(served)


def bad_tarball(path: Path, old: Path) -> Path:
    """A model.tar.gz whose artifact.json is a link pointing outside the folder it unpacks into."""
    with tarfile.open(path, "w:gz") as archive:
        archive.add(old / model_artifact.WEIGHTS_FILE, arcname=model_artifact.WEIGHTS_FILE)
        link = tarfile.TarInfo(model_artifact.METADATA_FILE)
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        archive.addfile(link)
    return path


def garbage(path: Path, old: Path) -> Path:
    path.write_bytes(b"not a tarball at all")
    return path


def not_an_artifact(path: Path, old: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("a folder without artifact.json")
    return path


def missing(path: Path, old: Path) -> Path:
    return path


def truncated(path: Path, old: Path) -> Path:
    data = tarball_of(old, path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def without_metadata(path: Path, old: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        archive.add(old / model_artifact.WEIGHTS_FILE, arcname=model_artifact.WEIGHTS_FILE)
    return path


@pytest.mark.parametrize(
    "make,name,message",
    [
        (not_an_artifact, "folder", "artifact.json not found"),
        (missing, "nowhere", "not found"),
        (bad_tarball, "model.tar.gz", "outside"),
        (garbage, "model.tar.gz", ""),
        (truncated, "model.tar.gz", "ended before"),
        (without_metadata, "model.tar.gz", "artifact.json not found"),
    ],
    ids=["not-an-artifact", "missing", "link-outside", "not-a-tarball", "truncated", "no-artifact-json"],
)
def test_export_onnx_refuses_with_one_line(old, tmp_path, capsys, make, name, message):
    """Status 1, one line on stderr naming the path, and nothing changed."""
    (tmp_path / "in").mkdir()
    target = make(tmp_path / "in" / name, old)
    before = snapshot(tmp_path / "in")
    assert artifact.main([str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"{target}: ") and message in err
    assert snapshot(tmp_path / "in") == before


@pytest.mark.slow
def test_export_onnx_goes_on_after_a_failure(old, tmp_path, capsys):
    """One bad path among several: the others are upgraded, the status is 1."""
    assert artifact.main([str(tmp_path / "nowhere"), str(old)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and len(err.splitlines()) == 1
    assert model_artifact.onnx_path(old, model_artifact.load_metadata(old)).is_file()


def test_a_failed_repack_leaves_the_tarball_as_it_was(old, tmp_path, capsys, monkeypatch):
    """A repack that fails half-way (a full disk) leaves model.tar.gz unchanged and no temporary file."""

    def full_disk(folder, out):
        out.write(b"half a tarball")
        raise OSError(28, "No space left on device")

    (tmp_path / "in").mkdir()
    tarball = tarball_of(old, tmp_path / "in" / "model.tar.gz")
    before = snapshot(tmp_path / "in")
    monkeypatch.setattr(artifact, "_pack", full_disk)
    assert artifact.main([str(tarball)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(tmp_path / "in") == before


def test_export_onnx_refuses_tampered_weights(old, capsys):
    with open(old / model_artifact.WEIGHTS_FILE, "ab") as f:
        f.write(b"x")
    assert artifact.main([str(old)]) == 1
    assert "checksum" in capsys.readouterr().err
    assert not (old / model_artifact.ONNX_FILE).exists()


@pytest.mark.slow
def test_export_onnx_console_script(old, tmp_path):
    """The installed script (else ``python -m train.artifact``) in a process of its own."""
    command = [str(EXPORT_ONNX)] if EXPORT_ONNX.exists() else [sys.executable, "-m", "train.artifact"]
    result = subprocess.run([*command, str(old)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [result.stdout.strip()] and "model.onnx written" in result.stdout
    assert model_artifact.onnx_path(old, model_artifact.load_metadata(old)).is_file()
    nowhere = tmp_path / "nowhere"
    result = subprocess.run([*command, str(nowhere)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    expected = f"{nowhere}: {nowhere / 'artifact.json'} not found: is this a model trained by this project?"
    assert result.stderr.strip().splitlines() == [expected]


def test_tampered_onnx_fails_the_checksum(new):
    meta = model_artifact.load_metadata(new)
    assert model_artifact.onnx_path(new, meta) == new / model_artifact.ONNX_FILE
    data = bytearray((new / model_artifact.ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (new / model_artifact.ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        model_artifact.onnx_path(new, meta)
    (new / model_artifact.ONNX_FILE).unlink()
    with pytest.raises(ArtifactError, match="not found"):
        model_artifact.onnx_path(new, meta)


def test_save_without_onnx_removes_a_stale_one(new):
    assert (new / model_artifact.ONNX_FILE).is_file()
    model, meta = model_artifact.load(new)
    artifact.save(new, model.state_dict(), meta, onnx=False)
    assert not (new / model_artifact.ONNX_FILE).exists()
    meta = model_artifact.load_metadata(new)
    assert meta.onnx_sha256 == "" and json.loads((new / model_artifact.METADATA_FILE).read_text())["onnx_sha256"] == ""
    with pytest.raises(ArtifactError, match="export-onnx"):
        model_artifact.onnx_path(new, meta)


def test_save_records_the_onnx_checksum(new):
    meta = model_artifact.load_metadata(new)
    assert meta.onnx_sha256 == hashlib.sha256((new / model_artifact.ONNX_FILE).read_bytes()).hexdigest()
    assert_serves_with_onnx(new)


def test_copy_files_copies_model_onnx(new, old, tmp_path):
    copy = model_artifact.copy_files(new, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == sorted([*model_artifact.ARTIFACT_FILES, model_artifact.ONNX_FILE])
    assert (copy / model_artifact.ONNX_FILE).read_bytes() == (new / model_artifact.ONNX_FILE).read_bytes()
    assert model_artifact.onnx_path(copy, model_artifact.load_metadata(copy)).is_file()
    without = model_artifact.copy_files(old, tmp_path / "copy-old")  # optional: none, none copied
    assert sorted(p.name for p in without.iterdir()) == sorted(model_artifact.ARTIFACT_FILES)


@pytest.mark.parametrize("dangling", [False, True])
def test_copy_files_refuses_a_linked_model_onnx(new, tmp_path, dangling):
    elsewhere = tmp_path / "elsewhere.onnx"
    if not dangling:
        elsewhere.write_bytes((new / model_artifact.ONNX_FILE).read_bytes())
    (new / model_artifact.ONNX_FILE).unlink()
    (new / model_artifact.ONNX_FILE).symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match="symbolic link"):
        model_artifact.copy_files(new, tmp_path / "copy")


def test_onnx_model_has_the_documented_interface(new):
    """Input ``images`` (N, 3, S, S) with a free batch size, output ``probabilities`` (N, classes)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(new / model_artifact.ONNX_FILE))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == model_artifact.ONNX_INPUT and out.name == model_artifact.ONNX_OUTPUT
    assert inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
    assert out.shape[1:] == [len(CLASSES)]
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        (probabilities,) = session.run(None, {inp.name: x})
        assert probabilities.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_export_refuses_an_onnx_file_that_differs(new, monkeypatch):
    """The check against PyTorch runs before the file is kept: a failing one leaves nothing."""
    monkeypatch.setattr(model_artifact, "ONNX_TOLERANCE", -1.0)
    model, meta = model_artifact.load(new)
    target = new / "again.onnx"
    with pytest.raises(ArtifactError, match="differs from PyTorch"):
        artifact.export_onnx(model, meta.preprocessing, target)
    assert not target.exists() and not list(new.glob(".again.onnx.tmp-*"))
