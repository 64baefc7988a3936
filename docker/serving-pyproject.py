"""Print the pyproject.toml of the serving images' wheel, derived from the project's.

The serving images install only ``serve/``, the stdlib-only ``common/`` it imports, and
``model_artifact.py`` (not ``train/``, ``local_mode/``, ``tuning/`` or ``ecr/``) and only the ``serve``
console script; their dependencies come from docker/requirements-serving*.txt, so the wheel declares none.

Usage: python serving-pyproject.py PROJECT/pyproject.toml > SERVING/pyproject.toml
"""

from __future__ import annotations

import json
import sys
import tomllib

MODULES, PACKAGES, SCRIPTS = ["model_artifact"], ["common", "serve"], ["serve"]
DESCRIPTION = "The serving part of {name} (serve/, common/, model_artifact.py)."


def serving_pyproject(project_toml: dict) -> str:
    project, setuptools = project_toml["project"], project_toml["tool"]["setuptools"]
    missing = [m for m in MODULES if m not in setuptools["py-modules"]]
    missing += [p for p in PACKAGES if p not in setuptools["packages"]]
    missing += [s for s in SCRIPTS if s not in project["scripts"]]
    if missing:
        raise SystemExit(f"pyproject.toml has no {missing}")
    data = {p: files for p, files in setuptools.get("package-data", {}).items() if p in PACKAGES}
    lines = [
        "[build-system]",
        f"requires = {json.dumps(project_toml['build-system']['requires'])}",
        f"build-backend = {json.dumps(project_toml['build-system']['build-backend'])}",
        "",
        "[project]",
        f"name = {json.dumps(project['name'] + '-serving')}",
        f"version = {json.dumps(project['version'])}",
        f"description = {json.dumps(DESCRIPTION.format(name=project['name']))}",
        f"requires-python = {json.dumps(project['requires-python'])}",
        "dependencies = []",
        "",
        "[project.scripts]",
        *(f"{s} = {json.dumps(project['scripts'][s])}" for s in SCRIPTS),
        "",
        "[tool.setuptools]",
        f"py-modules = {json.dumps(MODULES)}",
        f"packages = {json.dumps(PACKAGES)}",
        "",
        "[tool.setuptools.package-data]",
        *(f"{p} = {json.dumps(files)}" for p, files in data.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        sys.stdout.write(serving_pyproject(tomllib.load(f)))
