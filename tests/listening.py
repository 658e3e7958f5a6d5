"""What the blocking and the aio Listener's background tests share: the
keywords of each kind of connection and how the Listener's log reads."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

LIMIT = 30.0
KEY = b"k" * 32
LOGGER = "arraywire.listener"


def options(kind: str, tls: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The listen() and connect() keywords of a kind of connection."""
    server, client = tls
    return {
        "plain": ({}, {}),
        "key": ({"authkey": KEY}, {"authkey": KEY}),
        "tls": ({"ssl": server}, {"ssl": client, "server_hostname": "localhost"}),
    }[kind]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def peer_text(sock: socket.socket) -> str:
    """How the Listener's log names this end of a connection."""
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "an unnamed AF_UNIX peer"
