"""Script mode on the server's side: find, stage and prepare the deployer's code before MMS starts.

Only when the deployer set ``SAGEMAKER_PROGRAM`` (the SDK does for ``Model(entry_point=...,
source_dir=...)``). Then, as AWS's PyTorch inference container does, the user's module runs in
the workers and ``code/requirements.txt`` is installed; unlike it:

- the model folder is copied in full (``model_fn`` may read any file) into a private,
  read-only folder, and a link or special file in it stops the server with the reason;
- the code folder is copied the same way, and goes on the workers' import path, not the
  model folder: MMS itself loads an empty folder;
- requirements are installed by the server's unprivileged user into a private prefix, never
  into the image's venv, and a failure stops the server with pip's one-line reason;
- multi-model endpoints refuse ``SAGEMAKER_PROGRAM``: their models come and go at run time,
  and none of their code is ever imported.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from serve import runtimes, script_service, user_module
from serve.settings import Settings

TORCH_IMAGE = "byoc-classifier-serving-gpu"  # the serving image with PyTorch
log = logging.getLogger("serve")
PIP_TIMEOUT_SECONDS = 600
PIP_OPTIONS = ["--no-cache-dir", "--disable-pip-version-check", "--no-input", "--retries", "0", "--timeout", "15"]


class ScriptModeError(Exception):
    """Script mode cannot start; the message is the one-line reason."""


@dataclass
class Staged:
    """The private copies the workers use."""

    program: str
    model_dir: Path
    code_dir: Path


def code_dir(settings: Settings, model_dir: Path) -> Path:
    """The folder with ``SAGEMAKER_PROGRAM``: ``SAGEMAKER_SUBMIT_DIRECTORY`` when it is a local
    folder that has it (SDK local mode mounts ``source_dir`` at ``/opt/ml/code``), else the
    model's ``code/`` (SageMaker repacks ``source_dir`` there; AWS's containers look only there)."""
    candidates = [Path(settings.submit_dir)] if settings.submit_dir.startswith("/") else []
    candidates.append(model_dir / "code")
    for candidate in candidates:
        try:
            user_module.program_path(candidate, settings.program)
            return candidate
        except user_module.UserCodeError:
            continue
    where = " or ".join(str(c) for c in candidates)
    raise ScriptModeError(f"SAGEMAKER_PROGRAM={settings.program!r} is not in {where}")


def stage(settings: Settings, model_dir: Path, root: Path) -> Staged:
    """Copy the model folder and the code folder into ``root``, read-only."""
    if settings.multi_model:
        raise ScriptModeError(
            "SAGEMAKER_PROGRAM is not supported on a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true): "
            "its models serve with the built-in handler only; deploy a script-mode model on its own endpoint"
        )
    if not runtimes.installed("torch"):
        raise ScriptModeError(
            f"SAGEMAKER_PROGRAM={settings.program} needs PyTorch, which this CPU image (ONNX Runtime only) "
            f"does not have: serve script mode with {TORCH_IMAGE}, which runs on CPU instances too"
        )
    source_code = code_dir(settings, model_dir)
    staged_model = copy_tree(model_dir, root / "model-files")
    if source_code.resolve().is_relative_to(model_dir.resolve()):
        staged_code = staged_model / source_code.resolve().relative_to(model_dir.resolve())
    else:
        staged_code = copy_tree(source_code, root / "code")
    for folder in {staged_model, staged_code}:
        make_read_only(folder)
    log.info("script mode: %s from %s; the model folder %s is staged in full for model_fn",
             settings.program, source_code, model_dir)  # fmt: skip
    return Staged(settings.program, staged_model, staged_code)


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a folder; a symbolic link or anything but files and folders is refused."""
    target.mkdir(parents=True)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_symlink():
            raise ScriptModeError(f"{path} is a symbolic link: refused")
        if entry.is_dir(follow_symlinks=False):
            copy_tree(path, target / entry.name)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(path, target / entry.name)
        else:
            raise ScriptModeError(f"{path} is not a regular file or folder: refused")
    return target


def _copy_file(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise ScriptModeError(f"{source} is not a regular file: refused")
        while block := src.read(1 << 20):
            dst.write(block)


def make_read_only(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


def install_requirements(code: Path, prefix: Path) -> Path | None:
    """``pip install -r code/requirements.txt`` into ``prefix``; returns its site-packages
    folder (None without a requirements file). Relative paths in the file are from ``code``."""
    requirements = code / "requirements.txt"
    if not requirements.is_file():
        return None
    log.info("script mode: installing %s", requirements)
    command = [sys.executable, "-m", "pip", "install", "--prefix", str(prefix), *PIP_OPTIONS, "-r", str(requirements)]
    try:
        result = subprocess.run(command, cwd=code, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ScriptModeError(f"pip install -r {requirements} took over {PIP_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        log.info("pip's output:\n%s", (result.stdout + result.stderr)[-5000:])
        raise ScriptModeError(f"pip could not install {requirements}: {pip_reason(result.stdout + result.stderr)}")
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def pip_reason(output: str) -> str:
    """pip's last ``ERROR:`` line (else its last line), without the prefix."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return ((errors or lines or ["pip failed"])[-1])[:300]


def activate(staged: Staged | None, scratch: Path) -> None:
    """As the server's user: install the requirements, then tell the workers (their environment)
    where the code is. Without script mode, make sure that no worker is told anything."""
    for name in (script_service.CODE_DIR_ENV, script_service.MODEL_DIR_ENV, script_service.SITE_DIR_ENV):
        os.environ.pop(name, None)
    if staged is None:
        return
    site_dir = install_requirements(staged.code_dir, scratch / "python")
    os.environ[script_service.CODE_DIR_ENV] = str(staged.code_dir)
    os.environ[script_service.MODEL_DIR_ENV] = str(staged.model_dir)
    if site_dir is not None:
        os.environ[script_service.SITE_DIR_ENV] = str(site_dir)
