"""One fixture gives every behavioural test both transport backends."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest
from sockets import KINDS, connected_pair

from arraywire import _transport, _transport_py

try:
    from arraywire import _transport_c
except ImportError:  # test_backends.py fails loudly unless this is intended
    _transport_c = None


@dataclass(frozen=True)
class Backend:
    name: str
    module: ModuleType

    def __str__(self) -> str:
        return self.name


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        help="run the tests on the pure-Python backend only",
    )


def _backend_params() -> list:
    params = [pytest.param(Backend("python", _transport_py), id="python")]
    if _transport_c is not None and not _transport.NO_EXTENSIONS:
        params.insert(
            0, pytest.param(Backend("c", _transport_c), id="c", marks=pytest.mark.c_extension)
        )
    return params


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """The backend under test; shared Python layers are pointed at it too."""
    chosen: Backend = request.param
    if chosen.name == "c" and request.config.getoption("--no-c-extensions"):
        pytest.skip("--no-c-extensions")
    monkeypatch.setattr(_transport, "impl", chosen.module)
    return chosen


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected sockets: a socketpair, TCP loopback and AF_UNIX in turn."""
    a, b = connected_pair(request.param)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pairs() -> Iterator[object]:
    """Connected pairs made on demand (faultkit.Pairs), all closed afterwards."""
    from faultkit import Pairs  # faultkit imports this module

    made = Pairs()
    yield made
    made.close()


def backend_env(name: str) -> dict[str, str]:
    """Environment for a child process that must pick the named backend."""
    env = dict(os.environ)
    if name == "python":
        env["ARRAYWIRE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("ARRAYWIRE_NO_EXTENSIONS", None)
    return env


def load_backend(name: str) -> ModuleType:
    return importlib.import_module(f"arraywire._transport_{'c' if name == 'c' else 'py'}")
