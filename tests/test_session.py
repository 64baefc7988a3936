"""local_mode/session.py: which compose each SDK runs, its one-line refusals, and SDK v2's warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from local_mode import session as local
from tests.conftest import REPO

PLUGIN = """#!/bin/sh
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion": "0.1.0", "Vendor": "test", "Version": "VERSION"}'; exit 0
fi
echo "Docker Compose version VERSION"
"""


@pytest.fixture
def compose(tmp_path, monkeypatch):
    """``compose(plugin_version or None, standalone)``: what this machine's docker CLI finds (a CLI
    plugin in $DOCKER_CONFIG that prints the version, as Compose's does) and whether
    ``docker-compose`` is on the PATH."""

    def install(version: str | None, standalone: bool) -> None:
        plugins = tmp_path / "cli-plugins"
        shutil.rmtree(plugins, ignore_errors=True)
        plugins.mkdir()
        if version:
            (plugins / "docker-compose").write_text(PLUGIN.replace("VERSION", version))
            (plugins / "docker-compose").chmod(0o755)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
        which = shutil.which
        monkeypatch.setattr(
            local.shutil,
            "which",
            lambda name: (which(name) if standalone else None) if name == "docker-compose" else which(name),
        )

    return install


@pytest.mark.parametrize(
    "version,standalone,sdk,expected",
    [
        ("v2.40.3", False, 2, ["docker", "compose"]),
        ("v2.40.3", False, 3, ["docker", "compose"]),
        ("v5.0.0", False, 3, ["docker", "compose"]),  # v3 takes any plugin from major version 2
        ("v5.0.0", True, 2, ["docker-compose"]),  # v2 wants "v2" in the version: it falls back
        ("v5.0.0", False, 2, None),
        (None, True, 2, ["docker-compose"]),
        (None, True, 3, ["docker-compose"]),
        (None, False, 3, None),
    ],
)
def test_compose_is_the_one_each_sdk_runs(compose, version, standalone, sdk, expected):
    if shutil.which("docker-compose") is None and standalone:
        pytest.skip("docker-compose is not installed here")
    compose(version, standalone)
    assert local.compose_command(sdk) == expected


def test_a_compose_plugin_sdk_v2_cannot_run_is_refused_in_one_line_naming_both_ways_out(compose, monkeypatch):
    compose("v5.0.0", False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine here")
    with pytest.raises(local.PreflightError) as refused:
        local.preflight("local", sdk=2)
    assert str(refused.value) == (
        "SDK v2's local mode runs the docker compose plugin only at version 2.x (this one: 'Docker Compose "
        "version v5.0.0'): install docker-compose, or use SDK v3 (.venv-sdk3)"
    )
    local.preflight("local", sdk=3)  # the same machine is fine for v3
    compose(None, False)
    with pytest.raises(local.PreflightError, match=r"^no Docker Compose: install the docker compose plugin"):
        local.preflight("local", sdk=3)


def test_sdk_v2s_deprecation_warning_is_not_silenced():
    """Users learn of it here, not in production: neither the session nor the tuner hides it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "AWS_"))}
    env |= {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    code = "from local_mode import session; session.local_session(); import tuning.tune"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "SageMaker Python SDK v2, which is on path of deprecation" in result.stderr
