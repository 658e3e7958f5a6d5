"""Nothing leaks: many transfers, and many failed ones, leave the resident
memory flat. Every transfer uses fresh buffers, so one leaked reference or
unreleased buffer per call adds up to tens of megabytes."""

from __future__ import annotations

import gc
import os
import socket
import sys

import numpy as np
import pytest
from backends import Backend

import arraywire

pytestmark = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer holds freed memory in quarantine, so RSS grows by design",
)

MB = 1 << 20
# "within a few MB": allocator pools and caches may move a little
ALLOWED_GROWTH = 4 * MB


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _growth(run, warm_up: int, count: int) -> int:
    run(warm_up)
    gc.collect()
    before = rss()
    run(count)
    gc.collect()
    return rss() - before


def test_100000_small_transfers(backend: Backend) -> None:
    a, b = socket.socketpair()
    module = backend.module

    def run(count: int) -> None:
        for i in range(count):
            kind = i % 4
            if kind == 0:
                module.send_from(bytes(1000), a)
                module.recv_into(bytearray(1000), b)
            elif kind == 1:
                module.send_from(np.ones(125), a)
                module.recv_into(np.empty(125), b)
            elif kind == 2:
                module.sendmsg_from([b"h" * 16, np.ones(123)], a)
                module.recvmsg_into([bytearray(16), np.empty(123)], b)
            else:
                module.send_from(memoryview(bytearray(1000)), a)
                module.recv_into(memoryview(np.empty(1000, np.uint8)), b)

    try:
        assert _growth(run, 5000, 100_000) < ALLOWED_GROWTH
    finally:
        a.close()
        b.close()


def test_1000_failed_transfers(backend: Backend) -> None:
    module = backend.module

    def eof(target: np.ndarray) -> None:
        a, b = socket.socketpair()
        a.sendall(b"x" * 100)
        a.close()
        with b, pytest.raises(arraywire.IncompleteTransferError):
            module.recv_into(target, b)

    def timeout(target: np.ndarray) -> None:
        a, b = socket.socketpair()
        b.settimeout(0.001)
        with a, b, pytest.raises(TimeoutError):
            module.recvmsg_into([target[:10], target[10:]], b)

    def broken_pipe(source: np.ndarray) -> None:
        a, b = socket.socketpair()
        b.close()
        with a, pytest.raises(BrokenPipeError):
            module.sendmsg_from([source[:10], source[10:]], a)

    def run(count: int) -> None:
        for i in range(count):
            # a fresh 64 KB buffer each time: a leaked one shows as 64 MB
            buffer = np.ones(64 * 1024, np.uint8)
            (eof, timeout, broken_pipe)[i % 3](buffer)
            assert sys.getrefcount(buffer) == 2  # the local and the argument

    assert _growth(run, 100, 1000) < ALLOWED_GROWTH
