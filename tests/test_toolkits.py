"""serve.toolkits against the installed toolkits: an upgrade of sagemaker-inference or
multi-model-server fails here until each replaced function has been read again."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

from serve import mms, toolkits, workers

REPO = Path(__file__).resolve().parents[1]


def pinned(distribution: str) -> str:
    """The version constraints.txt pins (``name==version``)."""
    text = (REPO / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(distribution)}==(\S+)", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"{distribution} is not pinned in constraints.txt"
    return match.group(1)


@pytest.mark.parametrize("distribution", sorted(toolkits.CHECKED_AGAINST))
def test_the_checked_version_is_the_pinned_and_the_installed_one(distribution):
    checked = toolkits.CHECKED_AGAINST[distribution]
    assert pinned(distribution) == checked, f"constraints.txt moved {distribution}: re-read serve/toolkits.py"
    assert importlib.metadata.version(distribution) == checked


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # the toolkit's pkg_resources
@pytest.mark.parametrize("entry", toolkits.REPLACED, ids=lambda e: f"{e.module}.{e.name}")
def test_each_replaced_name_still_exists_in_the_toolkit(entry):
    assert entry.toolkit in toolkits.CHECKED_AGAINST
    assert hasattr(importlib.import_module(entry.module), entry.name), f"{entry.module}.{entry.name} is gone"


def test_mms_s_worker_takes_the_command_line_we_start_it_with(tmp_path):
    from mms.arg_parser import ArgParser

    worker = workers.Worker(0, workers.ModelFiles("m", tmp_path / "m"), tmp_path, -1, 60, 8)
    command = worker.command(tmp_path / "w.sock")
    assert command[1:4] == ["-P", "-m", "mms.model_service_worker"]
    args = ArgParser.model_service_worker_args().parse_args(command[4:])
    assert (args.sock_type, args.sock_name, args.handler) == ("unix", str(tmp_path / "w.sock"), mms.HANDLER)
    assert (args.model_name, args.preload_model, args.tmp_dir) == ("m", False, str(tmp_path))


def test_a_function_handler_load_failure_propagates_in_mms():
    from mms.model_loader import MmsModelLoader

    assert "entry_point(None, service.context)" in inspect.getsource(MmsModelLoader.load)
