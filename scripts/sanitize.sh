#!/usr/bin/env bash
# Runs the test suite against a compiled core built with AddressSanitizer and
# UndefinedBehaviorSanitizer (setup.py's ARRAYWIRE_SANITIZE=1).
#
#   scripts/sanitize.sh                  # the whole suite
#   scripts/sanitize.sh -m "not slow"    # arguments go to pytest
#
# The build happens in a copy of this tree (tracked and untracked files, not
# ignored ones) with a virtual environment of its own, so this checkout's
# build/ and in-place extension are never touched. Any ASan or UBSan report
# aborts the process that hit it, so the run fails. Needs gcc or clang.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d "${TMPDIR:-/tmp}/arraywire-sanitize.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/tree-copy.sh
. scripts/tree-copy.sh
ARRAYWIRE_SANITIZE=1 CIBUILDWHEEL=1 \
    "$work/venv/bin/python" -m pip install --quiet --no-cache-dir "$work/src[test]"

extension="$("$work/venv/bin/python" -c 'import arraywire._core.transport_c as m; print(m.__file__)' \
    2>/dev/null || true)"
if [ -z "$extension" ]; then
    # importing an ASan-built module without the runtime preloaded fails: find the file
    extension="$(find "$work/venv" -name 'transport_c*.so' | head -n 1)"
fi
# not `nm | grep -q`: grep's early exit would kill nm with SIGPIPE, which
# pipefail counts as a failure once the symbol table outgrows the pipe
symbols="$(nm -D "$extension")"
if ! grep -q __asan_init <<<"$symbols"; then
    echo "sanitize.sh: $extension was not built with AddressSanitizer" >&2
    exit 1
fi

compiler="${CC:-cc}"
asan_runtime="$("$compiler" -print-file-name=libasan.so)"
# The ASan runtime must be loaded before anything else, including in the
# child processes the tests start. Python's own allocator is bypassed so ASan
# sees every object's memory; Python frees little at exit, so leak reports are
# off (tests/core/test_leaks.py covers leaks, and skips itself under ASan).
export LD_PRELOAD="$asan_runtime"
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

cd "$work/src"
"$work/venv/bin/python" -c 'import arraywire; assert arraywire.BACKEND == "c", arraywire.BACKEND'
"$work/venv/bin/python" -m pytest -p no:cacheprovider "$@"
