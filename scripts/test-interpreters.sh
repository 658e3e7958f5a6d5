#!/usr/bin/env bash
# Runs the test suite on every CPython >= 3.10 this machine has: pyenv's
# versions and the system's python3.X, each in a fresh virtual environment
# with arraywire installed from this checkout (compiled where a compiler is
# found). Interpreters that are absent are skipped; the summary names the
# ones that ran.
#
#   scripts/test-interpreters.sh                      # every interpreter found
#   scripts/test-interpreters.sh --skip 3.11.7 -q     # not that version; -q to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

skip=()
while [ "${1:-}" = "--skip" ]; do
    skip+=("$2")
    shift 2
done

candidates=()
if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/*/bin/python3)
fi
candidates+=(/usr/bin/python3.* /usr/local/bin/python3.*)

work=$(mktemp -d "${TMPDIR:-/tmp}/arraywire-interpreters.XXXXXX")
trap 'rm -rf "$work"' EXIT
seen=("${skip[@]}")
ran=()
failed=()
times=()
for python in "${candidates[@]}"; do
    [[ "$python" =~ python3(\.[0-9]+)?$ ]] && [ -x "$python" ] || continue
    version=$("$python" -c 'import platform, sys
print(platform.python_version() if sys.implementation.name == "cpython"
      and sys.version_info >= (3, 10) else "")' 2>/dev/null) || continue
    [ -n "$version" ] || continue
    [[ " ${seen[*]} " == *" $version "* ]] && continue
    seen+=("$version")
    printf '\n=== Python %s (%s)\n' "$version" "$python"
    begin=$SECONDS
    venv="$work/$version"
    if ! "$python" -m venv "$venv" \
        || ! "$venv/bin/python" -m pip install --quiet --upgrade pip \
        || ! "$venv/bin/python" -m pip install --quiet ".[test]"; then
        failed+=("$version (install)")
        continue
    fi
    installed=$SECONDS
    "$venv/bin/python" -c 'import arraywire; print("backend:", arraywire.BACKEND)'
    if "$venv/bin/python" -m pytest -p no:cacheprovider "$@"; then
        ran+=("$version")
    else
        failed+=("$version")
    fi
    times+=("$version: $((installed - begin)) s install, $((SECONDS - installed)) s suite")
done

echo
printf '%s\n' "${times[@]}"
echo "interpreters passed: ${ran[*]:-none}${skip[*]:+ (skipped: ${skip[*]})}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "interpreters failed: ${failed[*]}" >&2
    exit 1
fi
