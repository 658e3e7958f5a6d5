#!/usr/bin/env bash
# Runs scripts/valgrind_smoke.py under valgrind memcheck against a compiled
# core built with -O0 -g3 (setup.py's ARRAYWIRE_DEBUG=1); fails on any memcheck
# error. The build happens in a copy of this tree with a virtual environment
# of its own, as in scripts/sanitize.sh. Needs valgrind.
#
#   scripts/valgrind.sh              # the log is kept as valgrind.log in $TMPDIR
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d "${TMPDIR:-/tmp}/arraywire-valgrind.XXXXXX")"
trap 'rm -rf "$work/src" "$work/venv"' EXIT
# shellcheck source=scripts/tree-copy.sh
. scripts/tree-copy.sh
ARRAYWIRE_DEBUG=1 CIBUILDWHEEL=1 "$work/venv/bin/python" -m pip install --quiet --no-cache-dir "$work/src"

log="$work/valgrind.log"
# Python's small-object allocator reads its own pools in ways memcheck cannot
# follow; with the system malloc every object is checked. Modules are compiled
# from source into an empty cache: reading the flags word of a cached .pyc makes
# CPython 3.11's int.from_bytes read an uninitialised digit (harmless there).
status=0
PYTHONMALLOC=malloc PYTHONPYCACHEPREFIX="$work/pycache" PYTHONDONTWRITEBYTECODE=1 \
    valgrind --tool=memcheck --error-exitcode=99 --leak-check=no \
    --suppressions="$work/src/scripts/valgrind.supp" \
    --track-origins=yes --num-callers=30 --log-file="$log" \
    "$work/venv/bin/python" "$work/src/scripts/valgrind_smoke.py" || status=$?
grep -E "ERROR SUMMARY|Invalid (read|write)" "$log" || true
if [ "$status" -ne 0 ]; then
    echo "valgrind.sh: memcheck reported errors (exit $status); see $log" >&2
    exit 1
fi
echo "valgrind.sh: no memcheck errors; log in $log"
