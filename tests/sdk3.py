"""Run our SDK v3 modules in .venv-sdk3 (no torch there): with this machine's Docker for local mode,
or with AWS's API answered by recorded answers (tests/sdk3_stub.py) for the cloud."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import REPO

PYTHON = REPO / ".venv-sdk3" / "bin" / "python"


def sdk3_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "AWS_"))}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env | {"AWS_DEFAULT_REGION": "us-east-1", "TMPDIR": str(tmp_path / "tmp"), "PYTHONUNBUFFERED": "1"}


def run_stubbed(tmp_path: Path, answers: dict, module: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``module`` in .venv-sdk3 with AWS answered by ``answers`` (tests/sdk3_stub.py); its calls."""
    assert PYTHON.exists(), "no .venv-sdk3: run `make venv-sdk3`"
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    calls = tmp_path / "calls.json"
    env = sdk3_env(tmp_path) | {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    # no instance metadata lookups; no IAM policy simulation of the role (the SDK's own switch)
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "SAGEMAKER_VALIDATE_ROLE": "false"}
    result = subprocess.run(
        [str(PYTHON), "tests/sdk3_stub.py", str(tmp_path / "answers.json"), str(calls), "-m", module, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result, json.loads(calls.read_text()) if calls.exists() else []


def calls_of(calls: list, operation: str) -> list[dict]:
    """The parameters of each call of ``operation``, in order."""
    return [params for _, name, params in calls if name == operation]
