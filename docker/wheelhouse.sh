#!/usr/bin/env bash
# Resolve, download and build every wheel the images install, on the host, into one folder:
# the project with its dependencies and every docker/requirements-*.txt, resolved together
# with constraints.txt so that all images get the same versions.
# Image builds then install from that folder only (no index), which works offline and
# behind TLS-intercepting proxies. sdists with C extensions (sagemaker-training) are built
# here, where gcc is, so images need no compiler.
# Usage: docker/wheelhouse.sh [DIR]   (default build/wheelhouse)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/wheelhouse}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
requirements=()
for file in docker/requirements-*.txt; do requirements+=(-r "$file"); done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# This machine's pip configuration names local index folders that may not exist: drop those warnings.
if ! "$python" -m pip wheel -q -c constraints.txt --wheel-dir "$out" . "${requirements[@]}" >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
  exit 1
fi
grep -v "^WARNING: Location" "$log" || true
ls "$out"/sagemaker_byoc_classifier-*.whl >/dev/null
echo "wheelhouse $out: $(ls "$out" | wc -l) wheels, $(du -sh "$out" | cut -f1)"
