"""The framework module the sagemaker-training toolkit runs (``SAGEMAKER_TRAINING_MODULE``).

Like AWS's framework images, it starts the training program (ours, or in script mode the
user's: ``train.script_mode``) as child processes with the toolkit's SM_* environment and
``--key value`` hyperparameter arguments. Every failure reaches the toolkit as its ClientError
with a one-line reason, never as its "Framework Error" traceback. Unlike them it starts one
process per GPU (ours), corrects SM_NUM_CPUS (cgroup-aware) and SM_NUM_GPUS (without
nvidia-smi), and forwards SIGTERM/SIGINT to the children so that they can checkpoint before
SageMaker's SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from sagemaker_training import environment, errors

from common.cpus import available_cpus
from train import distributed, script_mode
from train.failure import TrainingError, internal_reason, one_line, write_failure

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 100  # SageMaker kills about 120 s after SIGTERM


def gpu_count() -> int:
    """Visible CUDA devices (honours CUDA_VISIBLE_DEVICES; 0 without a driver)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def child_environments(env: environment.Environment) -> list[dict]:
    """One environment per training process on this host."""
    gpus = gpu_count()
    per_host = max(gpus, 1)
    base = dict(os.environ) | env.to_env_vars()
    base |= {"SM_NUM_GPUS": str(gpus), "SM_NUM_CPUS": str(available_cpus()), "PYTHONUNBUFFERED": "1"}
    return [
        base | distributed.process_env(env.hosts, env.current_host, rank, per_host, env.network_interface_name)
        for rank in range(per_host)
    ]


def _forward(children: list[subprocess.Popen], received: list[int]):
    def handler(signum, _frame):
        log.warning(
            "launcher received %s: forwarding to %d training process(es)", signal.Signals(signum).name, len(children)
        )
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    return handler


def _wait(children: list[subprocess.Popen]) -> list[int]:
    """Wait for all; once one fails, stop the rest (they would hang in collectives)."""
    deadline = None
    while any(c.poll() is None for c in children):
        failed = any(c.returncode not in (None, 0) for c in children)
        if failed and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for c in children:
                if c.poll() is None:
                    c.terminate()
        if deadline and time.monotonic() > deadline:
            for c in children:
                c.kill()
        time.sleep(0.2)
    return [c.returncode for c in children]


def main() -> None:
    """Run training on this host; any failure is a one-line failure file and the toolkit's ClientError."""
    try:
        run()
    except Exception as exc:
        reason = _reason(exc)
        # The toolkit writes its failure file only into an existing output folder: without one
        # it exits 0. Ours creates it; the toolkit then keeps the first reason written.
        write_failure(Path(environment.output_dir), reason)
        raise errors.ClientError(reason) from exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, errors.ClientError | TrainingError):
        return one_line(str(exc))
    log.error("launcher crashed:\n%s", traceback.format_exc())
    return internal_reason(exc)


def run() -> None:
    """Start the training processes on this host and wait; raise ClientError if one fails.

    With a user entry point (``entry_point``/``source_dir``) it runs that script instead (``train.script_mode``).
    """
    env = environment.Environment()
    if script_mode.requested(env):
        script_mode.run(env, gpu_count())
        return
    if len(env.hosts) > 1:
        distributed.wait_for_hosts(env.hosts)
    command = [sys.executable, "-m", "train", *env.to_cmd_args()]
    children: list[subprocess.Popen] = []
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _forward(children, received))
    for child_env in child_environments(env):
        if received:  # stopped while waiting for hosts: nothing trained, nothing to save
            break
        children.append(subprocess.Popen(command, env=child_env))
    codes = _wait(children)
    if received and not children:
        raise errors.ClientError("stopped by signal before training started")
    if any(codes):
        reasons = [f"exit code {c}" if c > 0 else f"killed by {signal.Signals(-c).name}" for c in codes if c]
        raise errors.ClientError(f"training process failed ({', '.join(reasons)}); see the log")
