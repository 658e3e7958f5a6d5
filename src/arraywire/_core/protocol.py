"""The contract every transfer core keeps: the compiled twin, the pure twin
and the TLS core are each a module with these members, and the drivers take
any of them as a ``Core``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from arraywire._wire.limits import Progress


class ReadAhead(Protocol):
    """A connection's read-ahead buffer (a core's ``Inbox``)."""

    @property
    def buffered(self) -> int: ...
    def fill(self) -> int: ...
    def preload(self, data: bytes) -> None: ...
    def take(self, obj: Any) -> int: ...
    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None: ...
    def take_array(self, max_bytes: int | None) -> np.ndarray | None: ...


class LayoutSender(Protocol):
    """Sends one-array messages of a learned layout (a core's ``Outbox``)."""

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None: ...
    def send(self, array: Any) -> int | None: ...
    def pack(self, array: Any, staging: bytearray) -> int: ...


class Core(Protocol):
    """A transfer core module: its sends and receives and the two buffers."""

    BACKEND: str

    def send_from(self, obj: Any, sock: Any, *, progress: Progress | None = None) -> int: ...
    def recv_into(self, obj: Any, sock: Any, *, progress: Progress | None = None) -> int: ...
    def sendmsg_from(
        self, buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
    ) -> int: ...
    def recvmsg_into(
        self, buffers: Iterable[Any], sock: Any, *, progress: Progress | None = None
    ) -> int: ...
    def Inbox(self, sock: Any) -> ReadAhead: ...  # a class, called
    def Outbox(self, sock: Any) -> LayoutSender: ...
