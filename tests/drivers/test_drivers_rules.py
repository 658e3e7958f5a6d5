"""The Channel's rules without sockets: claims, breaks and what they say,
peer versions, and the learned layouts' limits."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, strategies as st

from arraywire import BrokenStreamError, IncompleteTransferError
from arraywire._drivers.rules import (
    AIO,
    AIO_SOCKET,
    BLOCKING,
    BLOCKING_TLS,
    ChannelRules,
    learn_message,
    learned_limit,
    learned_send,
)
from arraywire._wire.engine import STRIPE_BYTES, Receive, Transfer, plan_send, writable_bytes


def test_one_send_and_one_receive_at_a_time() -> None:
    rules = ChannelRules(BLOCKING)
    assert rules.busy == frozenset()
    rules.claim("send")
    rules.claim("receive")
    assert rules.busy == {"send", "receive"}
    with pytest.raises(RuntimeError, match=r"^another thread is in a send on this Channel$"):
        rules.claim("send")
    with pytest.raises(RuntimeError, match=r"^another thread is in a receive on this Channel$"):
        rules.claim("receive")
    rules.release("send")
    assert rules.busy == {"receive"}
    rules.claim("send")  # free again
    rules.release("send")
    rules.release("receive")
    assert rules.busy == frozenset()


def test_over_tls_a_send_and_a_receive_take_turns() -> None:
    rules = ChannelRules(BLOCKING_TLS, take_turns=True)
    rules.claim("receive")
    assert rules.busy == {"send", "receive"}
    for direction in ("send", "receive"):
        with pytest.raises(RuntimeError, match="over TLS they take turns"):
            rules.claim(direction)  # type: ignore[arg-type]
    rules.release("receive")
    rules.claim("send")
    rules.release("send")
    assert rules.busy == frozenset()


@pytest.mark.parametrize(
    ("wording", "said"),
    [
        (AIO, "another task is in a send on this Channel"),
        (AIO_SOCKET, "another arraywire.aio send is in progress on this socket"),
    ],
)
def test_each_driver_names_its_own_busy_callers(wording: Any, said: str) -> None:
    rules = ChannelRules(wording)
    rules.claim("send", "send_many")
    with pytest.raises(RuntimeError) as caught:
        rules.claim("send")
    assert str(caught.value) == said


def test_a_break_says_what_failed_and_how_far_it_got() -> None:
    rules = ChannelRules(BLOCKING)
    plan = Transfer(5000)
    plan.moved(1000)
    exc = ConnectionResetError("reset by peer")
    assert plan.fail(exc)
    assert rules.break_("send", exc, plan)
    expected = (
        "an earlier send on this Channel failed (ConnectionResetError: reset by peer) "
        "after 1,000 of 5,000 bytes of its message, so the byte stream is out of step "
        "with the peer and the Channel was closed"
    )
    assert rules.broken == expected
    with pytest.raises(BrokenStreamError) as caught:
        rules.claim("receive")
    assert str(caught.value) == f"cannot receive: {expected}"
    assert rules.busy == frozenset()  # a refused claim holds nothing


def test_without_a_transfer_the_size_comes_from_the_exception() -> None:
    rules = ChannelRules(BLOCKING)
    exc = IncompleteTransferError(300, 1_200_000)
    rules.break_("receive", exc)
    assert "failed (IncompleteTransferError: peer closed the connection after 300 of " in (
        rules.broken or ""
    )
    assert "after 300 of 1,200,000 bytes of its message" in (rules.broken or "")
    other = ChannelRules(BLOCKING)
    other.break_("send", OSError("gone"))  # neither count known
    assert "failed (OSError: gone) after 0 bytes of its message," in (other.broken or "")


def test_the_first_break_is_the_one_reported() -> None:
    rules = ChannelRules(AIO)
    first = TimeoutError("timed out")
    first.bytes_done = 10  # type: ignore[attr-defined]
    assert rules.break_("send_many", first, cancelled=False)
    assert not rules.break_("recv", ValueError("later"), cancelled=True)
    assert rules.broken is not None
    assert rules.broken.startswith("an earlier send_many on this Channel failed (TimeoutError")
    assert rules.broken.endswith("the Channel was shut down; close it")
    with pytest.raises(BrokenStreamError, match=r"^cannot recv_message: an earlier send_many"):
        rules.claim("receive", "recv_message")


def test_a_cancelled_transfer_says_so() -> None:
    """The phrases tests/test_aio.py looks for on a bare socket."""
    rules = ChannelRules(AIO_SOCKET)
    plan = Transfer(2_000_000)
    plan.moved(65_536)
    exc = BaseException()
    plan.fail(exc)
    rules.break_("send_array", exc, plan, cancelled=True)
    assert re.search(
        r"send_array on this socket was cancelled after ([\d,]+) of ([\d,]+)", rules.broken or ""
    )
    assert rules.broken == (
        "an earlier send_array on this socket was cancelled after 65,536 of 2,000,000 "
        "bytes, so its byte stream is out of step with the peer and it was shut down; "
        "close it"
    )


def test_the_transfers_offset_counts_when_the_exception_cannot_carry_it() -> None:
    rules = ChannelRules(AIO)
    plan = Transfer(100)
    plan.moved(40)
    rules.break_("recv", KeyError("k"), plan)  # no bytes_done set
    assert "after 40 of 100 bytes" in (rules.broken or "")


def test_peer_versions() -> None:
    rules = ChannelRules(BLOCKING, peer_reads=1)
    rules.check_peer_reads(1)
    with pytest.raises(ValueError, match=r"^the peer reads messages up to version 1 \(its hello"):
        rules.check_peer_reads(2)
    ChannelRules(AIO).check_peer_reads(2)


# A model of the rules: each operation's outcome, and the state after it.
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "release", "break"]),
        st.sampled_from(["send", "receive"]),
    ),
    max_size=40,
)


@given(OPERATIONS, st.booleans())
def test_the_rules_follow_their_model(operations: list[tuple[str, str]], turns: bool) -> None:
    rules = ChannelRules(BLOCKING_TLS if turns else BLOCKING, take_turns=turns)
    held: set[str] = set()
    broken = False
    for operation, direction in operations:
        if operation == "claim":
            taken = bool(held) if turns else direction in held
            if taken:
                with pytest.raises(RuntimeError):
                    rules.claim(direction)  # type: ignore[arg-type]
            elif broken:
                with pytest.raises(BrokenStreamError, match=f"^cannot {direction}: an earlier"):
                    rules.claim(direction)  # type: ignore[arg-type]
            else:
                rules.claim(direction)  # type: ignore[arg-type]
                held.add(direction)
        elif operation == "release":
            if direction in held:
                rules.release(direction)  # type: ignore[arg-type]
                held.discard(direction)
        else:
            assert rules.break_(direction, OSError("x")) is (not broken)
            broken = True
        busy = {"send", "receive"} if turns and held else held
        assert rules.busy == busy
        assert (rules.broken is not None) is broken


def test_learned_layouts_stay_on_one_stream() -> None:
    small = np.zeros(10)
    large = np.zeros(STRIPE_BYTES, np.uint8)
    assert learned_send(large, 1)
    assert learned_send(small, 4)
    assert not learned_send(large, 4)
    assert not learned_send(b"bytes", 4)
    assert learned_limit(None, 1) is None
    assert learned_limit(123, 1) == 123
    assert learned_limit(None, 2) == STRIPE_BYTES - 1
    assert learned_limit(123, 2) == 123
    assert learned_limit(STRIPE_BYTES * 2, 2) == STRIPE_BYTES - 1


class Learner:
    """An Inbox that only records what it was asked to learn."""

    def __init__(self) -> None:
        self.learned: list[tuple[Any, ...]] = []

    def learn(self, header: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> None:
        self.learned.append((header, dtype, shape, order))


def received(array: Any, *, out: Any = None, metadata: bytes | None = None) -> Receive:
    """A Receive fed a whole message's bytes."""
    wire = bytes(plan_send((array,), None, metadata).header) + array.tobytes()  # C order
    message = Receive(None, one_array=out is not None, out=out)
    at = 0
    for buffers in message.reads():
        assert isinstance(buffers, list)
        for buffer in buffers:
            view = writable_bytes(buffer)
            view[:] = wire[at : at + len(view)]
            at += len(view)
            message.moved(len(view))
    return message


def test_learn_message_learns_simple_headers_only() -> None:
    inbox = Learner()
    array = np.arange(6.0).reshape(2, 3)
    message = received(array)
    assert learn_message(inbox, message) == len(plan_send((array,)).header)
    assert inbox.learned == [(plan_send((array,)).header, array.dtype, (2, 3), "C")]
    assert learn_message(inbox, received(array, metadata=b"m")) == 0
    # datetime64 headers are never reused: the core keeps its layout, and
    # the length the aio Channel keeps must stay the core's
    assert learn_message(inbox, received(np.zeros(3, "datetime64[s]"))) == 0
    # a misfit out= is drained, not learned
    assert learn_message(inbox, received(array, out=np.empty(7))) == 0
    assert len(inbox.learned) == 1
