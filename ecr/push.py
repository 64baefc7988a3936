"""Push the images to Amazon ECR: create the repositories, log in with boto3, tag, push.

    python -m ecr.push --region eu-west-1 [--account 123456789012] [--name byoc-classifier] [--tag latest]

No AWS CLI needed: the login token comes from ECR's ``GetAuthorizationToken`` through boto3
and goes to ``docker login --password-stdin``. Prints the URIs to pass as ``image_uri``.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys

import boto3
import botocore.exceptions

TARGETS = ("training", "serving-cpu", "serving-gpu")


class PushError(Exception):
    """Something the user can fix: no engine, no image, no credentials."""


def ensure_repository(ecr, name: str) -> str:
    """The repository's URI, creating the repository (scan on push) when it does not exist."""
    try:
        found = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        found = ecr.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})[
            "repository"
        ]
    return found["repositoryUri"]


def docker_login(ecr, registry: str | None = None) -> str:
    """``docker login`` to the account's registry (or ``registry``) with an ECR token."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    registry = registry or data["proxyEndpoint"].removeprefix("https://")
    _docker("login", "--username", user, "--password-stdin", registry, stdin=password)
    return registry


def push_image(local: str, uri: str, tag: str) -> str:
    """Tag ``local`` as ``uri:tag`` and push it; returns the pushed reference."""
    reference = f"{uri}:{tag}"
    _docker("tag", local, reference)
    _docker("push", reference)
    return reference


def _docker(*args: str, stdin: str | None = None) -> None:
    try:
        result = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise PushError("docker is not installed: run docker/engine.sh") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PushError(f"docker {args[0]} failed: {detail[-1] if detail else result.returncode}")


def push_all(region: str, name: str, tag: str, local_tag: str, registry: str | None = None) -> list[str]:
    """Push every image ``name-<target>:local_tag``; returns the ECR references."""
    ecr = boto3.client("ecr", region_name=region)
    login_registry = docker_login(ecr, registry)
    pushed = []
    for target in TARGETS:
        uri = ensure_repository(ecr, f"{name}-{target}")
        if registry:  # tests: the ECR API answers, a local registry receives the layers
            uri = f"{login_registry}/{uri.split('/', 1)[1]}"
        pushed.append(push_image(f"{name}-{target}:{local_tag}", uri, tag))
    return pushed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--account", help="checked against the credentials' account when given")
    parser.add_argument("--name", default="byoc-classifier", help="repository prefix (NAME-training, ...)")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--local-tag", default="latest", help="tag of the local images")
    parser.add_argument("--registry", help="push to this registry host instead of ECR's (tests)")
    args = parser.parse_args(argv)
    try:
        if args.account:
            actual = boto3.client("sts", region_name=args.region).get_caller_identity()["Account"]
            if actual != args.account:
                raise PushError(f"the credentials are for account {actual}, not {args.account}")
        for reference in push_all(args.region, args.name, args.tag, args.local_tag, args.registry):
            print(reference)
    except PushError as exc:
        sys.exit(f"error: {exc}")
    except (boto3.exceptions.Boto3Error, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        sys.exit(f"error: {exc}")  # no credentials, access denied, unknown region: one line, no traceback


if __name__ == "__main__":
    main()
