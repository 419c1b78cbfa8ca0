#!/usr/bin/env bash
# Run the whole test suite in its own environment: .venv-test with the pinned requirements
# (torch pinned on the host, never an unpinned torch). Arguments go to pytest, e.g. ./test.sh -k resume
# The Docker tests build with the settings of .env (./setup.sh wrote them), unless the environment sets them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(pwd)"
# shellcheck source=docker/lib.sh
source docker/lib.sh
export_build_settings  # BASE_IMAGE, ENV_MANAGER, STACK from .env (as ./setup.sh wrote them) unless set here

venv=".venv-test"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "test.sh: $python not found; install Python 3.8 or newer (or set PYTHON=/path/to/python3)" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "test.sh: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(cat stacks/cpu/requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
  echo "test.sh: installing requirements-dev.txt into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  echo "$want" >"$stamp"
fi
# Test files run side by side in up to 4 processes (TEST_JOBS=1: one after another); each file, and the Docker
# files together, stay in one process (tests/conftest.py). A later -n of yours wins.
jobs="${TEST_JOBS:-$(nproc)}"
if ((jobs > 4)); then jobs=4; fi
parallel=()
if ((jobs > 1)); then parallel=(-n "$jobs" --dist loadscope --no-loadscope-reorder); fi
exec "$venv/bin/python" -m pytest "${parallel[@]}" "$@"
