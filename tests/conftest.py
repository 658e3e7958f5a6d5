"""One fixture gives every behavioural test both transport backends."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme
from backends import Backend
from faultkit import Pairs
from sockets import KINDS, connected_pair

from arraywire._core import transport, transport_py

try:
    from arraywire._core import transport_c
except ImportError:  # core/test_backends.py fails loudly unless this is intended
    transport_c = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        help="run the tests on the pure-Python backend only",
    )


def _backend_params() -> list:
    params = [pytest.param(Backend("python", transport_py), id="python")]
    if transport_c is not None and not transport.NO_EXTENSIONS:
        params.insert(
            0, pytest.param(Backend("c", transport_c), id="c", marks=pytest.mark.c_extension)
        )
    return params


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """The backend under test; shared Python layers are pointed at it too."""
    chosen: Backend = request.param
    if chosen.name == "c" and request.config.getoption("--no-c-extensions"):
        pytest.skip("--no-c-extensions")
    monkeypatch.setattr(transport, "impl", chosen.module)
    return chosen


@pytest.fixture(scope="session")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 and localhost, and
    a client context that trusts its CA."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected sockets: a socketpair, TCP loopback and AF_UNIX in turn."""
    a, b = connected_pair(request.param)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    """Connected pairs made on demand, all closed afterwards."""
    made = Pairs()
    yield made
    made.close()
