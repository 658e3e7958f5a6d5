"""What the blocking and the asyncio Listeners share: the connections whose
opening is done, handed to ``accept()`` in the order their openings ended,
the cap on the connections a Listener holds, and the warning logged for
each peer dropped during its opening."""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Both Listeners log here; the package gives "arraywire" a NullHandler.
LOGGER = logging.getLogger("arraywire.listener")

# Connections a Listener holds at most by default: openings under way plus
# Channels waiting for accept(). Past it, new ones wait in the kernel's backlog.
DEFAULT_MAX_OPENINGS = 64

# Failures waiting for accept() to raise them, at most: a flood of peers
# with a wrong key keeps this many.
MAX_QUEUED_FAILURES = 16

# After accepting failed for the Listener's own reason (EMFILE: out of
# descriptors, ...), it tries again this much later.
ACCEPT_PAUSE = 1.0


def check_max_openings(max_openings: int) -> None:
    """Refuse a max_openings that is not an int of at least 1."""
    if not isinstance(max_openings, int) or isinstance(max_openings, bool):
        raise TypeError(f"max_openings must be an int, got {type(max_openings).__name__}")
    if max_openings < 1:
        raise ValueError(f"max_openings must be at least 1, got {max_openings}")


def opening_late(seconds: float) -> TimeoutError:
    """Why a peer whose opening outlasted handshake_timeout is dropped."""
    return TimeoutError(f"the peer did not complete the connection opening within {seconds:g} s")


def group_late(seconds: float) -> TimeoutError:
    """Why the streams of a group not whole within handshake_timeout are dropped."""
    return TimeoutError(f"the peer did not connect every stream of its group within {seconds:g} s")


def peer_name(peer: Any) -> str:
    """A peer's address as a log line names it."""
    if isinstance(peer, tuple):
        host, port = peer[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return repr(peer) if peer else "an unnamed AF_UNIX peer"


def peer_of(sock: socket.socket) -> Any:
    """The peer address of a connection, or "" once it is gone."""
    try:
        return sock.getpeername()
    except OSError:
        return ""


def log_dropped(logger: logging.Logger, listener: Any, peer: Any, why: BaseException) -> None:
    """The one warning for a peer dropped or refused during its opening."""
    logger.warning(
        "Listener at %s dropped %s during the connection opening: %s",
        peer_name(listener), peer_name(peer), str(why),
    )


def log_accept_failed(logger: logging.Logger, listener: Any, why: OSError) -> None:
    """The warning for a connection the Listener could not take from the kernel."""
    logger.warning(
        "Listener at %s could not accept a connection (it tries again in %g s): %s",
        peer_name(listener), ACCEPT_PAUSE, str(why),
    )


class Handover(Generic[T]):
    """The Channels (T) whose opening is done and the failures for accept()
    to raise, in the order they came; the driver around it waits and locks."""

    def __init__(self, max_openings: int) -> None:
        check_max_openings(max_openings)
        self.max_openings = max_openings
        self._items: deque[T | BaseException] = deque()
        self._channels = 0
        self._failures = 0
        self.closed = False

    def room(self, in_flight: int) -> bool:
        """Whether the Listener may take another connection from the kernel,
        with in_flight openings under way."""
        return in_flight + self._channels < self.max_openings

    def put(self, channel: T) -> bool:
        """Hand over a Channel; False once closed (the caller closes it)."""
        if self.closed:
            return False
        self._items.append(channel)
        self._channels += 1
        return True

    def fail(self, exc: BaseException) -> None:
        """A failure for accept() to raise, unless too many already wait."""
        if not self.closed and self._failures < MAX_QUEUED_FAILURES:
            self._items.append(exc)
            self._failures += 1

    def take(self) -> T | BaseException | None:
        """The next Channel or failure, or None when none waits."""
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._failures -= 1
        else:
            self._channels -= 1
        return item

    def close(self) -> list[T]:
        """Take no more; return the Channels never accepted, for closing."""
        self.closed = True
        left = [item for item in self._items if not isinstance(item, BaseException)]
        self._items.clear()
        self._channels = self._failures = 0
        return left
