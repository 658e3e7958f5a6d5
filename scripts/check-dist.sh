#!/usr/bin/env bash
# Packaging checks on Linux, each in a fresh virtual environment:
#   1. python -m build makes an sdist, then a wheel from that sdist; twine check
#   2. the sdist carries the .pyx and no generated .c; the wheel no C/Cython source
#   3. auditwheel show finds a manylinux policy for the wheel
#   4. the sdist builds and compiles in a venv without Cython (build isolation)
#   5. the wheel installs in a fresh venv and passes the test suite, run from a
#      copy of tests/ so that only the installed package can be imported
#   6. cibuildwheel --print-build-identifiers lists one wheel per supported
#      Python (classifiers) on each intended platform, and none for Windows
#   7. the Windows wheel (pure, as the wheels workflow makes it) is picked by
#      pip for win_amd64 only
#   8. the wheel's extension carries no debug information
#   9. a failed compile (CC=/bin/false) makes a py3-none-any wheel without a
#      compiled module, whose BACKEND is "python", and a warning in the build
#      output; with CIBUILDWHEEL=1 it fails the build
# Usage: scripts/check-dist.sh [--quick]   (--quick: step 5 imports the wheel
# instead of running the suite; .ci/run uses it, having run the suite already)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then
    quick=1
fi

python=${PYTHON:-python3}
out=build/check-dist
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out"

step() { printf '\n=== %s\n' "$*"; }
fresh_venv() {
    "$python" -m venv "$work/$1"
    "$work/$1/bin/python" -m pip install --quiet --upgrade pip
}

fresh_venv tools
"$work/tools/bin/python" -m pip install --quiet -r scripts/requirements-dist.txt
tools=$work/tools/bin

step "1. python -m build (sdist, then the wheel from the sdist)"
"$tools/python" -m build --outdir "$out" . >"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    exit 1
}
sdist=$(ls "$out"/*.tar.gz)
wheel=$(ls "$out"/*.whl)
echo "$sdist"
echo "$wheel"
"$tools/twine" check --strict "$sdist" "$wheel"

step "2. sources: the sdist has the .pyx and no .c; the wheel has neither"
"$tools/python" - "$sdist" "$wheel" <<'EOF'
import sys
import tarfile
import zipfile

sdist, wheel = sys.argv[1:]
sdist_names = tarfile.open(sdist).getnames()
wheel_names = zipfile.ZipFile(wheel).namelist()
assert any(n.endswith("/_core/transport_c.pyx") for n in sdist_names), "no .pyx in the sdist"
assert any(n.endswith("/_core/transport_c_compat.h") for n in sdist_names), "no .h in the sdist"
assert any(n.endswith("/tests/conftest.py") for n in sdist_names), "no tests in the sdist"
generated = [n for n in sdist_names if n.endswith(".c")]
assert not generated, f"generated C in the sdist: {generated}"
source = [n for n in wheel_names if n.endswith((".c", ".pyx", ".pxd", ".pxi", ".h"))]
assert not source, f"source files in the wheel: {source}"
for shipped in ("arraywire/py.typed", "arraywire/_core/transport_c.pyi"):
    assert shipped in wheel_names, f"{shipped} missing from the wheel"
assert any(n.startswith("arraywire/_core/transport_c.") and n.endswith(".so") for n in wheel_names)
print("ok:", len(sdist_names), "sdist entries,", len(wheel_names), "wheel entries")
EOF

step "3. auditwheel show"
"$tools/auditwheel" show "$wheel" | tee "$work/auditwheel.txt"
grep -Eq '"manylinux_[0-9]+_[0-9]+_[a-z0-9_]+"' "$work/auditwheel.txt"

step "4. the sdist builds in a clean venv without Cython"
fresh_venv sdist
if "$work/sdist/bin/python" -c "import Cython" 2>/dev/null; then
    echo "Cython is preinstalled in the clean venv" >&2
    exit 1
fi
"$work/sdist/bin/python" -m pip install --quiet "$sdist"
(cd "$work" && "$work/sdist/bin/python" -c "
import arraywire
assert arraywire.BACKEND == 'c', arraywire.BACKEND
print('ok: built from the sdist, BACKEND =', arraywire.BACKEND)
")
if "$work/sdist/bin/python" -c "import Cython" 2>/dev/null; then
    echo "Cython was installed into the venv, not only into the build environment" >&2
    exit 1
fi

step "5. the wheel in a fresh venv, tests run against the installed package"
fresh_venv wheel
"$work/wheel/bin/python" -m pip install --quiet "${wheel}[test]"
mkdir "$work/suite"
cp -R tests pyproject.toml README.md "$work/suite/"
(
    cd "$work/suite"
    "$work/wheel/bin/python" -c "
import arraywire, sys
assert arraywire.__file__.startswith(sys.prefix), arraywire.__file__
assert arraywire.BACKEND == 'c', arraywire.BACKEND
print('ok: imported', arraywire.__file__)
"
    if [ "$quick" = 0 ]; then
        "$work/wheel/bin/python" -m pytest -p no:cacheprovider
    fi
)

step "6. cibuildwheel --print-build-identifiers"
for platform in linux macos windows; do
    "$tools/cibuildwheel" --platform "$platform" --print-build-identifiers \
        >"$work/ids-$platform.txt"
    echo "$platform: $(tr '\n' ' ' <"$work/ids-$platform.txt")"
done
"$tools/python" - "$work" <<'EOF'
import pathlib
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

work = pathlib.Path(sys.argv[1])
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
prefix = "Programming Language :: Python :: 3."
versions = [c[len(prefix):] for c in project["classifiers"] if c.startswith(prefix)]
platforms = {
    "linux": ["manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"],
    "macos": ["macosx_x86_64", "macosx_arm64"],
    "windows": [],
}
for platform, tags in platforms.items():
    found = set((work / f"ids-{platform}.txt").read_text().split())
    expected = {f"cp3{v}-{tag}" for v in versions for tag in tags}
    assert found == expected, (platform, sorted(found ^ expected))
print("ok: Python 3." + ", 3.".join(versions), "on", sum(map(len, platforms.values())), "platforms")
EOF

step "7. the pure Windows wheel"
ARRAYWIRE_NO_EXTENSIONS=1 "$tools/python" -m pip wheel --quiet --no-deps \
    --wheel-dir "$work/windows" "$sdist"
"$tools/wheel" tags --remove --platform-tag win_amd64 "$work"/windows/*.whl
picks() {
    "$tools/python" -m pip download --quiet --no-index --no-deps --only-binary=:all: \
        --find-links "$work/windows" --platform "$1" --python-version 3.12 \
        --dest "$work/picked-$1" arraywire >/dev/null 2>&1
}
if ! picks win_amd64; then
    echo "pip does not pick the Windows wheel for win_amd64" >&2
    exit 1
fi
for platform in manylinux_2_28_x86_64 macosx_11_0_arm64; do
    if picks "$platform"; then
        echo "pip picks the pure Windows wheel for $platform" >&2
        exit 1
    fi
done
echo "ok: $(ls "$work"/windows) is picked for win_amd64 only"

step "8. the wheel's extension has no debug sections"
mkdir "$work/unpacked"
"$tools/python" -m zipfile -e "$wheel" "$work/unpacked"
extension=$(ls "$work"/unpacked/arraywire/_core/transport_c.*.so)
readelf --section-headers --wide "$extension" >"$work/sections.txt"
if grep -E ' \.z?debug_' "$work/sections.txt"; then
    echo "$(basename "$extension") carries the debug sections above" >&2
    exit 1
fi
echo "ok: $(basename "$extension"): $(stat -c %s "$extension") bytes, no .debug_* section"

step "9. a failed compile: a pure wheel, or with CIBUILDWHEEL=1 no wheel"
CC=/bin/false "$tools/python" -m pip wheel --verbose --no-deps --wheel-dir "$work/no-compiler" \
    "$sdist" >"$work/no-compiler.log" 2>&1 || {
    cat "$work/no-compiler.log"
    exit 1
}
if ! grep -q "WARNING: arraywire could not compile its transfer core" "$work/no-compiler.log"; then
    echo "the failed compile left no warning in the build output" >&2
    exit 1
fi
"$tools/python" - "$work"/no-compiler/*.whl <<'EOF'
import pathlib
import sys
import zipfile

wheel = pathlib.Path(sys.argv[1])
assert wheel.name.endswith("-py3-none-any.whl"), f"{wheel.name} is not tagged py3-none-any"
binaries = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".so", ".pyd", ".dylib"))]
assert not binaries, f"compiled modules in {wheel.name}: {binaries}"
print("ok:", wheel.name, "holds no compiled module")
EOF
"$work/wheel/bin/python" -m pip install --quiet --no-deps --target "$work/no-compiler-site" \
    "$work"/no-compiler/*.whl
(cd "$work" && PYTHONPATH="$work/no-compiler-site" "$work/wheel/bin/python" -c "
import arraywire, sys
assert arraywire.__file__.startswith(sys.argv[1]), arraywire.__file__
assert arraywire.BACKEND == 'python', arraywire.BACKEND
print('ok: installed, BACKEND =', arraywire.BACKEND)
" "$work/no-compiler-site")
if CC=/bin/false CIBUILDWHEEL=1 "$tools/python" -m pip wheel --verbose --no-deps \
    --wheel-dir "$work/no-compiler-cibw" "$sdist" >"$work/no-compiler-cibw.log" 2>&1; then
    echo "CIBUILDWHEEL=1: a failed compile still made $(ls "$work/no-compiler-cibw")" >&2
    exit 1
fi
if ! grep -Eq "error: .*/bin/false" "$work/no-compiler-cibw.log"; then
    cat "$work/no-compiler-cibw.log"
    echo "CIBUILDWHEEL=1: the build failed, but not at the compile" >&2
    exit 1
fi
echo "ok: CIBUILDWHEEL=1 makes the failed compile fail the build"

step "all packaging checks passed (artifacts in $out)"
