"""Local mode for SDK v2 and v3: preflight, an SDK v2 session, no telemetry, clean-up.

Preflight answers the usual failures with what to do: no Docker engine, no compose that the
SDK runs, no GPU runtime for ``local_gpu``, no region. SDK v2's deprecation warning is left
to show: docs/local-mode.md#sdk-versions says what it means for users.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIG = "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"
NETWORK = "sagemaker-local"  # the SDK's compose files attach every local job to it
WORKDIR_LABEL = "com.docker.compose.project.working_dir"  # compose's label: the job's folder
DUMMY_ROLE = "arn:aws:iam::111111111111:role/local-mode"  # local mode needs a role string, never uses it
CONFIG_OVERRIDE = "SAGEMAKER_USER_CONFIG_OVERRIDE"
IMDS_OFF = "AWS_EC2_METADATA_DISABLED"  # local data and a local image need no credentials


class PreflightError(Exception):
    """Local mode cannot run here; the message says what to do."""


def preflight(instance_type: str, sdk: int = 2) -> None:
    """Check what local mode needs before the SDK (``sdk``: its major version) fails obscurely."""
    if not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        raise PreflightError("no AWS region: set AWS_DEFAULT_REGION (local mode needs one, not credentials)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise PreflightError("no Docker engine answers: run docker/engine.sh (or start Docker)")
    version = compose_plugin_version()
    if compose_command(sdk, version) is None:
        raise PreflightError(compose_missing(sdk, version))
    if instance_type == "local_gpu":
        runtimes = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
        if "nvidia" not in runtimes.stdout:
            raise PreflightError("local_gpu needs the NVIDIA container runtime (nvidia-container-toolkit)")


def compose_plugin_version() -> str:
    """What ``docker compose version`` prints (the Compose v2+ plugin), or '' without the plugin."""
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    except FileNotFoundError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def compose_command(sdk: int = 2, version: str | None = None) -> list[str] | None:
    """The compose command SDK ``sdk``'s local mode will run, by the SDK's own rule, or None.

    Both prefer the plugin. SDK v2 takes it only if its version string contains "v2" (Compose
    v5's plugin is refused there); SDK v3 takes any major version from 2. Else ``docker-compose``.
    ``version``: what ``compose_plugin_version()`` printed, if already asked.
    """
    version = compose_plugin_version() if version is None else version
    if sdk >= 3:
        match = re.search(r"version\s+v?(\d+)", version)
        plugin = bool(match and int(match.group(1)) >= 2)
    else:
        plugin = "v2" in version
    if plugin:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def compose_missing(sdk: int, version: str) -> str:
    """One line: why SDK ``sdk`` finds no compose here (``version``: the plugin's, or ''), and what to install."""
    if version and sdk < 3:  # a plugin SDK v2 does not recognize (e.g. Compose v5)
        return (f"SDK v2's local mode runs the docker compose plugin only at version 2.x (this one: {version!r}): "
                "install docker-compose, or use SDK v3 (.venv-sdk3)")  # fmt: skip
    return "no Docker Compose: install the docker compose plugin, or docker-compose (apt-get install docker-compose)"


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """For SDK v3 local mode: telemetry off (v3 reads v2's ``TelemetryOptOut``), and no probe of the
    EC2 metadata service for credentials (the session the SDK builds for telemetry looks for them)."""
    overrides = {CONFIG_OVERRIDE: str(config_file()), IMDS_OFF: os.environ.get(IMDS_OFF, "true")}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def local_model_v3(image_uri: str, model_tarball: Path, name: str, root: Path):
    """SDK v3 local mode: sagemaker-core's ``LocalSession`` with its folders under ``root`` and model
    ``name`` registered (call inside ``offline()``). The tarball is copied to ``root/model``:
    local mode unpacks every tarball of that folder in place."""
    from sagemaker.core.local.local_session import LocalSession

    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    shutil.copyfile(model_tarball, model_dir / "model.tar.gz")
    session = LocalSession()
    session.config = {"local": {"container_root": str(root)}}
    container = {"Image": image_uri, "ModelDataUrl": f"file://{model_dir}", "Environment": {}}
    session.sagemaker_client.create_model(ModelName=name, PrimaryContainer=container)
    return session


def config_file() -> Path:
    """The SDK config that opts out of telemetry: one fixed file per user, not one per session."""
    path = Path(tempfile.gettempdir()) / f"byoc-sagemaker-config-{os.getuid()}.yaml"
    if not path.is_file() or path.read_text() != CONFIG:
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(CONFIG)
        staged.replace(path)  # atomic: parallel sessions never read half a file
    return path


def local_session(container_root: Path | None = None):
    """A ``LocalSession`` with telemetry off and its temporary folders under ``container_root``."""
    os.environ[CONFIG_OVERRIDE] = str(config_file())
    from sagemaker.local import LocalSession  # after the override: the SDK reads it on import

    # The SDK logs "will collect telemetry" before it reads the opt-out, and a rootless-Docker
    # warning on every local request: both are noise here.
    logging.getLogger("sagemaker.telemetry.telemetry_logging").setLevel(logging.WARNING)
    logging.getLogger("sagemaker.local.utils").setLevel(logging.ERROR)

    session = LocalSession()
    # Model.deploy() waits with wait_for_endpoint, which sleeps 30 s before its first look.
    # A local create_endpoint returns only once the container answers /ping: look after 1 s.
    session.wait_for_endpoint = functools.partial(session.wait_for_endpoint, poll=1)
    root = container_root or Path(tempfile.mkdtemp(prefix="sagemaker-local-"))
    root.mkdir(parents=True, exist_ok=True)
    session.config = {"local": {"local_code": True, "container_root": str(root)}}
    return session


def containers(root: Path | str, running: bool = False) -> list[str]:
    """IDs of the containers whose compose project lives in or under ``root`` (the SDK's job folders)."""
    command = ["docker", "ps", "--format", f'{{{{.ID}}}} {{{{.Label "{WORKDIR_LABEL}"}}}}']
    listed = subprocess.run(command + ([] if running else ["-a"]), capture_output=True, text=True).stdout
    pairs = (line.partition(" ") for line in listed.splitlines())
    return [cid for cid, _, workdir in pairs if workdir == str(root) or workdir.startswith(f"{root}/")]


def remove_jobs(root: Path, network: bool = True) -> None:
    """Remove the containers, network and folders that local jobs under ``root`` left behind.

    By compose's label rather than by compose file: SDK v2 deletes an endpoint's folder but
    leaves its stopped container, and SDK v3 puts its compose file elsewhere.
    """
    if leftover := containers(root):
        subprocess.run(["docker", "stop", *leftover], capture_output=True)  # SIGTERM first, as compose down does
        subprocess.run(["docker", "rm", *leftover], capture_output=True)
    if network:  # shared by all local jobs; parallel ones keep it until the last is done
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True)  # kept while in use
    shutil.rmtree(root, ignore_errors=True)


def cleanup(session, network: bool = True) -> None:
    """Remove what this session's local jobs left behind (see ``remove_jobs``)."""
    remove_jobs(Path(session.config["local"]["container_root"]), network)
