"""Batch transform with the serving image through the SageMaker Python SDK v2: a folder of images, or JSON Lines.

    # every image in a folder, one request each; the answers in OUTPUT/<image name>.out
    python -m local_mode.transform images --image byoc-classifier-serving-cpu:latest \\
        --model-data file://$PWD/build/tuned/model.tar.gz --input data/sample/test/box --output build/transform
    # JSON Lines: one request per image, then mini-batches of lines, one answer line per input line
    python -m local_mode.transform jsonl data/sample/test/*/*_00[0-4].* --out build/lines/test.jsonl
    python -m local_mode.transform lines --image byoc-classifier-serving-cpu:latest \\
        --model-data file://$PWD/build/tuned/model.tar.gz --input build/lines --output build/transform-lines

The same code runs in the cloud with an ECR image URI, ``s3://`` input, output and model data,
an ``ml.*`` instance type and a real role. See docs/batch-and-async.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from local_mode import session as local

IMAGES = "application/x-image"
JSON_LINES = "application/jsonlines"
STRATEGIES = ("MultiRecord", "SingleRecord")


def uri(location: str | Path) -> str:
    """``s3://...`` or ``file://...`` as given; a local path as an absolute ``file://`` URI."""
    text = str(location)
    return text if "://" in text else f"file://{Path(text).resolve()}"


def transformer(image_uri: str, model_data: str, output: str, instance_type: str = "local",
                role: str = local.DUMMY_ROLE, session=None, **options):  # fmt: skip
    """A ``Transformer`` for the serving image. ``options`` go to ``Model.transformer``:
    ``strategy``, ``assemble_with``, ``accept``, ``max_payload``, ``env``, ... Left unset,
    the strategy and payload size come from the container's ``/execution-parameters``."""
    from sagemaker.model import Model

    is_local = instance_type.startswith("local")
    if is_local:
        local.preflight(instance_type)
        session = session or local.local_session()
    model = Model(image_uri=image_uri, model_data=uri(model_data), role=role, sagemaker_session=session)
    return model.transformer(instance_count=1, instance_type=instance_type, output_path=uri(output), **options)


def local_folder(location: str | Path) -> Path | None:
    """The local folder of a path or ``file://`` URI; None for ``s3://``."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    return None if "://" in text else Path(text)


def serving_port(session, port: int) -> None:
    """Map a local job's container to ``port`` instead of 8080 (taken by another local endpoint)."""
    session.config = session.config | {"local": session.config["local"] | {"serving_port": port}}


def skipped_locally(data: str | Path) -> list[Path]:
    """Files in subfolders of a local input folder: SDK v2 local mode reads only the files
    directly in the folder (an S3 prefix in the cloud covers every object under it)."""
    folder = local_folder(data)
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.parent != folder)


def check_local_input(data: str | Path) -> None:
    """Say what local mode will skip; refuse a folder it would find empty."""
    folder, skipped = local_folder(data), skipped_locally(data)
    if folder is not None and folder.is_dir() and not any(p.is_file() for p in folder.iterdir()):
        raise ValueError(f"no files directly in {folder}: local mode reads only those; pass a folder of images")
    if skipped:
        print(f"note: local mode skips the {len(skipped)} file(s) in subfolders of {data}, e.g. {skipped[0]}")


def transform_images(job, data: str | Path, content_type: str = IMAGES) -> None:
    """Every file in ``data`` is one request (``SplitType=None``) of ``content_type``."""
    if getattr(job.sagemaker_session, "local_mode", False):
        check_local_input(data)
    job.transform(uri(data), content_type=content_type, split_type=None, wait=True, logs=False)


def transform_lines(job, data: str | Path) -> None:
    """JSON Lines files in ``data`` (a folder or one file), split by line and batched by the job's strategy."""
    if getattr(job.sagemaker_session, "local_mode", False):
        check_local_input(data)
    job.transform(uri(data), content_type=JSON_LINES, split_type="Line", wait=True, logs=False)


def jsonl_line(image: Path, top_k: int | None = None) -> str:
    """One JSON Lines request: ``{"instances": [{"b64": ...}]}`` (and ``top_k``)."""
    request: dict = {"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}
    if top_k is not None:
        request["top_k"] = top_k
    return json.dumps(request)


def write_jsonl(images: list[Path], out: Path, top_k: int | None = None) -> Path:
    """A JSON Lines file with one request per image, in the given order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(jsonl_line(image, top_k) + "\n" for image in images))
    return out


def read_outputs(folder: Path) -> dict[str, list[dict]]:
    """Each output file (``<input name>.out``, by path under ``folder``) → its answers, one per line."""
    return {
        str(path.relative_to(folder)): [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(folder.rglob("*.out"))
    }


def summary(answer: dict) -> str:
    """One answer line for people: the top label and probability, or the error."""
    if "error" in answer:
        return f"error {answer.get('status')}: {answer['error']}"
    return ", ".join(f"{p['label']} {p['probability']:.3f}" for p in answer["predictions"])


def report(outputs: dict[str, list[dict]]) -> int:
    """Print every answer; the number of error answers."""
    errors = 0
    for name, answers in outputs.items():
        for number, answer in enumerate(answers, 1):
            errors += "error" in answer
            print(f"{name}:{number} {summary(answer)}" if len(answers) > 1 else f"{name} {summary(answer)}")
    return errors


def run(args: argparse.Namespace) -> int:
    """Build the transformer, run the job, print the answers (local output only), clean up."""
    options = {"strategy": args.strategy, "max_payload": args.max_payload}
    if args.command == "images":
        options["strategy"] = options["strategy"] or "SingleRecord"  # see docs/batch-and-async.md
    else:
        options["assemble_with"] = "Line"
    session = None
    if args.instance_type.startswith("local") and args.port:
        session = local.local_session()
        serving_port(session, args.port)
    job = transformer(args.image, args.model_data, args.output, args.instance_type, args.role, session, **options)
    try:
        if args.command == "images":
            transform_images(job, args.input, args.content_type)
        else:
            transform_lines(job, args.input)
    finally:
        if getattr(job.sagemaker_session, "local_mode", False):
            local.cleanup(job.sagemaker_session)
    folder = local_folder(args.output)
    return report(read_outputs(folder)) if folder is not None else 0


def parser() -> argparse.ArgumentParser:
    """The command line: ``images``, ``lines`` (batch transform jobs) and ``jsonl`` (make input)."""
    main_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = main_parser.add_subparsers(dest="command", required=True)
    jsonl = commands.add_parser("jsonl", help="write a JSON Lines file: one request per image")
    jsonl.add_argument("images", nargs="+", type=Path)
    jsonl.add_argument("--out", type=Path, required=True)
    jsonl.add_argument("--top-k", type=int)
    for name, text in (("images", "transform image files"), ("lines", "transform JSON Lines files")):
        job = commands.add_parser(name, help=text)
        job.add_argument("--image", required=True, help="the serving image URI")
        job.add_argument("--model-data", required=True, help="file:// or s3:// model.tar.gz (or a local path)")
        job.add_argument("--input", required=True, help="a folder or file: local path, file:// or s3://")
        job.add_argument("--output", required=True, help="a local folder, file:// or s3://")
        job.add_argument("--instance-type", default="local")
        job.add_argument("--role", default=local.DUMMY_ROLE)
        job.add_argument("--strategy", choices=STRATEGIES, help="default: the container's (MultiRecord)")
        job.add_argument("--max-payload", type=int, help="MB per request; default: the container's")
        job.add_argument("--port", type=int, help="local mode: the host port of the container (default 8080)")
        if name == "images":
            job.add_argument("--content-type", default=IMAGES, help=f"default {IMAGES} (any image format)")
    return main_parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "jsonl":
        print(write_jsonl(args.images, args.out, args.top_k))
        return
    try:
        errors = run(args)
    except (local.PreflightError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    if errors:
        sys.exit(f"{errors} answer(s) were errors")


if __name__ == "__main__":
    main()
