"""serve/portable_code.py: the artifact's code/ folder for AWS's PyTorch inference container."""

from __future__ import annotations

import subprocess
import sys

from serve import portable_code
from tests.conftest import REPO


def test_code_holds_inference_py_and_copies_of_the_modules_it_imports(tmp_path):
    code = portable_code.write_code(tmp_path)
    assert code == tmp_path / portable_code.CODE_DIR
    assert sorted(p.name for p in code.iterdir()) == ["byoc_codecs.py", "inference.py", "model_artifact.py"]
    assert (code / "inference.py").read_bytes() == (REPO / "serve" / "portable_inference.py").read_bytes()
    assert (code / "byoc_codecs.py").read_bytes() == (REPO / "serve" / "codecs.py").read_bytes()
    assert (code / "model_artifact.py").read_bytes() == (REPO / "model_artifact.py").read_bytes()


def test_writing_again_replaces_the_files(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("stale\n")
    code = portable_code.write_code(tmp_path)
    assert (code / "inference.py").read_bytes() == portable_code.CODE_FILES["inference.py"].read_bytes()
    assert sorted(p.name for p in code.iterdir()) == sorted(portable_code.CODE_FILES)  # no temporary file left


def test_the_copied_modules_import_no_training_code():
    """What code/ carries, and this module (in the serving images), import neither ``train`` nor torch
    at import time: the CPU serving image has no torch and neither image has train/."""
    script = (
        "import sys, json, serve.portable_code, serve.codecs, model_artifact; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'train', 'torch', 'torchvision'})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
