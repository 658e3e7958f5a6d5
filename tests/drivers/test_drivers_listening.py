"""What both Listeners share, without sockets: the handover of finished
openings in order, the bound on queued failures, the room under the cap,
close, and how a log line names a peer."""

from __future__ import annotations

import pytest

from arraywire._drivers.listening import (
    MAX_QUEUED_FAILURES,
    Handover,
    opening_late,
    peer_name,
)
from arraywire._wire.errors import AuthenticationError


def test_items_come_out_in_the_order_they_went_in() -> None:
    handover: Handover[str] = Handover(4)
    failure = AuthenticationError("wrong key")
    assert handover.put("a")
    handover.fail(failure)
    assert handover.put("b")
    assert [handover.take(), handover.take(), handover.take(), handover.take()] == [
        "a", failure, "b", None,
    ]


def test_room_counts_openings_and_waiting_channels() -> None:
    handover: Handover[str] = Handover(3)
    assert handover.room(2)
    handover.put("a")
    assert not handover.room(2)
    handover.fail(OSError("EMFILE"))  # a failure holds no connection
    assert handover.room(1)
    handover.take()
    assert handover.room(2)


def test_failures_are_bounded() -> None:
    handover: Handover[str] = Handover(1)
    for index in range(MAX_QUEUED_FAILURES + 5):
        handover.fail(AuthenticationError(str(index)))
    taken = []
    while (item := handover.take()) is not None:
        taken.append(str(item))
    assert taken == [str(i) for i in range(MAX_QUEUED_FAILURES)]
    handover.fail(AuthenticationError("again"))  # room once they were taken
    assert str(handover.take()) == "again"


def test_close_returns_the_channels_left_and_takes_no_more() -> None:
    handover: Handover[str] = Handover(4)
    handover.put("a")
    handover.fail(OSError("x"))
    handover.put("b")
    assert handover.close() == ["a", "b"]
    assert handover.closed
    assert not handover.put("c")
    handover.fail(OSError("y"))
    assert handover.take() is None


@pytest.mark.parametrize(
    ("peer", "text"),
    [
        (("127.0.0.1", 5555), "127.0.0.1:5555"),
        (("::1", 5555, 0, 0), "[::1]:5555"),
        ("", "an unnamed AF_UNIX peer"),
        ("/tmp/sock", "'/tmp/sock'"),
        (b"\0name", "b'\\x00name'"),
    ],
)
def test_peer_names(peer: object, text: str) -> None:
    assert peer_name(peer) == text


def test_the_late_opening_says_its_limit() -> None:
    assert str(opening_late(2.5)) == (
        "the peer did not complete the connection opening within 2.5 s"
    )
