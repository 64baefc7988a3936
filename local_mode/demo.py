"""``make demo``: the whole workflow in SageMaker local mode on the embedded sample dataset.

Trains with the training image, deploys model.tar.gz with the CPU serving image, classifies
every held-out test image through the endpoint, prints predictions and accuracy, and removes
the endpoint, the containers and the temporary folders. ``make demo`` builds the images first.
With SDK v3 by default (``ModelTrainer``, then sagemaker-core's local endpoint: run in
``.venv-sdk3``), or ``--sdk v2`` (``Estimator``, ``Model.deploy``: run in ``.venv``; ``make demo SDK=v2``).

The terminal shows one line per phase (training, deploying, classifying, cleaning up) with
progress and timings, then the predictions and the accuracy; the SDK's and the containers'
output (MMS's access and worker lines included) goes to ``OUT/containers.log`` (``--log``),
and so does the traceback of a failure, whose last log lines are printed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from common.images import SAMPLE_CLASSES as CLASSES
from local_mode import deploy, deploy_v3, fit, fit_v3, terminal
from local_mode import session as local

REPO = Path(__file__).resolve().parents[1]
# ResNet18 from scratch at 64 px: learns the 4 sample classes in about a minute on 2 cores. 16
# epochs, not 12: test accuracy 0.60/0.80/0.73 over seeds 1-3 against 0.58/0.63/0.65, whose
# thread-order noise fell under tests/test_demo.py's 50% in one run of 5.
HYPERPARAMETERS = {
    "epochs": "16", "batch-size": "16", "lr": "0.005", "lr-warmup-epochs": "1", "momentum": "0.9",
    "image-size": "64", "crop-min-scale": "0.4", "pretrained": "false", "log-interval": "0",
}  # fmt: skip
PHASES = 4  # training, deploying, classifying, cleaning up
EPOCH_LINE = re.compile(r"\bepoch=(\d+) ")  # common/metrics' per-epoch line, in the containers' output
BEST_VAL = re.compile(r"\bbest_val_accuracy=([0-9.]+(?:e[+-]?[0-9]+)?)")  # its final line


def image_files(test_dir: Path) -> list[Path]:
    return sorted(p for p in test_dir.rglob("*") if p.is_file())


def classify_all(classify: Callable[[Path, int], dict], test_dir: Path, on_image: Callable[[], None] = lambda: None,
                 ) -> tuple[float, list[str]]:  # fmt: skip
    """Send every test image to the endpoint through ``classify(path, top_k)`` (``on_image()`` after
    each); returns the accuracy and one line per class."""
    files = image_files(test_dir)
    correct, shown = 0, []
    for path in files:
        prediction = classify(path, 2)["predictions"][0]
        correct += prediction["label"] == path.parent.name
        if path.stem.endswith("_000"):
            top = ", ".join(f"{t['label']} {t['probability']:.0%}" for t in prediction["top_k"])
            shown.append(f"  {path.relative_to(test_dir)}: {prediction['label']} (top 2: {top})")
        on_image()
    return correct / len(files), shown


class SdkV2:
    """The demo's steps with SDK v2: ``Estimator`` and ``Model.deploy`` in one ``LocalSession``."""

    def __init__(self, out: Path):
        self.out, self.session, self.predictor = out, None, None

    def train(self, image: str, data: Path) -> str:
        self.session = local.local_session(self.out / "container_root")
        output = f"file://{self.out / 'artifacts'}"
        return fit.fit(image, str(data), HYPERPARAMETERS, output_path=output, session=self.session)

    def deploy(self, image: str, model_data: str) -> None:
        self.predictor = deploy.deploy(image, model_data, session=self.session)

    def classify(self, path: Path, top_k: int) -> dict:
        return deploy.classify(self.predictor, path, top_k=top_k)

    def clean_up(self) -> None:
        try:
            if self.predictor is not None:
                self.predictor.delete_endpoint()
        finally:
            if self.session is not None:
                local.cleanup(self.session)


class SdkV3:
    """The demo's steps with SDK v3: ``ModelTrainer`` in local mode, then sagemaker-core's local endpoint."""

    def __init__(self, out: Path):
        self.out, self.endpoint = out, None

    def train(self, image: str, data: Path) -> str:
        return fit_v3.fit(image, str(data), HYPERPARAMETERS, output_dir=self.out / "artifacts")

    def deploy(self, image: str, model_data: str) -> None:
        self.endpoint = deploy_v3.deploy(image, model_data)

    def classify(self, path: Path, top_k: int) -> dict:
        return deploy_v3.classify(self.endpoint, path, top_k=top_k)

    def clean_up(self) -> None:
        if self.endpoint is not None:
            self.endpoint.delete()


SDKS = {"v3": SdkV3, "v2": SdkV2}


def check_sdk(sdk: str) -> None:
    """The SDK asked for must be the one this Python has (v2 and v3 live in separate venvs)."""
    installed = importlib.metadata.version("sagemaker")
    if installed.split(".")[0] != sdk.removeprefix("v"):
        venv = ".venv-sdk3 (make demo)" if sdk == "v3" else ".venv (make demo SDK=v2)"
        raise local.PreflightError(f"--sdk {sdk} runs in {venv}; this Python has sagemaker {installed}")


def check_images(*images: str) -> None:
    """An image missing here fails late and obscurely in docker-compose (a pull): say so first."""
    for image in images:
        registry = image.split("/")[0] if "/" in image else ""
        if "." in registry or ":" in registry:  # a registry's image: the SDK pulls it
            continue
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            raise local.PreflightError(f"no image {image} here: build the images with `make images`")


def training_progress(phase: terminal.Phase) -> Callable[[str], None]:
    """Reads the training container's lines: the epoch for the progress bar, the best val accuracy."""

    def on_line(line: str) -> None:
        if match := EPOCH_LINE.search(line):
            phase.update(int(match[1]))
        elif match := BEST_VAL.search(line):
            phase.result = f"best val accuracy {float(match[1]):.0%}"

    return on_line


def run(data: Path, out: Path, training_image: str, serving_image: str, console: terminal.Console,
        sdk: str = "v3") -> tuple[float, list[str]]:  # fmt: skip
    """Train, deploy, classify, tear down, a phase line each on ``console`` (entered: the SDK's
    output goes to its log); returns the test accuracy and a few predictions."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # local mode needs a region, never calls it
    local.preflight("local", sdk=int(sdk.removeprefix("v")))  # first: it says when Docker itself is missing
    check_images(training_image, serving_image)
    steps = SDKS[sdk](out)
    try:
        epochs = int(HYPERPARAMETERS["epochs"])
        with (
            console.phase(1, "training in local mode", total=epochs, unit="epoch") as phase,
            console.watch(training_progress(phase)),
        ):
            model_data = steps.train(training_image, data)
        console.log(f"model data: {model_data}")
        with console.phase(2, "deploying the endpoint", verb="ready"):
            steps.deploy(serving_image, model_data)
        count = len(image_files(data / "test"))
        with console.phase(3, f"classifying {count} test images", total=count) as phase:
            accuracy, shown = classify_all(steps.classify, data / "test", phase.advance)
            phase.result = f"accuracy {accuracy:.0%}"
        return accuracy, shown
    finally:
        with console.phase(4, "cleaning up"):  # the endpoint, the containers, the network, the folders
            steps.clean_up()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "demo-local")
    parser.add_argument("--training-image", default="byoc-classifier-training:latest")
    parser.add_argument("--serving-image", default="byoc-classifier-serving-cpu:latest")
    parser.add_argument("--log", type=Path, help="the SDK's and the containers' output (default: OUT/containers.log)")
    parser.add_argument("--sdk", choices=sorted(SDKS), default="v3", help="the SageMaker Python SDK to drive (v3)")
    args = parser.parse_args(argv)
    try:
        check_sdk(args.sdk)
    except local.PreflightError as exc:
        sys.exit(f"error: {exc}")
    if not args.data.is_dir():
        from train import sample_data  # generating needs Pillow only; the training runs in the image

        print(f"generated the sample dataset in {args.data}: {sample_data.generate(args.data)}")
    console = terminal.Console((args.log or args.out / "containers.log").resolve(), PHASES)
    started = time.monotonic()
    try:
        with console:
            accuracy, shown = run(
                args.data.resolve(), args.out.resolve(), args.training_image, args.serving_image, console, args.sdk
            )
    except Exception as exc:
        fail(exc, console)
    print("\npredictions through the local endpoint (one test image per class):", *shown, sep="\n")
    print(f"test accuracy {accuracy:.0%} (chance {1 / len(CLASSES):.0%}); demo took {time.monotonic() - started:.0f} s"
          f" with SDK {args.sdk}")  # fmt: skip
    print(f"model.tar.gz and output.tar.gz (metrics, training curve): {shown_path(args.out / 'artifacts')}")
    print(f"containers' logs: {shown_path(console.log_path)}")


def fail(exc: Exception, console: terminal.Console) -> NoReturn:
    """Exit 1 with the error and the log's last lines; the traceback is in the log, not on the terminal."""
    log = shown_path(console.log_path)
    if isinstance(exc, local.PreflightError):  # the message says what to do
        sys.exit(f"error: {exc}")
    if console.failure_tail:
        console.print(f"\nlast lines of {log}:", *(f"  | {line}" for line in console.failure_tail), sep="\n")
    reason = exc if isinstance(exc, fit.TrainingFailed) else f"{type(exc).__name__}: {exc}"
    sys.exit(f"error: {reason}\n(the whole log, with the traceback: {log})")


def shown_path(path: Path) -> Path:
    """``path`` relative to the working directory when under it."""
    path = path.resolve()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


if __name__ == "__main__":
    main()
