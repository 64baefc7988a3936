"""``make push``: ECR's API (moto) for repositories and the login token, a real registry for layers."""

from __future__ import annotations

import base64
import subprocess
import time
import urllib.request

import bcrypt
import boto3
import pytest
from moto import mock_aws

from ecr import push
from tests.serving import free_port

pytestmark = pytest.mark.slow
REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ecr", region_name=REGION)


@pytest.fixture
def registry(aws, tmp_path, monkeypatch):
    """docker-registry on loopback that accepts only the ECR token's user and password."""
    token = aws.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, password = base64.b64decode(token).decode().split(":", 1)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "htpasswd").write_text(f"{user}:{hashed}\n")
    port = free_port()
    (tmp_path / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: test\n    path: {tmp_path / 'htpasswd'}\n"
    )
    server = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # keep the login out of ~/.docker
    for _ in range(50):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
        except urllib.error.HTTPError:  # 401: up, and asking for credentials
            break
        except OSError:
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait()


def test_push_creates_repositories_logs_in_and_pushes(aws, registry, monkeypatch):
    small = "byoc-base:bookworm"  # the push path does not depend on the image's size
    for target in push.TARGETS:
        subprocess.run(["docker", "tag", small, f"pushtest-{target}:latest"], check=True)
    references = push.push_all(REGION, "pushtest", "v1", "latest", registry=registry)
    assert references == [f"{registry}/pushtest-{t}:v1" for t in push.TARGETS]
    repositories = {r["repositoryName"] for r in aws.describe_repositories()["repositories"]}
    assert repositories == {f"pushtest-{t}" for t in push.TARGETS}
    tags = urllib.request.Request(f"http://{registry}/v2/pushtest-training/tags/list")
    with pytest.raises(urllib.error.HTTPError):  # the registry really requires the login
        urllib.request.urlopen(tags, timeout=5)
    subprocess.run(["docker", "rmi", references[0]], check=True, capture_output=True)
    pulled = subprocess.run(["docker", "pull", references[0]], capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr


def test_an_existing_repository_is_reused(aws):
    first = push.ensure_repository(aws, "already-there")
    assert push.ensure_repository(aws, "already-there") == first
    assert first.endswith(".dkr.ecr.us-east-1.amazonaws.com/already-there")


def test_a_missing_local_image_is_a_clear_error(aws, registry):
    with pytest.raises(push.PushError, match="docker tag failed"):
        push.push_all(REGION, "no-such-images", "v1", "latest", registry=registry)


def test_missing_credentials_are_one_line(monkeypatch, tmp_path, capsys):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SystemExit) as exited:
        push.main(["--region", REGION, "--local-tag", "latest"])
    assert str(exited.value) == "error: Unable to locate credentials"
