"""Deploy a model with the serving image through the SageMaker Python SDK v3, then classify image files.

    .venv-sdk3/bin/python -m local_mode.deploy_v3 --image byoc-classifier-serving-cpu:latest \\
        --model-data build/train-v3/model.tar.gz photo1.jpg photo2.png

Locally (``--instance-type local`` or ``local_gpu``, a model.tar.gz on disk) through sagemaker-core's
``LocalSession`` (create_model, create_endpoint_config, create_endpoint: v2's local mode, ported to v3);
v3's ``ModelBuilder`` cannot start a custom image in ``Mode.LOCAL_CONTAINER`` (docs/local-mode.md says
why). In the cloud (an ``ml.*`` instance type, ``s3://`` model data, ``--role``, the image in ECR)
through ``ModelBuilder(image_uri=..., s3_model_data_url=..., mode=Mode.SAGEMAKER_ENDPOINT)``.
Runs in ``.venv-sdk3`` (``make venv-sdk3``), which has no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from local_mode.deploy import content_type_of
from local_mode.session import PreflightError, local_model_v3, offline, preflight, remove_jobs


class EndpointError(Exception):
    """The endpoint answered with an error; the message is its status and one-line reason."""


def _reason(status: int, body: bytes) -> str:
    """``STATUS: reason`` from an error answer (ours: ``{"error": reason, "status": STATUS}``)."""
    try:
        answer = json.loads(body)
        message = str(answer.get("error") or answer.get("message") or "")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    return f"{status}: {(message.strip().splitlines() or [''])[0][:300]}"


DELETES = (("delete_endpoint", "EndpointName"), ("delete_endpoint_config", "EndpointConfigName"),
           ("delete_model", "ModelName"))  # fmt: skip


class LocalEndpoint:
    """An endpoint of the serving image on this machine's Docker, through sagemaker-core's local mode."""

    def __init__(self, image_uri: str, model_tarball: Path, instance_type: str, name: str):
        preflight(instance_type, sdk=3)
        self.root = Path(tempfile.mkdtemp(prefix="sagemaker-v3-endpoint-"))
        self.name, self.session = name, None
        variant = {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                   "InstanceType": instance_type}  # fmt: skip
        with offline():
            try:
                self.session = local_model_v3(image_uri, model_tarball, name, self.root)
                client = self.session.sagemaker_client
                client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
                client.create_endpoint(EndpointName=name, EndpointConfigName=name)  # waits for /ping
            except BaseException:
                self.delete()
                raise

    def invoke(self, body: bytes, content_type: str, custom_attributes: str = "") -> dict:
        """The endpoint's JSON answer; a 4xx or 5xx raises ``EndpointError`` with its reason."""
        extra = {"CustomAttributes": custom_attributes} if custom_attributes else {}
        answer = self.session.sagemaker_runtime_client.invoke_endpoint(
            EndpointName=self.name, Body=body, ContentType=content_type, Accept="application/json", **extra
        )
        status, data = answer["ResponseMetadata"]["HTTPStatusCode"], answer["Body"].read()
        if status >= 400:
            raise EndpointError(_reason(status, data))
        return json.loads(data)

    def delete(self) -> None:
        """Stop the container and remove the endpoint, its config, the model and every local folder."""
        for call, key in DELETES if self.session else ():
            with contextlib.suppress(Exception):  # not created, or already gone: the rest still goes
                getattr(self.session.sagemaker_client, call)(**{key: self.name})
        remove_jobs(self.root)


class CloudEndpoint:
    """A real-time SageMaker endpoint of the serving image (in ECR), through v3's ``ModelBuilder``."""

    def __init__(self, image_uri: str, model_data: str, instance_type: str, role: str, name: str):
        from sagemaker.serve import ModelBuilder
        from sagemaker.serve.mode.function_pointers import Mode

        self.name = name
        builder = ModelBuilder(
            image_uri=image_uri, s3_model_data_url=model_data, role_arn=role, instance_type=instance_type,
            mode=Mode.SAGEMAKER_ENDPOINT, dependencies={"auto": False},
        )  # fmt: skip
        self.client = builder.sagemaker_session.sagemaker_client
        try:
            builder.build(model_name=name)
            self.endpoint = builder.deploy(endpoint_name=name, initial_instance_count=1, wait=True)
        except BaseException:
            self.delete()  # what was created before the failure
            raise

    def invoke(self, body: bytes, content_type: str, custom_attributes: str = "") -> dict:
        """The endpoint's JSON answer; a 4xx or 5xx raises ``EndpointError`` with its reason."""
        from botocore.exceptions import ClientError

        extra = {"custom_attributes": custom_attributes} if custom_attributes else {}
        try:
            answer = self.endpoint.invoke(body=body, content_type=content_type, accept="application/json", **extra)
        except ClientError as exc:  # the container's own answer is quoted in the message
            status = exc.response.get("OriginalStatusCode") or exc.response["ResponseMetadata"]["HTTPStatusCode"]
            raise EndpointError(f"{status}: {exc.response.get('Error', {}).get('Message', '')[:300]}") from exc
        data = answer.body.read() if hasattr(answer.body, "read") else answer.body
        return json.loads(data)

    def delete(self) -> None:
        """Delete the endpoint, its endpoint config (ModelBuilder names it after the endpoint) and the model."""
        from botocore.exceptions import ClientError

        for call, key in DELETES:
            with contextlib.suppress(ClientError):  # not created, or already gone: the rest still goes
                getattr(self.client, call)(**{key: self.name})


def deploy(image_uri: str, model_data: str, instance_type: str = "local", role: str | None = None,
           name: str | None = None):  # fmt: skip
    """A ``LocalEndpoint`` for a local instance type, else a ``CloudEndpoint``; ``name`` (of the endpoint,
    its config and the model) defaults to byoc-classifier-DATE-TIME."""
    name = name or f"byoc-classifier-{time.strftime('%Y%m%d-%H%M%S')}"
    if instance_type.startswith("local"):
        path = Path(model_data.removeprefix("file://"))
        if not path.is_file():
            raise PreflightError(f"no model.tar.gz at {path} (local mode takes one from this machine's disk)")
        return LocalEndpoint(image_uri, path, instance_type, name)
    if not (model_data.startswith("s3://") and role):
        raise PreflightError("a cloud endpoint needs s3:// model data and --role (an IAM role ARN for SageMaker)")
    return CloudEndpoint(image_uri, model_data, instance_type, role, name)


def classify(endpoint, path: Path, top_k: int = 3) -> dict:
    """The endpoint's answer for one image file."""
    return endpoint.invoke(path.read_bytes(), content_type_of(path), f"top_k={top_k}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model-data", required=True, help="a model.tar.gz on disk (local) or s3:// (cloud)")
    parser.add_argument("--instance-type", default="local", help="local, local_gpu or ml.* (e.g. ml.c6i.large)")
    parser.add_argument("--role", help="cloud: the IAM role ARN the endpoint runs as")
    parser.add_argument("--name", help="the endpoint's name (also its config's and model's)")
    parser.add_argument("--keep", action="store_true", help="leave the endpoint running (a local one: until Ctrl-C)")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        endpoint = deploy(args.image, args.model_data, args.instance_type, args.role, args.name)
    except (PreflightError, ClientError, BotoCoreError, RuntimeError) as exc:  # RuntimeError: local mode's
        sys.exit(f"error: {str(exc).strip().splitlines()[0][:300]}")
    local = isinstance(endpoint, LocalEndpoint)
    failed = False
    try:
        for path in args.images:
            try:
                answer = classify(endpoint, path)
            except EndpointError as exc:
                sys.stderr.write(f"{path} error {exc}\n")
                failed = True
                continue
            shown = json.dumps(answer["predictions"][0] if "predictions" in answer else answer)
            sys.stdout.write(f"{path} {shown}\n")  # one write: the container's output shares this stdout
            sys.stdout.flush()
        if args.keep and local:  # a local endpoint lives as long as this process
            print("the endpoint answers on http://localhost:8080 until Ctrl-C", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if not args.keep or local:
            endpoint.delete()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
