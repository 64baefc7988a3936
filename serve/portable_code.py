"""``code/`` of every model artifact, so that it serves unchanged on AWS's PyTorch inference
container: ``inference.py`` (``portable_inference.py``) and copies of the two modules it imports.

Training writes it (``train.artifact.save``) and ``export-onnx`` rewrites it; our own image
ignores the folder unless the deployer sets ``SAGEMAKER_PROGRAM``. No training code is copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import model_artifact

CODE_DIR = "code"  # what AWS's inference containers import: code/inference.py and its modules
SERVE_DIR = Path(__file__).resolve().parent
# code/ file -> the source it is a copy of
CODE_FILES = {
    "inference.py": SERVE_DIR / "portable_inference.py",
    "byoc_codecs.py": SERVE_DIR / "codecs.py",
    "model_artifact.py": Path(model_artifact.__file__).resolve(),
}


def write_code(model_dir: str | os.PathLike) -> Path:
    """Write (or rewrite) ``model_dir/code/`` from ``CODE_FILES``; returns the folder."""
    code = Path(model_dir) / CODE_DIR
    code.mkdir(exist_ok=True)
    for name, source in CODE_FILES.items():
        data = source.read_bytes()
        model_artifact.atomic_write(code / name, lambda f, data=data: f.write(data))
    return code
