"""The receiver's copy of a large array as two halves at once
(_drivers/samehost.copy_halves), from this process's own memory: what it
copies, reports and says when a range fails."""

from __future__ import annotations

import errno
import os
import sys
import threading

import numpy as np
import pytest
from backends import Backend

from arraywire._drivers.samehost import copy_halves, split_ranges

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process_vm_readv is Linux's")


def ranges_of(*arrays: np.ndarray) -> list[tuple[int, int]]:
    return [(a.__array_interface__["data"][0], a.nbytes) for a in arrays]


def test_split_ranges() -> None:
    ranges = [(100, 10), (200, 5), (300, 20)]
    assert split_ranges(ranges, 0) == ([], ranges)
    assert split_ranges(ranges, 10) == ([(100, 10)], [(200, 5), (300, 20)])
    assert split_ranges(ranges, 12) == ([(100, 10), (200, 2)], [(202, 3), (300, 20)])
    assert split_ranges(ranges, 35) == (ranges, [])


def test_halves_fill_the_destination_in_order(backend: Backend) -> None:
    parts = [np.arange(n, dtype=np.float64) + n for n in (1000, 300_001, 77)]
    dest = np.zeros(sum(p.size for p in parts))
    reports: list[tuple[int, int]] = []
    moved = copy_halves(os.getpid(), ranges_of(*parts), dest.view(np.uint8), lambda *a: reports.append(a))
    assert moved == dest.nbytes
    np.testing.assert_array_equal(dest, np.concatenate(parts))
    assert reports[-1] == (dest.nbytes, dest.nbytes)
    assert all(done <= total == dest.nbytes for done, total in reports)


@pytest.mark.parametrize("half", ["first", "second"])
def test_a_failed_half_counts_the_bytes_before_the_gap(backend: Backend, half: str) -> None:
    """bytes_done counts from the start without a gap, and the helper has
    finished when the error is raised."""
    source = np.arange(1 << 16, dtype=np.float64)
    address, length = ranges_of(source)[0]
    dest = np.zeros(2 * source.size).view(np.uint8)
    ranges = [(address, length), (8, length)]  # the null page's
    if half == "first":
        ranges.reverse()
    threads = threading.active_count()
    with pytest.raises(OSError) as raised:
        copy_halves(os.getpid(), ranges, dest, None)
    assert raised.value.errno == errno.EFAULT
    assert raised.value.bytes_done == (0 if half == "first" else length)  # type: ignore[attr-defined]
    assert threading.active_count() == threads
