"""copy_from_process: one copy out of another process's memory, on both
backends, from a real child process that holds known arrays."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from backends import Backend

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process_vm_readv is Linux's")

# The child makes each array, prints its address, and keeps it until stdin closes.
HOLDER = """
import sys
import numpy as np
arrays = {
    "big": np.arange(3_000_000, dtype=np.float64),
    "grid": np.arange(600, dtype=np.int32).reshape(20, 30),
}
for name, array in arrays.items():
    print(name, array.__array_interface__["data"][0], flush=True)
sys.stdin.read()
"""


class Holder:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.address = {}
        for _ in range(2):
            name, address = self.proc.stdout.readline().split()
            self.address[name] = int(address)
        self.pid = self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def holder() -> Iterator[Holder]:
    held = Holder()
    yield held
    held.close()


def test_copies_a_whole_array(backend: Backend, holder: Holder) -> None:
    out = np.empty(3_000_000, np.float64)
    nbytes = out.nbytes
    assert backend.module.copy_from_process(holder.pid, [(holder.address["big"], nbytes)], out) == nbytes
    np.testing.assert_array_equal(out, np.arange(3_000_000, dtype=np.float64))


def test_ranges_fill_the_buffer_in_order(backend: Backend, holder: Holder) -> None:
    # column 7 of the child's 20 x 30 int32 grid: one 4-byte range per row,
    # and the rows in reverse, so order and batching both show
    base = holder.address["grid"]
    ranges = [(base + (row * 30 + 7) * 4, 4) for row in reversed(range(20))]
    out = np.empty(20, np.int32)
    assert backend.module.copy_from_process(holder.pid, ranges, out) == 80
    np.testing.assert_array_equal(out, np.arange(600).reshape(20, 30)[::-1, 7])


def test_more_ranges_than_one_call_takes(backend: Backend, holder: Holder) -> None:
    # 3,000 ranges of 8 bytes (every other float64): past IOV_MAX, so three calls
    base = holder.address["big"]
    ranges = [(base + 16 * i, 8) for i in range(3000)]
    out = np.empty(3000, np.float64)
    backend.module.copy_from_process(holder.pid, ranges, out)
    np.testing.assert_array_equal(out, np.arange(0, 6000, 2, dtype=np.float64))


def test_empty_ranges_and_an_empty_buffer(backend: Backend, holder: Holder) -> None:
    reports: list[tuple[int, int]] = []
    assert backend.module.copy_from_process(
        holder.pid, [(holder.address["big"], 0)], bytearray(), progress=lambda *a: reports.append(a)
    ) == 0
    assert reports == [(0, 0)]
    out = bytearray(16)
    base = holder.address["big"]
    backend.module.copy_from_process(holder.pid, [(base, 8), (base, 0), (base + 8, 8)], out)
    assert np.frombuffer(out, np.float64).tolist() == [0.0, 1.0]


def test_progress_ends_with_the_total(backend: Backend, holder: Holder) -> None:
    reports: list[tuple[int, int]] = []
    out = np.empty(3_000_000, np.float64)
    backend.module.copy_from_process(
        holder.pid, [(holder.address["big"], out.nbytes)], out, progress=lambda *a: reports.append(a)
    )
    assert reports[-1] == (out.nbytes, out.nbytes)
    assert all(done <= total == out.nbytes for done, total in reports)


def test_an_unmapped_range_says_how_much_was_copied(backend: Backend, holder: Holder) -> None:
    out = np.zeros(2, np.float64)
    ranges = [(holder.address["big"] + 8, 8), (8, 8)]  # the second is the null page's
    with pytest.raises(OSError) as raised:
        backend.module.copy_from_process(holder.pid, ranges, out)
    assert raised.value.errno == errno.EFAULT
    assert raised.value.bytes_done == 8
    assert out[0] == 1.0


def test_a_process_gone_is_process_lookup_error(backend: Backend) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError) as raised:
        backend.module.copy_from_process(child.pid, [(4096, 8)], bytearray(8))
    assert raised.value.bytes_done == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_another_users_process_is_permission_error(backend: Backend) -> None:
    # The child drops to another uid; this process, root, keeps reading
    # rights, so it is the child that tries to read the root parent.
    secret = np.arange(4, dtype=np.int64)
    script = (
        "import os, sys, numpy as np\n"
        "from arraywire._core import " + backend.module.__name__.rsplit(".", 1)[1] + " as core\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    core.copy_from_process({os.getpid()}, [({secret.ctypes.data}, 32)], bytearray(32))\n"
        "except PermissionError as exc:\n"
        "    print('refused', exc.bytes_done)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["refused", "0"], result.stderr


@pytest.mark.parametrize(
    ("pid", "ranges", "target", "error", "match"),
    [
        ("1", [], bytearray(), TypeError, "pid must be an int"),
        (0, [], bytearray(), ValueError, "pid must be in 1"),
        (1, [(0, 8)], bytearray(4), ValueError, "cover 8 bytes and the buffer holds 4"),
        (1, [(0, 8), (8, 8)], bytearray(8), ValueError, "cover 16 bytes"),
        (1, [(0,)], bytearray(), TypeError, "range 0: expected a pair of ints"),
        (1, [(0, 8), ("a", 8)], bytearray(16), TypeError, "range 1: expected a pair"),
        (1, [(-8, 8)], bytearray(8), ValueError, "range 0: address -0x8"),
        (1, [(2**64 - 4, 8)], bytearray(8), ValueError, "64-bit address space"),
        (1, [(0, 8)], b"12345678", TypeError, "read-only"),
        (1, [(0, 8)], np.zeros((4, 4), np.int8)[:, :2], ValueError, "not contiguous"),
        (1, [(0, 8)], np.empty(1, object), TypeError, "Python objects"),
    ],
)
def test_bad_arguments_before_any_byte(
    backend: Backend, pid: object, ranges: list, target: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        backend.module.copy_from_process(pid, ranges, target)


def test_a_signal_handler_error_stops_the_copy(backend: Backend, holder: Holder) -> None:
    """An exception from a signal handler raised while copying carries the
    bytes copied; the buffer is released."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread")

    class Stop(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Stop

    base = holder.address["big"]

    def ranges() -> Iterator[tuple[int, int]]:
        # a million 8-byte ranges: a copy of 0.1 s or more; the alarm is set
        # once they are read, so it comes during the copy
        for i in range(1_000_000):
            yield base + 8 * i, 8
        signal.setitimer(signal.ITIMER_REAL, 0.02)

    out = bytearray(8_000_000)
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with pytest.raises(Stop) as raised:
            backend.module.copy_from_process(holder.pid, ranges(), out)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0 <= raised.value.bytes_done < len(out)
    out.extend(b"x")  # BufferError while the copy still held the buffer
