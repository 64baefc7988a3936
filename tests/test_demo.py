"""``make demo``'s script end to end: local-mode training, a local endpoint, 60 predictions, clean-up;
and, without Docker, what it prints (phase lines) and what it logs (everything the SDK writes)."""

from __future__ import annotations

import importlib.metadata
import io
import logging
import queue
import re
import subprocess
import sys
import threading

import pytest

from local_mode import demo, terminal
from local_mode import session as local
from tests.conftest import REPO
from tests.sdk3 import PYTHON as SDK3_PYTHON
from tests.sdk3 import containers_of, sdk3_env

MMS_LINE = re.compile(r"\[ACCESS\]|/invocations HTTP|W-9000-")  # the gateway's access line, a worker's name


@pytest.mark.slow
@pytest.mark.parametrize("sdk", ["v3", "v2"])
def test_demo_trains_deploys_classifies_and_cleans_up(images, sample_data, tmp_path, monkeypatch, capsys, sdk):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    args = ["--data", str(sample_data), "--out", str(tmp_path / "demo"), "--sdk", sdk]
    if sdk == "v2":
        demo.main(args)
        printed = capsys.readouterr().out
    else:  # SDK v3 lives in its own venv, as `make demo` runs it
        env = sdk3_env(tmp_path)
        done = subprocess.run([str(SDK3_PYTHON), "-m", "local_mode.demo", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = done.stdout
        assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("sagemaker-v3-")]
    accuracy = re.search(rf"^test accuracy (\d+)% \(chance 25%\); demo took \d+ s with SDK {sdk}$", printed, re.M)
    assert accuracy and int(accuracy[1]) >= 50, printed[-2000:]
    assert len(re.findall(r"^  (ball|box|cone|ring)/\w+_000\.\w+: \w+ \(top 2: ", printed, re.MULTILINE)) == 4
    assert (tmp_path / "demo" / "artifacts" / "model.tar.gz").is_file()
    assert (tmp_path / "demo" / "artifacts" / "output.tar.gz").is_file()
    assert not (tmp_path / "demo" / "container_root").exists()
    left = containers_of("byoc-classifier-serving-cpu:latest")
    assert not left and not local.containers(tmp_path / "demo" / "container_root")
    # One line per phase on the terminal; the containers' output in the log it names.
    for phase in ("[1/4] training in local mode ... done in", "[2/4] deploying the endpoint ... ready in",
                  "[3/4] classifying 60 test images ... done in", "[4/4] cleaning up ... done in"):  # fmt: skip
        assert f"\n{phase}" in f"\n{printed}", printed
    assert not MMS_LINE.search(printed), printed[-2000:]
    log = tmp_path / "demo" / "containers.log"
    assert re.search(r"^containers' logs: .*containers\.log$", printed, re.MULTILINE)
    logged = log.read_text()
    assert re.search(r"\bepoch=12 train_loss=", logged)  # the training container's output
    assert len(re.findall(r'"POST /invocations HTTP/1\.1" 200', logged)) >= 60  # the endpoint's


def test_the_demo_says_which_venv_runs_the_sdk_asked_for(capsys):
    installed = importlib.metadata.version("sagemaker")  # this venv's: SDK v2
    with pytest.raises(SystemExit) as exited:
        demo.main(["--sdk", "v3"])
    assert exited.value.code == f"error: --sdk v3 runs in .venv-sdk3 (make demo); this Python has sagemaker {installed}"
    assert capsys.readouterr().out == ""


# -- without Docker: the SDK, the containers and the endpoint faked ------------------------------


class FakePredictor:
    """Writes MMS-like lines to sys.stdout from a thread until deleted, as SDK v2's _HostingContainer does."""

    def __init__(self):
        self.requests = queue.Queue()
        self.thread = threading.Thread(target=self._stream)
        self.thread.start()

    def _stream(self):
        sys.stdout.write("algo-1-abcde  | 2026-01-01 W-9000-model_1.0 Model loaded\n")
        while (request := self.requests.get()) is not None:
            sys.stdout.write(f'algo-1-abcde  | [ACCESS] 172.18.0.1 "POST /invocations HTTP/1.1" 200 {request}\n')

    def delete_endpoint(self):
        self.requests.put(None)
        self.thread.join()


@pytest.fixture
def fake_sdk(tmp_path, monkeypatch):
    """demo.run's calls into local mode, replaced: training prints epoch lines, the endpoint MMS lines."""
    data = tmp_path / "data"
    for label in ("ball", "box", "cone", "ring"):
        for index in range(5):
            path = data / "test" / label / f"{label}_{index:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    state = {"cleaned": False, "fail": None}

    def fit(image, data, hyperparameters, output_path, session):
        logging.getLogger("sagemaker.local.image").info("docker command: docker-compose up")
        for epoch in range(1, int(hyperparameters["epochs"]) + 1):
            print(f"algo-1-xyz  | epoch={epoch} train_loss=0.5 val_accuracy=0.8")
        if state["fail"] == "training":
            print("algo-1-xyz  | RuntimeError: out of patience")
            raise demo.fit.TrainingFailed("RuntimeError: out of patience")
        print("algo-1-xyz  | final best_epoch=11 best_val_accuracy=0.95 test_accuracy=0.9")
        return f"file://{output_path}/model.tar.gz"

    def classify(predictor, path, top_k):
        predictor.requests.put(path.name)
        if state["fail"] == "endpoint":
            raise ConnectionError("the endpoint went away")
        label = path.parent.name if path.stem != "box_001" else "ring"
        return {"predictions": [{"label": label, "top_k": [{"label": label, "probability": 0.9}] * top_k}]}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(local, "preflight", lambda instance_type, sdk=2: None)
    monkeypatch.setattr(demo, "check_images", lambda *images: None)
    monkeypatch.setattr(local, "local_session", lambda root: object())
    monkeypatch.setattr(local, "cleanup", lambda session: state.update(cleaned=True))
    monkeypatch.setattr(demo.fit, "fit", fit)
    monkeypatch.setattr(demo.deploy, "deploy", lambda image, model_data, session: FakePredictor())
    monkeypatch.setattr(demo.deploy, "classify", classify)
    return data, state


def test_demo_prints_phases_and_predictions_and_logs_the_rest(fake_sdk, tmp_path, capsys):
    data, state = fake_sdk
    demo.main(["--data", str(data), "--out", str(tmp_path / "out"), "--sdk", "v2"])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == "[1/4] training in local mode ..."
    assert re.fullmatch(r"\[1/4\] training in local mode: epoch 4/16 \(\d+ s\)", lines[1])
    assert re.fullmatch(r"\[1/4\] training in local mode ... done in \d+ s \(best val accuracy 95%\)", lines[4])
    assert "[2/4] deploying the endpoint ..." in lines
    assert any(re.fullmatch(r"\[3/4\] classifying 20 test images: 10/20 \(\d+ s\)", line) for line in lines)
    done = r"\[3/4\] classifying 20 test images ... done in \d+ s \(accuracy 95%\)"
    assert any(re.fullmatch(done, line) for line in lines)
    assert any(re.fullmatch(r"\[4/4\] cleaning up ... done in \d+ s", line) for line in lines)
    assert re.search(r"^test accuracy 95% \(chance 25%\)", printed, re.MULTILINE)
    assert len(re.findall(r"^  (ball|box|cone|ring)/\w+_000\.\w+: \w+ \(top 2: ", printed, re.MULTILINE)) == 4
    assert lines[-1] == f"containers' logs: {tmp_path / 'out' / 'containers.log'}"
    assert "algo-1" not in printed and not MMS_LINE.search(printed)
    logged = (tmp_path / "out" / "containers.log").read_text()
    assert "epoch=12 train_loss" in logged and "W-9000-model_1.0 Model loaded" in logged
    assert len(re.findall(r'\[ACCESS\] .* "POST /invocations HTTP/1\.1" 200', logged)) == 20
    assert "sagemaker.local.image INFO - docker command: docker-compose up" in logged
    assert "===== [3/4] classifying 20 test images =====" in logged
    assert state["cleaned"]
    assert sys.stdout is not None and not isinstance(sys.stdout, terminal.LogStream)


@pytest.mark.parametrize("where", ["training", "endpoint"])
def test_a_failure_prints_the_logs_tail_and_cleans_up(fake_sdk, tmp_path, capsys, where):
    data, state = fake_sdk
    state["fail"] = where
    with pytest.raises(SystemExit) as exited:
        demo.main(
            ["--data", str(data), "--out", str(tmp_path / "out"), "--log", str(tmp_path / "demo.log"), "--sdk", "v2"]
        )
    printed = capsys.readouterr().out
    assert "Traceback" not in printed and "Traceback" not in str(exited.value.code)
    phase = "[1/4] training in local mode" if where == "training" else "[3/4] classifying 20 test images"
    assert re.search(rf"^{re.escape(phase)} ... failed after \d+ s$", printed, re.MULTILINE), printed
    assert re.search(r"^\[4/4\] cleaning up ... done in \d+ s$", printed, re.MULTILINE)
    assert f"last lines of {tmp_path / 'demo.log'}:" in printed
    tail = printed.split("last lines of", 1)[1].splitlines()[1:]
    assert 0 < len(tail) <= terminal.TAIL_LINES and all(line.startswith("  | ") for line in tail)
    message = str(exited.value.code)
    if where == "training":
        assert "  | algo-1-xyz  | RuntimeError: out of patience" in tail
        assert message.startswith("error: RuntimeError: out of patience")
    else:
        assert message.startswith("error: ConnectionError: the endpoint went away")
    assert str(tmp_path / "demo.log") in message
    logged = (tmp_path / "demo.log").read_text()
    assert "Traceback (most recent call last)" in logged
    assert state["cleaned"]


def test_a_preflight_error_is_one_line(fake_sdk, tmp_path, capsys, monkeypatch):
    data, _ = fake_sdk

    def no_docker(instance_type, sdk=2):
        raise local.PreflightError("no Docker engine answers: run docker/engine.sh (or start Docker)")

    monkeypatch.setattr(local, "preflight", no_docker)
    with pytest.raises(SystemExit) as exited:
        demo.main(["--data", str(data), "--out", str(tmp_path / "out"), "--sdk", "v2"])
    assert exited.value.code == "error: no Docker engine answers: run docker/engine.sh (or start Docker)"
    assert capsys.readouterr().out == ""


def test_a_missing_image_is_a_preflight_error(monkeypatch):
    monkeypatch.setattr(demo.subprocess, "run", lambda command, **kwargs: type("Done", (), {"returncode": 1})())
    with pytest.raises(local.PreflightError, match=r"no image byoc-x:latest here: .*make images"):
        demo.check_images("123.dkr.ecr.us-east-1.amazonaws.com/byoc-x:latest", "byoc-x:latest")


# -- the console alone ----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_console_on_a_terminal_draws_a_bar_in_place_and_redirects_everything_else(tmp_path):
    screen = Terminal()
    bound = logging.getLogger("test_demo.bound")  # a handler bound to the real stdout, like sagemaker.config's
    handler = logging.StreamHandler(sys.__stdout__)
    bound.addHandler(handler)
    try:
        with terminal.Console(tmp_path / "log.txt", phases=2, out=screen) as console:
            with console.phase(1, "working", total=4, unit="step") as phase:
                print("from print")
                print("\x1b[36malgo-1-abc |\x1b[0m from a container\r")  # compose's colours, a \r\n line
                sys.stderr.write("from stderr\n")
                bound.warning("from a bound handler")
                for _ in range(4):
                    phase.advance()
                phase.result = "all good"
                sys.stdout.write("!")  # the SDK's wait_for_endpoint: no newline
            console.print("a line of ours")
            with pytest.raises(RuntimeError), console.phase(2, "breaking"):
                raise RuntimeError("broken")
        assert handler.stream is sys.__stdout__
    finally:
        bound.removeHandler(handler)
    shown = screen.getvalue()
    assert "[1/2] working [#####...............] step 1/4" in shown
    assert "[1/2] working [####################] step 4/4" in shown
    assert "\r\x1b[K[1/2] working ... done in 0 s (all good)\n" in shown
    assert "a line of ours\n" in shown and "\r\x1b[K[2/2] breaking ... failed after 0 s\n" in shown
    assert "from" not in shown
    logged = (tmp_path / "log.txt").read_text()
    assert "from print\nalgo-1-abc | from a container\nfrom stderr\nfrom a bound handler\n" in logged
    assert "!\n===== [1/2] working: done in 0 s (all good) =====\n" in logged
