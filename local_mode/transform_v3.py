"""Batch transform with the serving image through the SageMaker Python SDK v3: a folder of images, or JSON Lines.

    # every image in a folder, one request each; the answers in OUTPUT/<image name>.out
    .venv-sdk3/bin/python -m local_mode.transform_v3 images --image byoc-classifier-serving-cpu:latest \\
        --model-data build/train-v3/model.tar.gz --input data/sample/test/box --output build/transform-v3
    # JSON Lines (``python -m local_mode.transform jsonl`` writes them): one answer line per input line
    .venv-sdk3/bin/python -m local_mode.transform_v3 lines --image byoc-classifier-serving-cpu:latest \\
        --model-data build/train-v3/model.tar.gz --input build/lines --output build/transform-v3-lines

The same arguments and answers as ``local_mode.transform`` (SDK v2). Locally the model is registered in
sagemaker-core's ``LocalSession`` and the job runs there; in the cloud (ECR image, ``s3://`` model data,
input and output, an ``ml.*`` instance type, ``--role``) the model is created with the v3 session's
client, the job runs through sagemaker-core's ``Transformer``, and the model is deleted afterwards.
Runs in ``.venv-sdk3``, without torch.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path

from local_mode import transform as v2
from local_mode.session import DUMMY_ROLE, PreflightError, local_model_v3, offline, preflight, remove_jobs


class Job:
    """A model registered for one transform job, and the ``Transformer`` that runs it; ``close()``
    deletes the model (and, locally, every container and folder the job left)."""

    def __init__(self, image_uri: str, model_data: str, output: str, instance_type: str, role: str, **options):
        self.name = f"byoc-classifier-transform-{time.strftime('%Y%m%d-%H%M%S')}"
        self.local, self.root = instance_type.startswith("local"), None
        if self.local:
            tarball = Path(model_data.removeprefix("file://"))
            if not tarball.is_file():
                raise ValueError(f"no model.tar.gz at {tarball} (local mode takes one from this machine's disk)")
            preflight(instance_type, sdk=3)
            self.root = Path(tempfile.mkdtemp(prefix="sagemaker-v3-transform-"))
            try:
                with offline():
                    self.session = local_model_v3(image_uri, tarball, self.name, self.root)
            except BaseException:
                remove_jobs(self.root)
                raise
        else:
            if role == DUMMY_ROLE or not model_data.startswith("s3://"):
                raise ValueError("a cloud transform needs s3:// model data and --role (an IAM role ARN)")
            from sagemaker.core.helper.session_helper import Session

            self.session = Session()
            container = {"Image": image_uri, "ModelDataUrl": model_data}
            self.session.sagemaker_client.create_model(
                ModelName=self.name, PrimaryContainer=container, ExecutionRoleArn=role
            )
        from sagemaker.core.transformer import Transformer

        self.transformer = Transformer(
            model_name=self.name, instance_count=1, instance_type=instance_type, output_path=v2.uri(output),
            sagemaker_session=self.session, **options,
        )  # fmt: skip

    def run(self, data: str, content_type: str, split_type: str | None) -> None:
        """Run the job on ``data`` (a folder or file, local or ``s3://``) to completion."""
        if self.local:
            v2.check_local_input(data)
        with offline() if self.local else contextlib.nullcontext():
            self.transformer.transform(v2.uri(data), content_type=content_type, split_type=split_type,
                                       job_name=self.name, wait=True, logs=False)  # fmt: skip

    def close(self) -> None:
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):  # already gone
            self.session.sagemaker_client.delete_model(ModelName=self.name)
        if self.root is not None:
            remove_jobs(self.root)


def run(args) -> int:
    """Run the job, print the answers (local output only), clean up; the number of error answers."""
    options = {"strategy": args.strategy, "max_payload": args.max_payload}
    if args.command == "images":
        options["strategy"] = options["strategy"] or "SingleRecord"  # see docs/batch-and-async.md
    else:
        options["assemble_with"] = "Line"
    if args.instance_type.startswith("local") and args.port:
        raise ValueError("--port: SDK v3's local transform always uses port 8080")
    job = Job(args.image, args.model_data, args.output, args.instance_type, args.role, **options)
    try:
        if args.command == "images":
            job.run(args.input, args.content_type, None)
        else:
            job.run(args.input, v2.JSON_LINES, "Line")
    finally:
        job.close()
    folder = v2.local_folder(args.output)
    return v2.report(v2.read_outputs(folder)) if folder is not None else 0


def main(argv: list[str] | None = None) -> None:
    args = v2.parser().parse_args(argv)
    if args.command == "jsonl":
        print(v2.write_jsonl(args.images, args.out, args.top_k))
        return
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        errors = run(args)
    except (PreflightError, ValueError, RuntimeError, ClientError, BotoCoreError) as exc:
        sys.exit(f"error: {str(exc).strip().splitlines()[0][:300]}")
    if errors:
        sys.exit(f"{errors} answer(s) were errors")


if __name__ == "__main__":
    main()
