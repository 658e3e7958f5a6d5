#!/usr/bin/env bash
# Static checks, with the tools of the `lint` extra on PATH and arraywire
# installed: pip install '.[lint]' && scripts/lint.sh
# Every check runs even when an earlier one fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

failed=()
ruff check . || failed+=("ruff")
cython-lint src/arraywire/_core/*.pyx src/arraywire/_core/*.pxi || failed+=("cython-lint")
lint-imports || failed+=("lint-imports")  # the layers contract, in pyproject.toml
python scripts/check-structure.py src || failed+=("check-structure")
mypy || failed+=("mypy")  # strict, as set in pyproject.toml
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml \
    || failed+=("check-jsonschema")
if [ ${#failed[@]} -gt 0 ]; then
    echo "lint failed: ${failed[*]}" >&2
    exit 1
fi
