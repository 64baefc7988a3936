"""Deploy a trained model with the serving image through the SageMaker Python SDK v2, then query it.

    python -m local_mode.deploy --image byoc-classifier-serving-cpu:latest \\
        --model-data file://$PWD/build/local-out/model.tar.gz photo1.jpg photo2.png

The same code deploys in the cloud with an ECR image URI, ``s3://`` model data, an ``ml.*``
instance type and a real role.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import threading
from pathlib import Path

from local_mode import session as local

LOCAL_CODE_LOCATION = "s3://local-mode-code-stays-local/code"  # see deploy()


def deploy(
    image_uri: str, model_data: str, instance_type: str = "local", role: str = local.DUMMY_ROLE, session=None,
    entry_point: str | None = None, source_dir: str | None = None,
):  # fmt: skip
    """Create the endpoint; returns a ``Predictor`` (JSON out, image bytes in). ``entry_point`` and
    ``source_dir``: script mode (docs/script-mode.md); in local mode the SDK repacks a ``file://``
    model.tar.gz in place, with ``source_dir`` as its ``code/``."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    is_local = instance_type.startswith("local")
    if is_local:
        local.preflight(instance_type)
    # SDK v2 asks STS for a default bucket before it packs source_dir, even when local mode keeps
    # the code local (local_code): a named location saves that call; nothing is uploaded there.
    code_location = LOCAL_CODE_LOCATION if is_local and entry_point else None
    model = Model(
        image_uri=image_uri, model_data=model_data, role=role, predictor_cls=Predictor,
        entry_point=entry_point, source_dir=source_dir, code_location=code_location,
        sagemaker_session=session or (local.local_session() if is_local else None),
    )  # fmt: skip
    predictor = model.deploy(initial_instance_count=1, instance_type=instance_type)
    predictor.deserializer = JSONDeserializer()
    return predictor


def teardown(predictor) -> None:
    """Delete the endpoint; in local mode also its stopped container and the session's folders."""
    predictor.delete_endpoint()
    if getattr(predictor.sagemaker_session, "local_mode", False):
        local.cleanup(predictor.sagemaker_session)


def _endpoint_stopped(args: threading.ExceptHookArgs) -> None:
    print(f"the local endpoint stopped: {str(args.exc_value).splitlines()[0][:200]}", file=sys.stderr)


def content_type_of(path: Path) -> str:
    """The Content-Type to send an image file with (by its name; the server checks the bytes)."""
    return mimetypes.guess_type(path.name)[0] or "application/x-image"


def classify(predictor, path: Path, top_k: int = 3) -> dict:
    """The endpoint's answer for one image file."""
    return predictor.predict(
        path.read_bytes(), initial_args={"ContentType": content_type_of(path), "CustomAttributes": f"top_k={top_k}"}
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model-data", required=True, help="file:// or s3:// model.tar.gz")
    parser.add_argument("--instance-type", default="local")
    parser.add_argument("--role", default=local.DUMMY_ROLE)
    parser.add_argument("--keep", action="store_true", help="leave the endpoint running (a local one: until Ctrl-C)")
    parser.add_argument("--entry-point", help="script mode: the inference script in --source-dir")
    parser.add_argument("--source-dir", help="script mode: the folder packed as the model's code/")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        predictor = deploy(args.image, args.model_data, args.instance_type, args.role, None, args.entry_point,
                           args.source_dir)  # fmt: skip
    except local.PreflightError as exc:
        sys.exit(f"error: {exc}")
    local_mode = getattr(predictor.sagemaker_session, "local_mode", False)
    try:
        for path in args.images:
            answer = classify(predictor, path)
            print(path, json.dumps(answer["predictions"][0] if "predictions" in answer else answer))
        if args.keep and local_mode:  # a local endpoint lives as long as this process (the SDK runs it here)
            print("the endpoint answers on http://localhost:8080 until Ctrl-C", flush=True)
            threading.excepthook = _endpoint_stopped  # Ctrl-C stops docker-compose too: one line, no traceback
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if not args.keep or local_mode:
            teardown(predictor)


if __name__ == "__main__":
    main()
