"""Compiled transport backend: twin of ``_transport_py``, with the same signatures
(tests/test_stub.py compares them)."""

from collections.abc import Iterable
from typing import Any

from arraywire._common import Progress

BACKEND: str

def send_from(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Send every byte of a contiguous buffer; return the byte count."""

def recv_into(obj: Any, sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a writable contiguous buffer completely; return the byte count."""

def sendmsg_from(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Send a sequence of buffers back to back with gather sendmsg calls."""

def recvmsg_into(buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None) -> int:
    """Fill a sequence of buffers in order with scatter recvmsg_into calls."""
