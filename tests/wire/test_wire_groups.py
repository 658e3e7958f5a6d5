"""A Listener's stream groups (``_wire/groups.py``) sans I/O: ``Groups``
fed joins with explicit ``now`` values, no socket and no clock; the
connections are plain strings."""

from __future__ import annotations

import pytest

from arraywire._wire.groups import (
    DEFAULT_MAX_STREAMS,
    REMEMBER_GIVEN_UP,
    Groups,
    check_max_streams,
)
from arraywire._wire.hello import JOINED, NOT_JOINABLE, TOO_MANY_STREAMS, Group

A, B = b"a" * 16, b"b" * 16


def member(ident: bytes, index: int, size: int) -> Group:
    return Group(ident, index, size)


def test_a_group_is_whole_in_index_order_whatever_the_arrival_order() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    assert groups.join(member(A, 2, 3), "a2", now=0.0) == (JOINED, None)
    assert groups.join(member(A, 0, 3), "a0", now=1.0) == (JOINED, None)
    assert groups.next_deadline() == 10.0  # from the first stream, not the latest
    assert groups.join(member(A, 1, 3), "a1", now=2.0) == (JOINED, ["a0", "a1", "a2"])
    assert groups.next_deadline() is None
    assert groups.expired(now=1000.0) == []


def test_groups_form_side_by_side() -> None:
    groups: Groups[str] = Groups(4, timeout=5.0)
    assert groups.join(member(A, 0, 2), "a0", 0.0) == (JOINED, None)
    assert groups.join(member(B, 1, 2), "b1", 1.0) == (JOINED, None)
    assert groups.next_deadline() == 5.0
    assert groups.join(member(B, 0, 2), "b0", 2.0) == (JOINED, ["b0", "b1"])
    assert groups.next_deadline() == 5.0
    assert groups.join(member(A, 1, 2), "a1", 3.0) == (JOINED, ["a0", "a1"])


def test_a_member_that_comes_twice_is_refused_and_the_first_stays() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 0, 2), "first", 0.0)
    assert groups.join(member(A, 0, 2), "again", 1.0) == (NOT_JOINABLE, None)
    assert groups.join(member(A, 1, 2), "a1", 2.0) == (JOINED, ["first", "a1"])


def test_a_member_whose_size_differs_is_refused() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 0, 3), "a0", 0.0)
    assert groups.join(member(A, 1, 2), "other", 1.0) == (NOT_JOINABLE, None)
    assert groups.join(member(A, 1, 4), "other", 1.0) == (NOT_JOINABLE, None)
    assert groups.clear() == ["a0"]


def test_more_streams_than_max_streams_are_refused_and_not_remembered() -> None:
    groups: Groups[str] = Groups(3, timeout=10.0)
    assert groups.join(member(A, 0, 4), "a0", 0.0) == (TOO_MANY_STREAMS, None)
    assert groups.next_deadline() is None
    assert groups.join(member(B, 0, 3), "b0", 0.0) == (JOINED, None)  # the limit itself
    assert groups.max_streams == 3
    assert Groups(DEFAULT_MAX_STREAMS, 1.0).max_streams == 8


def test_a_group_not_whole_by_its_deadline_is_given_up() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 3, 4), "a3", 100.0)
    groups.join(member(A, 1, 4), "a1", 105.0)
    assert groups.expired(now=109.999) == []
    assert groups.expired(now=110.0) == ["a1", "a3"]  # in index order, the missing left out
    assert groups.next_deadline() is None
    assert groups.expired(now=111.0) == []  # given up once


def test_late_streams_of_a_given_up_group_are_refused_while_remembered() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 0, 2), "a0", 0.0)
    assert groups.expired(now=10.0) == ["a0"]
    # remembered for REMEMBER_GIVEN_UP (60 s) from when it was given up
    assert groups.join(member(A, 1, 2), "late", 11.0) == (NOT_JOINABLE, None)
    assert groups.join(member(A, 0, 2), "again", 69.0) == (NOT_JOINABLE, None)
    assert groups.expired(now=10.0 + REMEMBER_GIVEN_UP - 0.001) == []
    assert groups.join(member(A, 1, 2), "late", 69.9) == (NOT_JOINABLE, None)
    assert groups.expired(now=10.0 + REMEMBER_GIVEN_UP) == []  # forgotten now
    assert groups.join(member(A, 1, 2), "new", 71.0) == (JOINED, None)
    assert groups.next_deadline() == 81.0


def test_a_long_timeout_is_remembered_as_long() -> None:
    groups: Groups[str] = Groups(8, timeout=100.0)
    groups.join(member(A, 0, 2), "a0", 0.0)
    assert groups.expired(now=100.0) == ["a0"]
    groups.expired(now=199.0)
    assert groups.join(member(A, 1, 2), "late", 199.0) == (NOT_JOINABLE, None)
    groups.expired(now=200.0)
    assert groups.join(member(A, 1, 2), "new", 200.0) == (JOINED, None)


def test_only_the_groups_past_their_deadline_expire() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 0, 2), "a0", 0.0)
    groups.join(member(B, 0, 2), "b0", 5.0)
    assert groups.next_deadline() == 10.0
    assert groups.expired(now=12.0) == ["a0"]
    assert groups.next_deadline() == 15.0
    assert groups.join(member(B, 1, 2), "b1", 13.0) == (JOINED, ["b0", "b1"])
    assert groups.join(member(A, 1, 2), "a1", 13.0) == (NOT_JOINABLE, None)


def test_clear_gives_up_every_forming_group() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 1, 3), "a1", 0.0)
    groups.join(member(A, 0, 3), "a0", 0.0)
    groups.join(member(B, 0, 2), "b0", 1.0)
    assert groups.clear() == ["a0", "a1", "b0"]
    assert groups.next_deadline() is None
    assert groups.clear() == [] and groups.expired(now=100.0) == []


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        (0, ValueError, "max_streams must be from 1 to 65535, got 0"),
        (65536, ValueError, "max_streams must be from 1 to 65535, got 65536"),
        (True, TypeError, "max_streams must be an int, got bool"),
        (8.0, TypeError, "max_streams must be an int, got float"),
    ],
)
def test_max_streams_is_checked(value: object, error: type, says: str) -> None:
    with pytest.raises(error) as info:
        check_max_streams(value)  # type: ignore[arg-type]
    assert str(info.value) == says
    with pytest.raises(error):
        Groups(value, 10.0)  # type: ignore[arg-type]
    check_max_streams(1)
    check_max_streams(65535)


def test_a_member_of_a_group_already_whole_is_refused() -> None:
    groups: Groups[str] = Groups(8, timeout=10.0)
    groups.join(member(A, 0, 2), "a0", 0.0)
    assert groups.join(member(A, 1, 2), "a1", 1.0) == (JOINED, ["a0", "a1"])
    assert groups.join(member(A, 1, 2), "again", 2.0) == (NOT_JOINABLE, None)
