"""Script mode: run the user's own training script, as AWS's PyTorch training containers do.

``Estimator(entry_point=..., source_dir=...)`` sets the hyperparameters ``sagemaker_program`` and
``sagemaker_submit_directory``; the toolkit reads them as ``Environment().user_entry_point`` and
``module_dir`` (and drops them from the user's hyperparameters). As in
aws/sagemaker-pytorch-training-toolkit's ``training.py``, the runner follows ``distribution`` and
the toolkit's ``entry_point.run`` fetches the code, installs requirements.txt and runs the script
with the SM_* environment and ``--key value`` arguments. Added here: SIGTERM/SIGINT reach the
script, pip fails fast without a network unless the user's pip configuration says otherwise, the
CPU/GPU counts are the launcher's, and every failure reason is one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sagemaker_training import entry_point, environment, errors, runner

from common.cpus import available_cpus
from train.failure import MAX_REASON, one_line, write_failure

log = logging.getLogger(__name__)
MASTER_PORT = "7777"  # what AWS's container exports
STOP_GRACE_SECONDS = 100  # torchrun's wait for its workers after SIGTERM (SageMaker kills at about 120 s)
PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"
# The distribution hyperparameters in the order AWS's training.py tests them; None: not in this image.
DISTRIBUTIONS: tuple[tuple[str, runner.RunnerType | None], ...] = (
    ("sagemaker_mpi_enabled", None),
    ("sagemaker_pytorch_ddp_enabled", None),
    ("sagemaker_torch_distributed_enabled", runner.TorchDistributedRunnerType),
    ("sagemaker_distributed_dataparallel_enabled", None),
    ("sagemaker_pytorch_xla_multi_worker_enabled", None),
)
# pip's defaults retry 5 times with a 15 s timeout: minutes per requirement on an isolated network.
PIP_DEFAULTS = {
    "timeout": ("PIP_DEFAULT_TIMEOUT", "10"),
    "retries": ("PIP_RETRIES", "1"),
    "disable-pip-version-check": ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
}


def requested(env: environment.Environment) -> bool:
    """Whether the job names a user entry point (``sagemaker_program`` or SAGEMAKER_PROGRAM)."""
    return bool(env.user_entry_point)


def runner_type(env: environment.Environment) -> runner.RunnerType:
    """The toolkit's runner for this host, picked as AWS's PyTorch container picks it."""
    if env.current_instance_group not in env.distribution_instance_groups:
        return runner.ProcessRunnerType
    for key, kind in DISTRIBUTIONS:
        if env.additional_framework_parameters.get(key):
            if kind is None:
                use = "distribution={'torch_distributed': {'enabled': True}}"
                raise errors.ClientError(f"{key} is not supported by this image: use {use}")
            return kind
    return runner.ProcessRunnerType


def script_environment(env: environment.Environment, gpus: int) -> dict[str, str]:
    """The toolkit's SM_* variables, with our CPU and GPU counts."""
    return env.to_env_vars() | {"SM_NUM_CPUS": str(available_cpus()), "SM_NUM_GPUS": str(gpus)}


def set_defaults(env: environment.Environment) -> None:
    """Export AWS's distributed settings and our pip settings where the job's environment has none.

    Into this process's environment: the toolkit installs requirements.txt before it exports the
    SM_* variables, and the script inherits them all.
    """
    defaults = {
        "MASTER_ADDR": env.master_hostname,
        "MASTER_PORT": MASTER_PORT,
        "NCCL_SOCKET_IFNAME": env.network_interface_name,
        "NCCL_IB_DISABLE": "1",
        "NCCL_DEBUG": "WARN",
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(STOP_GRACE_SECONDS),
        "PIP_LOG": str(Path(tempfile.gettempdir(), f"sagemaker-pip-{os.getpid()}.log")),
    } | pip_defaults()
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def pip_defaults() -> dict[str, str]:
    """Fail-fast pip settings for the keys that the user's pip configuration (files, PIP_*) leaves unset."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout  # lines like "global.timeout='60'" or ":env:.retries='3'"
    keys = {line.partition("=")[0].rpartition(".")[2] for line in listed.splitlines()}
    keys = {"timeout" if key == "default-timeout" else key for key in keys}
    return {name: value for key, (name, value) in PIP_DEFAULTS.items() if key not in keys}


def run(env: environment.Environment, gpus: int) -> None:
    """Run the user's entry point on this host; raise the toolkit's ClientError with a one-line reason."""
    kind = runner_type(env)
    processes = env.additional_framework_parameters.get(PROCESSES_PER_HOST) or max(gpus, 1)
    variables = script_environment(env, gpus)
    set_defaults(env)
    log.info("script mode: running %s from %s with the %s runner", env.user_entry_point, env.module_dir, kind.value)
    with forwarding_signals() as received:
        try:
            entry_point.run(
                uri=env.module_dir, user_entry_point=env.user_entry_point, args=env.to_cmd_args(),
                env_vars=variables, capture_error=True, runner_type=kind,
                extra_opts={PROCESSES_PER_HOST: processes},
            )  # fmt: skip
        except errors.ClientError as exc:
            raise errors.ClientError(failure_reason(exc, received)) from exc


def failure_reason(exc: errors.ClientError, received: list[int]) -> str:
    """The job's one-line failure reason for a ClientError from ``entry_point.run``."""
    if isinstance(exc, errors.InstallRequirementsError | errors.InstallModuleError):
        reason = install_reason(exc)
    elif hasattr(exc, "return_code"):  # the script (or torchrun) failed
        reason = script_reason(exc)
    else:  # a bad entry point name, a package entry point under torchrun...
        reason = one_line(str(exc))
    return f"stopped by {signal.Signals(received[0]).name}: {reason}" if received else reason


def script_reason(exc: errors.ClientError) -> str:
    """The toolkit's message for a failed script (what AWS's containers write) on one line.

    Its ErrorMessage (the script's stderr from the first error name on) keeps its end: that is
    where the exception is.
    """
    output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
    extra = f' ExtraInfo "{exc.extra_info}"' if exc.extra_info else ""
    command = exc.cmd if len(exc.cmd) <= 300 else exc.cmd[:297] + "..."
    head, tail = f"{type(exc).__name__}: ExitCode {exc.return_code} ErrorMessage ", f'{extra} Command "{command}"'
    message, room = one_line(output), MAX_REASON - len(head) - len(tail) - 2
    if len(message) > room:
        message = "..." + message[-(room - 3) :]
    return f'{head}"{message}"{tail}'


def install_reason(exc: errors.ClientError) -> str:
    """One line for a failed ``pip install``: pip's last ERROR line (from its log), not its wall of text."""
    what = "requirements.txt" if isinstance(exc, errors.InstallRequirementsError) else "the source directory"
    path = Path(os.environ.get("PIP_LOG", os.devnull))
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    found = [m.group(1) for line in lines if (m := re.search(r"\bERROR: (.+)", line))]
    detail = found[-1].strip() if found else "see the log"
    offline = any("Could not fetch URL" in line for line in lines)
    hint = " (the package index could not be reached: no network?)" if offline else ""
    return one_line(f"{what} could not be installed (pip exit code {exc.return_code}): {detail}{hint}")


def child_pids() -> list[int]:
    """This process's children (the script, torchrun or pip), from /proc."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == me:
                found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def forwarding_signals() -> Iterator[list[int]]:
    """Pass SIGTERM/SIGINT on to the children while the script runs (the toolkit does not: issues #125, #173).

    A signal before any child exists stops the job at once: there is nothing to save yet.
    """
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        name, children = signal.Signals(signum).name, child_pids()
        log.warning("script mode received %s: forwarding to %s", name, children or "no process yet")
        if not children:
            write_failure(Path(environment.output_dir), f"stopped by {name} before the training script started")
            sys.stdout.flush()
            os._exit(1)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    saved = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
