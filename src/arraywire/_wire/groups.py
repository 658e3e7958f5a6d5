"""A Listener's stream groups, sans I/O: which connections of a connecting
end's parallel streams have joined, and when a group is whole.

Both Listeners (blocking and aio) keep one ``Groups``: each connection whose
hello names a group asks to ``join`` once its opening is done; the answer is
the status the Listener sends back, and the group's connections in index
order once all have come. A group not whole ``timeout`` seconds after its
first stream joined is given up (``expired``), its connections for the
Listener to close; streams that come for it later are refused.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from arraywire._wire.hello import JOINED, NOT_JOINABLE, TOO_MANY_STREAMS, Group

T = TypeVar("T")

DEFAULT_MAX_STREAMS = 8
# A given-up or whole group's late streams are refused for at least this long.
REMEMBER_GIVEN_UP = 60.0


def check_max_streams(max_streams: int) -> None:
    """Refuse a max_streams that is not an int from 1 to 65535."""
    if not isinstance(max_streams, int) or isinstance(max_streams, bool):
        raise TypeError(f"max_streams must be an int, got {type(max_streams).__name__}")
    if not 1 <= max_streams <= 0xFFFF:
        raise ValueError(f"max_streams must be from 1 to 65535, got {max_streams}")


class _Forming(Generic[T]):
    __slots__ = ("deadline", "members")

    def __init__(self, count: int, deadline: float) -> None:
        self.members: list[T | None] = [None] * count
        self.deadline = deadline


class Groups(Generic[T]):
    """The groups a Listener is forming; T is its kind of connection."""

    def __init__(self, max_streams: int, timeout: float) -> None:
        check_max_streams(max_streams)
        self.max_streams = max_streams
        self._timeout = timeout
        self._forming: dict[bytes, _Forming[T]] = {}
        # given-up groups, until their late streams can no longer come
        self._given_up: dict[bytes, float] = {}

    def join(self, group: Group, conn: T, now: float) -> tuple[int, list[T] | None]:
        """Let conn join its group: the status to answer with (conn is in
        the group only when it is JOINED), and the group's connections in
        index order when conn made it whole."""
        if group.size > self.max_streams:
            return TOO_MANY_STREAMS, None
        if group.ident in self._given_up:
            return NOT_JOINABLE, None
        forming = self._forming.get(group.ident)
        if forming is None:
            forming = self._forming[group.ident] = _Forming(group.size, now + self._timeout)
        elif len(forming.members) != group.size or forming.members[group.member] is not None:
            return NOT_JOINABLE, None
        forming.members[group.member] = conn
        if any(member is None for member in forming.members):
            return JOINED, None
        del self._forming[group.ident]
        # a member that comes again is refused, as for a given-up group
        self._given_up[group.ident] = now + max(self._timeout, REMEMBER_GIVEN_UP)
        return JOINED, forming.members  # type: ignore[return-value]

    def next_deadline(self) -> float | None:
        """When the first forming group expires (None: none is forming)."""
        return min((f.deadline for f in self._forming.values()), default=None)

    def expired(self, now: float) -> list[T]:
        """Give up the groups past their deadline; return their connections."""
        for ident in [i for i, until in self._given_up.items() if until <= now]:
            del self._given_up[ident]
        late = [ident for ident, f in self._forming.items() if f.deadline <= now]
        for ident in late:
            self._given_up[ident] = now + max(self._timeout, REMEMBER_GIVEN_UP)
        return [conn for ident in late for conn in self._take(ident)]

    def clear(self) -> list[T]:
        """Give up every forming group; return their connections."""
        return [conn for ident in list(self._forming) for conn in self._take(ident)]

    def _take(self, ident: bytes) -> list[T]:
        return [conn for conn in self._forming.pop(ident).members if conn is not None]
