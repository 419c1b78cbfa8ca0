#!/usr/bin/env bash
# Fill docker/wheels/ with the wheels of a requirements file for the image's Python, so that an
# ENV_MANAGER=venv build needs no package index (containers here cannot reach PyPI).
# Usage: make-wheelhouse.sh REQUIREMENTS PYTHON_VERSION   (e.g. stacks/cpu/requirements.txt 3.11)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
req="${1:?usage: make-wheelhouse.sh REQUIREMENTS PYTHON_VERSION}"
py="${2:?usage: make-wheelhouse.sh REQUIREMENTS PYTHON_VERSION}"
dest=docker/wheels
mkdir -p "$dest"
list="$(mktemp)"
trap 'rm -f "$list"' EXIT
grep -vE '^\s*(#|--)' "$req" >"$list"  # index options point at hosts CI cannot reach; pins stay
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" -r "$list"
echo "make-wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels in $dest ($(du -sh "$dest" | cut -f1))"
