"""Script mode: the deployer's inference module (``SAGEMAKER_PROGRAM``) and how it is called.

The contract is sagemaker-inference's ``Transformer``: the module may define ``model_fn``,
``input_fn``, ``predict_fn``, ``output_fn`` (or ``transform_fn`` instead of the last three),
``pre_model_fn`` and ``model_warmup_fn``; each may take the request context as one extra last
argument. Whatever it leaves out is ours (``serve.script_defaults``). This module is only ever used
when the deployer set ``SAGEMAKER_PROGRAM``: without it, nothing in the model folder is imported.
"""

from __future__ import annotations

import importlib.util
import inspect
import site
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

# each hook and the arguments it is called with (a hook may take the context as one more)
ARGUMENTS = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4, "pre_model_fn": 1,
             "model_warmup_fn": 2}  # fmt: skip
HOOKS = tuple(ARGUMENTS)


class UserCodeError(Exception):
    """The user's module cannot be found, imported or combined with the defaults."""


@dataclass
class UserModule:
    """The functions a user module defines (absent ones are not in ``functions``)."""

    name: str
    path: Path
    functions: dict[str, Callable] = field(default_factory=dict)

    def get(self, hook: str, default: Callable | None = None) -> Callable | None:
        return self.functions.get(hook, default)

    def defines(self, hook: str) -> bool:
        return hook in self.functions


def program_path(code_dir: Path, program: str) -> Path:
    """The file ``SAGEMAKER_PROGRAM`` names in ``code_dir``: ``x.py``, ``x`` (→ ``x.py``) or a
    package ``x/``; it must stay inside ``code_dir``."""
    root = code_dir.resolve()
    for candidate in (program, f"{program}.py", f"{program}/__init__.py"):
        path = (root / candidate).resolve()
        if root not in path.parents:
            raise UserCodeError(f"SAGEMAKER_PROGRAM={program!r} is outside the code folder {code_dir}")
        if path.is_file() and path.suffix == ".py":
            return path
    raise UserCodeError(f"SAGEMAKER_PROGRAM={program!r} not found in {code_dir}")


def load(code_dir: Path, program: str, site_dir: Path | None = None) -> UserModule:
    """Import the user's module from ``code_dir`` (put first on the import path, as AWS's
    containers do, with ``site_dir`` from ``requirements.txt`` after it) and read its hooks."""
    path = program_path(code_dir, program)
    for folder in reversed([str(code_dir), *([str(site_dir)] if site_dir else [])]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    if site_dir is not None:
        site.addsitedir(str(site_dir))  # its .pth files
    name = path.parent.name if path.name == "__init__.py" else path.stem
    module = _import(name, path)
    functions = {hook: getattr(module, hook) for hook in HOOKS if callable(getattr(module, hook, None))}
    if "transform_fn" in functions and {"input_fn", "predict_fn", "output_fn"} & set(functions):
        raise UserCodeError(f"{path.name} defines transform_fn and input_fn/predict_fn/output_fn: use one or the other")
    for hook, function in functions.items():
        taken = _parameters(function)
        if taken is not None and taken not in (ARGUMENTS[hook], ARGUMENTS[hook] + 1):
            expected = f"{ARGUMENTS[hook]} (or {ARGUMENTS[hook] + 1} with the context)"
            raise UserCodeError(f"{path.name}: {hook} takes {taken} arguments, but is called with {expected}")
    return UserModule(name, path, functions)


def _parameters(function: Callable) -> int | None:
    """How many positional arguments ``function`` takes; None when it takes any number."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return len(parameters)


def _import(name: str, path: Path) -> ModuleType:
    locations = [str(path.parent)] if path.name == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def call(function: Callable, *args, context=None):
    """Call a hook as sagemaker-inference does: with ``context`` as one more argument when it
    takes one more parameter than ``args``."""
    parameters = _parameters(function)
    if parameters == len(args) + 1:
        return function(*args, context)
    return function(*args)


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """(status, one-line reason) of an exception that carries an HTTP status, such as
    sagemaker-inference's ``GenericInferenceToolkitError(404, "no such thing")``; None otherwise."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        return None
    from serve.codecs import first_line

    message = getattr(exc, "message", None) or getattr(exc, "phrase", None) or str(exc)
    return status, first_line(str(message)) or "error"
