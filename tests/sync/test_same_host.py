"""Same-host copies on blocking Channels: the opening's probe in both
directions over AF_UNIX between real processes, and where it stays off
(docs/PROTOCOL.md, "Same host")."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from backends import Backend, backend_env
from sockets import Peer, receive_exactly

import arraywire
from arraywire import ProtocolError, aio
from arraywire._wire import control, hello, samehost

LIMIT = 30.0
BOTH = hello.CONTROL | hello.SAME_HOST
PR_SET_DUMPABLE = 4

# A child process that connects, says whether same-host copies are on, and sends.
CHILD = """
import sys
import numpy as np
import arraywire
from arraywire._core import transport
flag = {"none": None, "true": True, "false": False}[sys.argv[2]]
with arraywire.connect(sys.argv[1], timeout=30, same_host=flag) as channel:
    print(transport.BACKEND, channel.same_host, flush=True)
    channel.send(np.arange(1000, dtype=np.float64))
    channel.recv()
"""


@pytest.fixture
def directory() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as path:
        os.chmod(path, 0o777)  # a peer of another uid connects too
        yield path


def run_child(backend: Backend, address: str, flag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, address, flag], env=backend_env(backend.name),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize(
    ("listening", "connecting", "on"),
    [
        (None, "none", True),
        (True, "true", True),
        (False, "none", False),
        (None, "false", False),
    ],
)
def test_same_host_between_processes(
    backend: Backend, directory: str, listening: bool | None, connecting: str, on: bool
) -> None:
    """Both ends find the copies on when both allow them, off when either
    passes False; the message takes the connection either way."""
    path = os.path.join(directory, "sock")
    with arraywire.listen(path, same_host=listening) as listener:
        child = run_child(backend, path, connecting)
        try:
            with listener.accept(timeout=LIMIT) as channel:
                assert channel.same_host is on
                np.testing.assert_array_equal(channel.recv(), np.arange(1000, dtype=np.float64))
                channel.send(np.zeros(1))
            out, err = child.communicate(timeout=LIMIT)
        finally:
            child.kill()
    assert child.returncode == 0, err
    assert out.split() == [backend.module.BACKEND, str(on)]


def test_off_over_tcp(backend: Backend) -> None:
    """Over TCP neither end announces same-host copies, even when asked."""
    with arraywire.listen(("127.0.0.1", 0), same_host=True) as listener:
        peer = Peer(lambda: arraywire.connect(listener.address, timeout=LIMIT, same_host=True))
        with listener.accept(timeout=LIMIT) as channel, peer.result() as other:
            assert (channel.same_host, other.same_host) == (False, False)
            other.send(np.arange(5))
            np.testing.assert_array_equal(channel.recv(), np.arange(5))


@pytest.mark.parametrize(("flag", "on"), [(None, False), (True, True)])
def test_under_tls(
    backend: Backend, directory: str, tls: tuple[ssl.SSLContext, ssl.SSLContext],
    flag: bool | None, on: bool,
) -> None:
    """Under TLS None means off; True at both ends turns the copies on."""
    server, client = tls
    path = os.path.join(directory, "sock")
    with arraywire.listen(path, ssl=server, same_host=flag) as listener:
        peer = Peer(lambda: arraywire.connect(
            path, timeout=LIMIT, ssl=client, server_hostname="localhost", same_host=flag
        ))
        with listener.accept(timeout=LIMIT) as channel, peer.result() as other:
            assert (channel.same_host, other.same_host) == (on, on)
            other.send(np.arange(5))
            np.testing.assert_array_equal(channel.recv(), np.arange(5))
            large = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: described when on
            sending = Peer(lambda: other.send(large))
            np.testing.assert_array_equal(channel.recv(timeout=LIMIT), large)
            sending.result()
            replying = Peer(lambda: channel.send(large * 2))
            np.testing.assert_array_equal(other.recv(timeout=LIMIT), large * 2)
            replying.result()


def test_off_with_parallel_streams(backend: Backend, directory: str) -> None:
    path = os.path.join(directory, "sock")
    with arraywire.listen(path) as listener:
        peer = Peer(lambda: arraywire.connect(path, timeout=LIMIT, streams=2))
        with listener.accept(timeout=LIMIT) as channel, peer.result() as other:
            assert (channel.same_host, other.same_host) == (False, False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer of another uid")
def test_peer_of_another_uid(backend: Backend, directory: str) -> None:
    """A peer of another uid: the kernel names it, the uids differ, so both
    answers say so and the connection keeps the socket path."""
    path = os.path.join(directory, "sock")
    with arraywire.listen(path) as listener:
        os.chmod(path, 0o777)  # connecting takes write permission on the socket file
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.setuid(65534)
                with arraywire.connect(path, timeout=LIMIT) as channel:
                    channel.send(np.array([float(channel.same_host)]))
                    code = 0
            finally:
                os._exit(code)
        try:
            with listener.accept(timeout=LIMIT) as channel:
                assert channel.same_host is False
                np.testing.assert_array_equal(channel.recv(), [0.0])
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def forked(run: Callable[[], bool]) -> int:
    """A child process of uid 65534 that runs run() and exits 0 when it says True."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setuid(65534)
            code = 0 if run() else 3
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run peers of another uid")
@pytest.mark.parametrize(("dumpable", "on"), [(1, True), (0, False)])
def test_a_sender_the_kernel_will_not_let_be_read(
    backend: Backend, directory: str, dumpable: int, on: bool
) -> None:
    """Two processes of one uid (not root, which may read anything): when
    the connecting one is not dumpable, the kernel refuses the listening
    one's read of it, so the copies stay off at both ends and its large
    message takes the socket path, arriving the same."""
    path = os.path.join(directory, "sock")
    large = np.arange(1 << 18, dtype=np.float64)
    ready = os.pipe()

    def listening() -> bool:
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1)  # setuid cleared it
        with arraywire.listen(path) as listener:
            os.write(ready[1], b"1")
            with listener.accept(timeout=LIMIT) as channel:
                equal = bool((channel.recv(timeout=LIMIT) == large).all())
                channel.send(np.zeros(1))
                return channel.same_host is on and equal

    def connecting() -> bool:
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, dumpable)
        with arraywire.connect(path, timeout=LIMIT) as channel:
            channel.send(large)
            channel.recv(timeout=LIMIT)
            return channel.same_host is on

    listener = forked(listening)
    os.close(ready[1])  # a child that fails before listening ends the read
    try:
        assert os.read(ready[0], 1) == b"1"
    finally:
        os.close(ready[0])
    sender = forked(connecting)
    assert (exit_code(sender), exit_code(listener)) == (0, 0)


def serve_raw(path: str, script: list[bytes | int]) -> Peer:
    """A hand-made listening peer: accepts one connection and, in turn,
    sends each bytes item and reads each int's count of bytes (returned)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run() -> list[bytes]:
        read = []
        with server, server.accept()[0] as sock:
            sock.settimeout(LIMIT)
            for step in script:
                if isinstance(step, int):
                    read.append(receive_exactly(sock, step))
                else:
                    sock.sendall(step)
            return read

    return Peer(run)


PROBE_RECORD = control.SIZE + samehost.PROBE.size
ANSWER_RECORD = control.SIZE + samehost.ANSWER.size


def test_probe_on_the_wire(backend: Backend, directory: str) -> None:
    """connect sends its probe after the hellos, answers the peer's with the
    status the kernel gives (an unmapped address: refused) and decides off
    although the peer answered 0."""
    path = os.path.join(directory, "sock")
    peer = serve_raw(path, [
        hello.SIZE, hello.encode(capabilities=BOTH), PROBE_RECORD,
        samehost.encode_probe(8, bytes(samehost.PROBE_BYTES)), ANSWER_RECORD,
        samehost.encode_answer(samehost.EQUAL),
    ])
    with arraywire.connect(path, timeout=LIMIT) as channel:
        assert channel.same_host is False
    sent_hello, probe, answer = peer.result()
    assert hello.decode(sent_hello).capabilities == BOTH
    assert control.decode(probe[: control.SIZE], BOTH) == (control.PROBE, samehost.PROBE.size)
    assert samehost.decode_probe(probe[control.SIZE :]).data != bytes(samehost.PROBE_BYTES)
    assert answer == samehost.encode_answer(samehost.KERNEL_REFUSED)


def test_probe_read_from_a_peer_process(backend: Backend, directory: str) -> None:
    """A probe naming this very process's bytes (the hand-made peer is a
    thread of it) reads as equal, and bytes other than the probe's as
    different."""
    path = os.path.join(directory, "sock")
    memory = np.frombuffer(b"p" * samehost.PROBE_BYTES, np.uint8).copy()
    for claimed, status in ((b"p", samehost.EQUAL), (b"q", samehost.DIFFERENT)):
        peer = serve_raw(path, [
            hello.SIZE, hello.encode(capabilities=BOTH), PROBE_RECORD,
            samehost.encode_probe(memory.ctypes.data, claimed * samehost.PROBE_BYTES),
            ANSWER_RECORD, samehost.encode_answer(samehost.EQUAL),
        ])
        with arraywire.connect(path, timeout=LIMIT) as channel:
            assert channel.same_host is (status == samehost.EQUAL)
        assert peer.result()[2] == samehost.encode_answer(status)
        os.unlink(path)


def record(kind: int, body: bytes) -> bytes:
    return control.RECORD.pack(control.MAGIC, kind, 0, len(body), 0) + body


HOSTILE = {
    "probe too long": [record(control.PROBE, bytes(45))],
    "probe of 33 bytes": [record(control.PROBE, struct.pack("<QI32s", 8, 33, bytes(32)))],
    "answer in place of the probe": [samehost.encode_answer(samehost.EQUAL)],
    "a message in place of the probe": [b"AWv2" + bytes(12)],
    "answer of status 4": [
        samehost.encode_probe(8, bytes(samehost.PROBE_BYTES)), ANSWER_RECORD,
        record(control.PROBE_ANSWER, b"\x04"),
    ],
}


@pytest.mark.parametrize("case", HOSTILE)
def test_malformed_probe_fails_connect(backend: Backend, directory: str, case: str) -> None:
    path = os.path.join(directory, "sock")
    script = [hello.SIZE, hello.encode(capabilities=BOTH), PROBE_RECORD, *HOSTILE[case]]
    peer = serve_raw(path, script)
    with pytest.raises(ProtocolError):
        arraywire.connect(path, timeout=LIMIT)
    peer.result()


@pytest.mark.parametrize("case", HOSTILE)
def test_malformed_probe_drops_the_peer(backend: Backend, directory: str, case: str) -> None:
    """The Listener drops a peer whose probe is malformed and goes on."""
    path = os.path.join(directory, "sock")

    def hostile_then_good() -> arraywire.Channel:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(LIMIT)
            sock.connect(path)
            sock.sendall(hello.encode(capabilities=BOTH))
            receive_exactly(sock, hello.SIZE + PROBE_RECORD)
            for step in HOSTILE[case]:
                if isinstance(step, int):
                    receive_exactly(sock, step)
                else:
                    sock.sendall(step)
            try:  # dropped: closed, reset when bytes were left unread
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        return arraywire.connect(path, timeout=LIMIT)

    with arraywire.listen(path) as listener:
        peer = Peer(hostile_then_good)
        with listener.accept(timeout=LIMIT) as channel, peer.result() as other:
            assert channel.same_host and other.same_host


def test_older_peer_without_the_bit(backend: Backend, directory: str) -> None:
    """A peer that announces control records only gets no probe."""
    path = os.path.join(directory, "sock")
    peer = serve_raw(path, [hello.SIZE, hello.encode(capabilities=hello.CONTROL)])
    with arraywire.connect(path, timeout=LIMIT) as channel:
        assert channel.same_host is False
        channel.socket.settimeout(LIMIT)
        peer.result()
        assert channel.socket.recv(10) == b""  # nothing after the hello


def test_same_host_keyword_checked(directory: str) -> None:
    path = os.path.join(directory, "sock")
    with pytest.raises(TypeError, match="same_host"):
        arraywire.listen(path, same_host="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="same_host"):
        arraywire.connect(path, same_host=1)  # type: ignore[arg-type]

    async def aio_checks() -> None:
        with pytest.raises(TypeError, match="same_host"):
            await aio.connect(path, same_host="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="same_host"):
            await aio.listen(path, same_host=0)  # type: ignore[arg-type]

    asyncio.run(asyncio.wait_for(aio_checks(), LIMIT))


@pytest.mark.parametrize(("flag", "on"), [(None, True), (True, True), (False, False)])
def test_aio_ends(backend: Backend, directory: str, flag: bool | None, on: bool) -> None:
    """The asyncio ends probe as the blocking ones do, and a large message
    between them arrives either way."""
    path = os.path.join(directory, "sock")
    large = np.arange(1 << 18, dtype=np.float64)

    async def pair() -> tuple[bool, bool]:
        listener = await aio.listen(path, same_host=flag)
        try:
            other = await aio.connect(path, timeout=LIMIT, same_host=flag)
            channel = await listener.accept()
            flags = (channel.same_host, other.same_host)
            sending = asyncio.create_task(other.send(large))
            np.testing.assert_array_equal(await channel.recv(), large)
            await sending
            other.close()
            channel.close()
            return flags
        finally:
            await listener.aclose()

    assert asyncio.run(asyncio.wait_for(pair(), LIMIT)) == (on, on)


def test_aio_peer_of_a_blocking_end(backend: Backend, directory: str) -> None:
    """A blocking end and an asyncio one turn the copies on together, and
    copy each other's large messages."""
    path = os.path.join(directory, "sock")
    large = np.arange(1 << 18, dtype=np.float64)
    with arraywire.listen(path) as listener:

        async def connecting() -> bool:
            other = await aio.connect(path, timeout=LIMIT)
            await other.send(large)
            np.testing.assert_array_equal(await other.recv(), large * 2)
            other.close()
            return other.same_host

        peer = Peer(lambda: asyncio.run(asyncio.wait_for(connecting(), LIMIT)))
        with listener.accept(timeout=LIMIT) as channel:
            assert channel.same_host is True
            np.testing.assert_array_equal(channel.recv(timeout=LIMIT), large)
            channel.send(large * 2)
        assert peer.result() is True
