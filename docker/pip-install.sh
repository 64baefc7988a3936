#!/bin/sh
# `pip install ARGS...` into the image's venv during a build, with the image's constraints
# (/tmp/deps/constraints.txt, copied by the stage). Where pip looks comes from the stage's
# build arguments: an index (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL; online) or a wheelhouse URL
# with no index (PIP_FIND_LINKS, PIP_NO_INDEX=1; offline). They are passed as options, not
# left in the environment, where an empty PIP_NO_INDEX is an invalid value for pip.
set -eu
source="--index-url ${PIP_INDEX_URL:-https://pypi.org/simple}"
if [ -n "${PIP_NO_INDEX:-}" ]; then source="--no-index"; fi
if [ -n "${PIP_FIND_LINKS:-}" ]; then source="$source --find-links $PIP_FIND_LINKS"; fi
if [ -n "${PIP_EXTRA_INDEX_URL:-}" ]; then source="$source --extra-index-url $PIP_EXTRA_INDEX_URL"; fi
# shellcheck disable=SC2086  # $source is a list of options
exec env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_NO_INDEX \
  pip install --no-cache-dir --disable-pip-version-check $source -c /tmp/deps/constraints.txt "$@"
