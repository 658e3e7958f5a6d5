"""Which backend loads, and that the compiled one did not silently go missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from backends import backend_env

import arraywire
from arraywire._core import transport, transport_py


def test_compiled_backend_loaded() -> None:
    """Fails when the extension silently did not build or import."""
    if transport.NO_EXTENSIONS or sys.platform == "win32":
        pytest.skip("the pure backend is intended (ARRAYWIRE_NO_EXTENSIONS or Windows)")
    from arraywire._core import transport_c  # an ImportError here is the failure

    assert arraywire.BACKEND == "c"
    assert arraywire.send_from is transport_c.send_from


@pytest.mark.parametrize(("name", "expected"), [("python", "python"), ("c", "c")])
def test_environment_picks_backend(name: str, expected: str) -> None:
    if expected == "c" and transport.NO_EXTENSIONS:
        pytest.skip("the compiled backend is switched off for this run")
    code = (
        "import arraywire; from arraywire._core import transport; "
        "print(arraywire.BACKEND, transport.impl.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=backend_env(name), capture_output=True, text=True,
        check=True,
    ).stdout.split()
    assert out == [expected, f"arraywire._core.transport_{'c' if expected == 'c' else 'py'}"]


def test_both_backends_export_the_same_functions() -> None:
    names = ["BACKEND", "recv_into", "recvmsg_into", "send_from", "sendmsg_from"]
    for name in names:
        assert hasattr(transport_py, name)
    if not transport.NO_EXTENSIONS:
        from arraywire._core import transport_c

        public_c = sorted(n for n in dir(transport_c) if not n.startswith("_") and n in names)
        assert public_c == names
