"""Run our SDK v3 modules in .venv-sdk3 (no torch there): with this machine's Docker for local mode,
or with AWS's API answered by recorded answers (tests/sdk3_stub.py) for the cloud."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import REPO

PYTHON = REPO / ".venv-sdk3" / "bin" / "python"
# A sitecustomize for the subprocesses (the SDK, and docker-compose if it is Python): logs every
# network connection and name lookup to $NET_LOG, so the test sees telemetry or AWS calls.
NET_AUDIT = textwrap.dedent("""
    import os, socket, sys

    def _audit(event, args):
        if event == "socket.connect" and args[0].family != socket.AF_UNIX:
            note = f"connect {args[1]}"
        elif event == "socket.getaddrinfo":
            note = f"lookup {args[0]}"
        else:
            return
        with open(os.environ["NET_LOG"], "a") as log:
            log.write(f"{sys.argv[0]}: {note}\\n")

    sys.addaudithook(_audit)
""")


def audited(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``env`` with NET_AUDIT installed: every connection and name lookup goes to tmp_path/net.log."""
    (tmp_path / "audit").mkdir(exist_ok=True)
    (tmp_path / "audit" / "sitecustomize.py").write_text(NET_AUDIT)
    return env | {"PYTHONPATH": str(tmp_path / "audit"), "NET_LOG": str(tmp_path / "net.log")}


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


def containers_of(image: str) -> list[str]:
    """IDs of the containers, running or stopped, of ``image``: a test's endpoint or job must leave none."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"ancestor={image}"], capture_output=True, text=True
    )
    return listed.stdout.split()
