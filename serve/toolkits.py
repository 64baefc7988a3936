"""What ``serve`` replaces in sagemaker-inference and multi-model-server (MMS), and why.

Nothing of theirs is monkeypatched: ``serve`` calls none of the functions below; it does the
job itself (the ``instead`` module) and uses MMS's Python worker (and, multi-model, its Java
frontend) as they are; ``serve.workers`` speaks the worker's protocol, which
tests/test_workers.py checks against MMS's own codec.
Each entry names the toolkit's function or setting, its defect, and where ``serve`` does the
job; all were read in the versions of ``CHECKED_AGAINST``, which constraints.txt pins.

tests/test_toolkits.py fails when the pins or the installed versions move away from
``CHECKED_AGAINST``, or when a name below disappears: read the new toolkit's version of each
entry, then update the entry and the version.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKED_AGAINST = {"sagemaker-inference": "1.10.1", "multi-model-server": "1.1.11"}


@dataclass(frozen=True)
class Replaced:
    """A toolkit function or setting that ``serve`` does not use."""

    toolkit: str  # the distribution, a key of CHECKED_AGAINST
    module: str  # its module
    name: str  # the function, class or constant in that module
    defect: str
    instead: str


REPLACED = (
    Replaced(
        "sagemaker-inference", "sagemaker_inference.model_server", "start_model_server",
        "binds MMS's management API to the serving port on every interface (anyone who reaches it can "
        "register a model from a URL, or delete ours), puts code/ on the workers' PYTHONPATH, "
        "pip-installs code/requirements.txt as root and writes /etc",
        "serve.mms (Unix sockets in a private folder), serve.gateway (the only socket on the network), "
        "serve.script_mode (SAGEMAKER_PROGRAM only; installs as the server's user into a private prefix)",
    ),
    Replaced(
        "sagemaker-inference", "sagemaker_inference.model_server", "_retrieve_mms_server_process",
        "finds MMS by scanning every process on the machine for its name",
        "serve.server keeps the Popen of the frontend it started (serve.mms.start)",
    ),
    Replaced(
        "sagemaker-inference", "sagemaker_inference.environment", "DEFAULT_VMARGS",
        "-XX:-UseContainerSupport: the Java heap is sized from the host's memory, not the container's "
        "limit, and the frontend can be OOM-killed",
        "serve.settings.JVM_ARGS (SAGEMAKER_MODEL_SERVER_VMARGS still overrides it)",
    ),
    Replaced(
        "multi-model-server", "mms.model_server", "start",
        "`multi-model-server --start` runs the Java frontend under a wrapper process: a signal to the "
        "wrapper does not reach the frontend and its workers",
        "serve.mms.command builds the wrapper's Java command (model_server_home, the mms/frontend/* "
        "class path, serve.mms.MAIN_CLASS) and serve.mms.start runs it in a process group of its own",
    ),
    Replaced(
        "multi-model-server", "mms.model_loader", "MmsModelLoader",
        "the exception of a handler class's initialize() is logged and swallowed: the worker then "
        "serves a model that never loaded",
        "serve.handler.handle is a function: MMS calls handle(None, context) to load, and a failure "
        "propagates (and stops a single-model server)",
    ),
)  # fmt: skip
