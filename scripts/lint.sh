#!/usr/bin/env bash
# Static checks, with the tools of the `lint` extra on PATH and arraywire
# installed: pip install '.[lint]' && scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check .
cython-lint src/arraywire/_transport_c.pyx
mypy
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
