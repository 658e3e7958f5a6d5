"""The opening's same-host step, sans I/O: what an end announces, and the
probe in both directions between two Openings (docs/PROTOCOL.md, "Same host")."""

from __future__ import annotations

import pytest

from arraywire._wire import control, hello, samehost
from arraywire._wire.errors import ProtocolError
from arraywire._wire.opening import Opening, announced

BOTH = hello.CONTROL | hello.SAME_HOST


@pytest.mark.parametrize(
    ("same_host", "unix", "tls", "streams", "bits"),
    [
        (None, True, False, False, BOTH),
        (None, True, True, False, hello.CONTROL),
        (True, True, True, False, BOTH),
        (False, True, False, False, hello.CONTROL),
        (None, False, False, False, hello.CONTROL),
        (True, False, False, False, hello.CONTROL),
        (True, True, False, True, hello.CONTROL),
    ],
)
def test_announced(
    same_host: bool | None, unix: bool, tls: bool, streams: bool, bits: int
) -> None:
    assert announced(same_host, unix=unix, tls=tls, streams=streams) == bits


def test_announced_checks_the_keyword() -> None:
    with pytest.raises(TypeError, match="same_host must be None, True or False, got 1"):
        announced(1, unix=True, tls=False, streams=False)  # type: ignore[arg-type]


def exchange(a: Opening, b: Opening, answers: dict[int, int]) -> None:
    """Drive two openings against each other; each answers the other's probe
    with answers[id of the answering end] (as its driver would)."""
    ends = {id(a): (a, b), id(b): (b, a)}
    inboxes = {id(a): b"", id(b): b""}
    for _ in range(20):
        for key, (me, other) in ends.items():
            if me.probe is not None:
                me.answer_probe(answers[key])
            inboxes[id(other)] += me.outgoing()
        for key, (me, _) in ends.items():
            while me.wanted and len(inboxes[key]) >= me.wanted:
                data, inboxes[key] = inboxes[key][: me.wanted], inboxes[key][me.wanted :]
                me.received(data)
    assert not (a.wanted or b.wanted or a.probe or b.probe)


@pytest.mark.parametrize(
    ("first", "second", "on"),
    [
        (samehost.EQUAL, samehost.EQUAL, True),
        (samehost.EQUAL, samehost.KERNEL_REFUSED, False),
        (samehost.DIFFERENT, samehost.EQUAL, False),
        (samehost.NOT_VOUCHED, samehost.NOT_VOUCHED, False),
    ],
)
def test_both_ends_decide_alike(first: int, second: int, on: bool) -> None:
    a = Opening(None, connecting=True, capabilities=BOTH)
    b = Opening(None, connecting=False, capabilities=BOTH)
    exchange(a, b, {id(a): first, id(b): second})
    assert (a.same_host, b.same_host) == (on, on)
    assert a.capabilities == b.capabilities == (BOTH if on else hello.CONTROL)


def test_no_probe_when_one_end_does_not_announce() -> None:
    a = Opening(None, connecting=True, capabilities=BOTH)
    b = Opening(None, connecting=False, capabilities=hello.CONTROL)
    exchange(a, b, {})
    assert (a.same_host, b.same_host) == (False, False)
    assert a.capabilities == b.capabilities == hello.CONTROL


def test_probe_after_authentication() -> None:
    key = b"k" * 32
    a = Opening(key, connecting=True, capabilities=BOTH)
    b = Opening(key, connecting=False, capabilities=BOTH)
    exchange(a, b, {id(a): samehost.EQUAL, id(b): samehost.EQUAL})
    assert a.same_host and b.same_host


def test_probe_record_checked_before_its_body() -> None:
    opening = Opening(None, connecting=True, capabilities=BOTH)
    opening.outgoing()
    opening.received(hello.encode(capabilities=BOTH))
    assert opening.part == "same-host probe"
    assert opening.wanted == control.SIZE
    start = control.RECORD.pack(control.MAGIC, control.PROBE, 0, 43, 0)
    with pytest.raises(ProtocolError, match="probe record of 43 bytes in the opening"):
        opening.received(start)
