"""Build arraywire, compiling the transfer core where a C compiler exists.

ARRAYWIRE_NO_EXTENSIONS=1  build the pure-Python package only.
CIBUILDWHEEL=1             the extension must build (wheels never ship pure by accident).
ARRAYWIRE_SANITIZE=1       compile the extension with AddressSanitizer and UBSan.
ARRAYWIRE_DEBUG=1          compile the extension with -O0 -g3 (for valgrind and gdb).

Other builds link the extension without debug information. Windows always
gets the pure backend: the compiled core speaks POSIX sockets. A compile that
fails (outside CIBUILDWHEEL) falls back to the pure backend, and the wheel is
then tagged py3-none-any, never with a platform it holds no binary for.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


REQUIRE_EXTENSION = _flag("CIBUILDWHEEL")
SKIP_EXTENSION = _flag("ARRAYWIRE_NO_EXTENSIONS") or sys.platform == "win32" or (
    sys.implementation.name != "cpython"
)


def _extensions() -> list[Extension]:
    if SKIP_EXTENSION and not REQUIRE_EXTENSION:
        print("*** arraywire: Pure Python build (ARRAYWIRE_NO_EXTENSIONS or platform) ***")
        return []
    compile_args = ["-O2"]
    # Python's CFLAGS carry -g: keep the symbol table, drop the DWARF (-S:
    # strip debug, to GNU ld, lld and Apple's ld alike).
    link_args = ["-Wl,-S"]
    if _flag("ARRAYWIRE_DEBUG"):
        compile_args = ["-O0", "-g3"]
        link_args = []
    if _flag("ARRAYWIRE_SANITIZE"):
        sanitize = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
        ]
        compile_args = ["-O1", "-g", *sanitize]
        link_args = sanitize
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSION:
            raise
        print("*** WARNING: arraywire: Cython is missing; Pure Python build ***", file=sys.stderr)
        return []

    extension = Extension(
        "arraywire._core.transport_c",
        ["src/arraywire/_core/transport_c.pyx"],
        include_dirs=["src/arraywire/_core"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return cythonize(
        [extension],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "freethreading_compatible": True,
        },
    )


class OptionalBuildExt(build_ext):
    """Fall back to the pure backend when compiling fails, except for wheels."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "no compiler"
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        # a failure ends run() here, before an in-place build copies the missing file
        super().build_extension(ext)
        print("*** arraywire: Accelerated build (compiled transfer core) ***")

    def _fallback(self, exc: Exception) -> None:
        if REQUIRE_EXTENSION:
            raise exc
        # a distribution without extensions makes a pure wheel (PureWheelWhenNotCompiled)
        self.distribution.ext_modules = []
        print(
            "*** WARNING: arraywire could not compile its transfer core "
            f"({exc}); building the pure-Python backend (a py3-none-any wheel, "
            'arraywire.BACKEND == "python"), which re-takes the GIL after every '
            "partial send/recv. Install a C compiler and the Python headers, then "
            "reinstall, for the compiled core. ***",
            file=sys.stderr,
        )


class PureWheelWhenNotCompiled(bdist_wheel):
    """Tag the wheel by what the build made: bdist_wheel decides between a pure
    and a platform wheel before building, when a compile's failure is unknown."""

    def run_command(self, command: str) -> None:
        super().run_command(command)
        if command == "build":  # before bdist_wheel picks the install scheme and tag
            self.root_is_pure = not self.distribution.has_ext_modules()


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "bdist_wheel": PureWheelWhenNotCompiled},
)
