"""Run a module of ours under SDK v3 (in .venv-sdk3) with AWS's API replaced by recorded answers.

    .venv-sdk3/bin/python tests/sdk3_stub.py ANSWERS.json CALLS.json -m local_mode.deploy_v3 ARGS...

Every botocore call is checked against the service's own request shape (botocore's validator, as
a real call is), written to CALLS.json as ``[service, operation, params]``, and answered with the
next recorded answer for that operation in ANSWERS.json (``{"Operation": [answer, ...]}``; the
last one repeats). A ``Body`` answer is a streaming body. Nothing leaves the machine; the SDK's
waits do not sleep. Imports nothing from the project: it runs in the SDK v3 venv, without torch.
"""

from __future__ import annotations

import io
import json
import os
import runpy
import sys
import threading
import time

from botocore.client import BaseClient
from botocore.exceptions import ClientError, ParamValidationError
from botocore.response import StreamingBody
from botocore.validate import ParamValidator


def main() -> None:
    answers_path, calls_path, flag, module, *argv = sys.argv[1:]
    assert flag == "-m", "usage: sdk3_stub.py ANSWERS.json CALLS.json -m MODULE ARGS..."
    with open(answers_path) as f:
        answers: dict[str, list] = json.load(f)
    calls: list = []
    lock = threading.Lock()

    def make_api_call(self, operation: str, params: dict):
        model = self.meta.service_model.operation_model(operation)
        report = ParamValidator().validate(params, model.input_shape)
        if report.has_errors():
            raise ParamValidationError(report=report.generate_report())
        with lock:  # the SDK may call from several threads; the file is whole whenever the process ends
            calls.append([self.meta.service_model.service_name, operation, params])
            with open(f"{calls_path}.tmp", "w") as f:
                json.dump(calls, f, default=str)
            os.replace(f"{calls_path}.tmp", calls_path)
        queue = answers.get(operation)
        if queue is None:
            raise AssertionError(f"no recorded answer for {operation}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if "Error" in answer:
            raise ClientError(answer, operation)
        answer = dict(answer)
        if isinstance(answer.get("Body"), str):
            data = answer["Body"].encode()
            answer["Body"] = StreamingBody(io.BytesIO(data), len(data))
        return answer

    BaseClient._make_api_call = make_api_call
    time.sleep = lambda seconds: None  # the SDK's waiters poll every 5 to 30 s
    sys.argv = [module, *argv]
    sys.path[0] = os.getcwd()  # as ``python -m`` has it: the modules of the folder it runs in
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
