"""``make demo``'s script end to end: local-mode training, a local endpoint, 60 predictions, clean-up."""

from __future__ import annotations

import re

import pytest

from local_mode import demo
from local_mode import session as local

pytestmark = pytest.mark.slow


def test_demo_trains_deploys_classifies_and_cleans_up(images, sample_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    demo.main(["--data", str(sample_data), "--out", str(tmp_path / "demo")])
    printed = capsys.readouterr().out
    accuracy = re.search(r"^test accuracy (\d+)% \(chance 25%\)", printed, re.MULTILINE)
    assert accuracy and int(accuracy[1]) >= 50, printed[-2000:]
    assert len(re.findall(r"^  (ball|box|cone|ring)/\w+_000\.\w+: \w+ \(top 2: ", printed, re.MULTILINE)) == 4
    assert (tmp_path / "demo" / "artifacts" / "model.tar.gz").is_file()
    assert (tmp_path / "demo" / "artifacts" / "output.tar.gz").is_file()
    assert not (tmp_path / "demo" / "container_root").exists()
    assert not local.containers(tmp_path / "demo" / "container_root")
