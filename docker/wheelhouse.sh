#!/usr/bin/env bash
# Resolve, download and build every wheel the images install, on the host, into one folder.
# Image builds then install from that folder only (no index), which works offline and
# behind TLS-intercepting proxies. sdists with C extensions (sagemaker-training) are built
# here, where gcc is, so images need no compiler.
# Usage: docker/wheelhouse.sh [DIR]   (default build/wheelhouse)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/wheelhouse}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
"$python" -m pip wheel -q -c constraints.txt --wheel-dir "$out" . 2>&1 | grep -v "^WARNING: Location" || true
ls "$out"/sagemaker_byoc_classifier-*.whl >/dev/null
echo "wheelhouse $out: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1)"
