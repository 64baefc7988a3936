"""What ``serve`` replaces in sagemaker-inference and multi-model-server (MMS), and why.

Nothing of theirs is monkeypatched: ``serve`` calls none of the functions below; it does the
job itself (the ``instead`` module) and uses MMS's Python worker as it is; ``serve.workers``
starts it and speaks its protocol (``serve.mms``), which tests/test_mms.py checks against
MMS's own codec. MMS's Java frontend is never run, and the images do not have it.
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
        "serve.listener and serve.gateway (the only socket on the network: SageMaker's routes), "
        "serve.workers (Unix sockets in a private folder), serve.script_mode (SAGEMAKER_PROGRAM only; "
        "installs as the server's user into a private prefix)",
    ),
    Replaced(
        "sagemaker-inference", "sagemaker_inference.model_server", "_retrieve_mms_server_process",
        "finds MMS by scanning every process on the machine for its name",
        "serve.workers keeps the Popen of each worker it starts",
    ),
    Replaced(
        "sagemaker-inference", "sagemaker_inference.environment", "Environment",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT becomes MMS's default_response_timeout, which MMS counts in "
        "minutes (60 by default: an hour); SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS its seconds",
        "serve.settings.timeout_seconds reads both with the same meaning (the _SECONDS one wins); "
        "ours defaults to 60 s, SageMaker's own limit on an invocation",
    ),
    Replaced(
        "sagemaker-inference", "sagemaker_inference.environment", "DEFAULT_VMARGS",
        "-XX:-UseContainerSupport: the Java heap is sized from the host's memory, not the container's "
        "limit, and the frontend can be OOM-killed",
        "no Java: MMS's frontend is not run (SAGEMAKER_MODEL_SERVER_VMARGS is ignored)",
    ),
    Replaced(
        "multi-model-server", "mms.model_server", "start",
        "runs MMS's Java frontend (netty 4.1.91, no release since June 2023) under a wrapper process: "
        "a signal to the wrapper does not reach the frontend and its workers; the frontend adds "
        "milliseconds and four thread hand-offs to each request",
        "serve.listener (uvicorn) answers HTTP; serve.workers starts mms.model_service_worker in a "
        "process group of its own, batches requests for it and replaces it when it dies",
    ),
    Replaced(
        "multi-model-server", "mms.model_loader", "MmsModelLoader",
        "the exception of a handler class's initialize() is logged and swallowed: the worker then "
        "serves a model that never loaded",
        "serve.handler.handle is a function: MMS calls handle(None, context) to load, and a failure "
        "propagates (serve.workers reports it: a single-model server stops)",
    ),
)  # fmt: skip
