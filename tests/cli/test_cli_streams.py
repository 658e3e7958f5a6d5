"""`arraywire send --streams N` / `arraywire recv --max-streams M`: real
processes on loopback, both backends; the fakes speak docs/PROTOCOL.md by hand."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from backends import Backend
from sockets import receive_exactly
from test_cli import (  # the autouse fixture reaps this module's children too
    ACK,
    TIMEOUT,
    Cli,
    _reap_children,  # noqa: F401
    one_error_line,
    quiet_lines,
    same_file_contents,
    usage_error,
)
from test_cli_security import (
    KEYED_RECEIVER_SAYS,
    KEYED_SENDER_SAYS,
    KEYLESS_RECEIVER_SAYS,
    KEYLESS_SENDER_SAYS,
    Pki,
    failed,
    files,  # noqa: F401
    key_file,
    pki,  # noqa: F401
    run_pair,
    server_tls,
    succeeded,
)

from arraywire import STRIPE_BYTES
from arraywire._wire.engine import plan_send

HELLO = struct.Struct("<4sBBHII")
GROUP = struct.Struct("<16sHH")
JOIN = struct.Struct("<BBH")
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


def stripe_sizes(payload: int, streams: int) -> list[int]:
    """docs/PROTOCOL.md, "Parallel streams", written out."""
    part = -(-payload // streams)
    part = -(-part // 4096) * 4096
    return [max(0, min(part, payload - i * part)) for i in range(streams)]


SIZES = {
    # 3 MiB and a bit, not a multiple of 4096: the last part is short
    "striped": lambda: np.random.default_rng(5).integers(0, 255, 3 * STRIPE_BYTES + 4321,
                                                         dtype=np.uint8),
    # under STRIPE_BYTES: whole on stream 0
    "whole": lambda: np.random.default_rng(6).standard_normal((300, 200)),
}


@pytest.mark.parametrize("streams", [1, 2, 4])
@pytest.mark.parametrize("size", list(SIZES))
def test_send_over_parallel_streams(backend: Backend, tmp_path: Path, streams: int,
                                    size: str) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, SIZES[size]())
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output))
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}",
                 "--streams", str(streams))
    (send_status, send_err), (recv_status, recv_err) = sender.finish(), receiver.finish()
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    same_file_contents(output, source)
    assert set(os.listdir(tmp_path)) == {"in.npy", "out.npy"}
    sent, wrote = send_err.splitlines()[-1], recv_err.splitlines()[-1]
    assert sent.startswith(f"arraywire send: sent {source}: ")
    assert wrote.startswith(f"arraywire recv: wrote {output}: ")
    for line in (sent, wrote):
        assert line.endswith(f" over {streams} streams") == (streams > 1), line


def test_streams_with_a_key_and_tls(backend: Backend, tmp_path: Path,
                                    files: tuple[Path, Path], pki: Pki) -> None:  # noqa: F811
    source, output = files
    np.save(source, SIZES["striped"]())
    key = ["--key-file", key_file(tmp_path, "k", b"s3cret")]
    outcome = run_pair(backend, source, output, key, [*key, "--streams", "3"])
    succeeded(outcome, source, output)
    output.unlink()
    outcome = run_pair(backend, source, output, [*key, *server_tls(pki)],
                       [*key, "--tls-ca", pki.ca, "--streams", "3"])
    succeeded(outcome, source, output)


def test_more_streams_than_the_receiver_takes(backend: Backend,
                                              files: tuple[Path, Path]) -> None:  # noqa: F811
    outcome = run_pair(backend, *files, ["--max-streams", "2"], ["--streams", "4"])
    failed(outcome,
           "the receiver takes at most 2 streams: use --streams 2 or fewer, or arraywire "
           "recv --max-streams 4",
           "refused the sender's 4 streams: this end takes at most 2 (--max-streams)")
    assert not files[1].exists()


@pytest.mark.parametrize("keyed", ["sender", "receiver"])
def test_streams_with_a_key_on_one_side_only(backend: Backend, tmp_path: Path,
                                             files: tuple[Path, Path],  # noqa: F811
                                             keyed: str) -> None:
    key = ["--key-file", key_file(tmp_path, "k", b"s3cret")]
    if keyed == "sender":
        outcome = run_pair(backend, *files, [], [*key, "--streams", "3"])
        failed(outcome, KEYED_SENDER_SAYS, KEYLESS_RECEIVER_SAYS)
    else:
        outcome = run_pair(backend, *files, key, ["--streams", "3"])
        failed(outcome, KEYLESS_SENDER_SAYS, KEYED_RECEIVER_SAYS)
    assert not files[1].exists()


BAD_COMMAND_LINES = [
    (["send", "IN", "127.0.0.1:5000", "--streams", "0"],
     "not a stream count from 1 to 65535: '0'"),
    (["send", "IN", "127.0.0.1:5000", "--streams", "65536"],
     "not a stream count from 1 to 65535: '65536'"),
    (["send", "IN", "127.0.0.1:5000", "--streams", "two"],
     "not a stream count from 1 to 65535: 'two'"),
    (["send", "IN", "5000", "--listen", "--streams", "2"],
     "--streams needs this end to connect"),
    (["recv", "0", "-o", "OUT", "--max-streams", "0"],
     "not a stream count from 1 to 65535: '0'"),
    (["recv", "127.0.0.1:5000", "-o", "OUT", "--connect", "--max-streams", "4"],
     "--max-streams is for a listening receiver"),
]


@pytest.mark.parametrize(("args", "message"), BAD_COMMAND_LINES,
                         ids=[" ".join(args) for args, _ in BAD_COMMAND_LINES])
def test_bad_stream_counts_exit_2(backend: Backend, tmp_path: Path, args: list[str],
                                  message: str) -> None:
    np.save(tmp_path / "in.npy", np.zeros(3))
    paths = {"IN": str(tmp_path / "in.npy"), "OUT": str(tmp_path / "out.npy")}
    status, err = Cli(backend, *[paths.get(arg, arg) for arg in args]).finish()
    assert status == 2
    assert message in usage_error(err, args[0])
    assert os.listdir(tmp_path) == ["in.npy"]


def join_by_hand(server: socket.socket, streams: int) -> list[socket.socket]:
    """A receiver's side of the group's openings, from docs/PROTOCOL.md: each
    connection's hello with bit 1 and its group, this end's hello, JOINED.
    The streams in index order, checked to be one group on distinct connections."""
    socks: list[socket.socket | None] = [None] * streams
    idents = set()
    for _ in range(streams):
        conn, _ = server.accept()
        conn.settimeout(TIMEOUT)
        magic, _, _, features, extra, _ = HELLO.unpack(receive_exactly(conn, HELLO.size))
        assert (magic, features, extra) == (b"AWHI", 0x0002, GROUP.size)
        ident, member, size = GROUP.unpack(receive_exactly(conn, GROUP.size))
        assert size == streams and socks[member] is None
        idents.add(ident)
        conn.sendall(HELLO.pack(b"AWHI", 1, 1, 0, 0, 0) + JOIN.pack(1, 0, 8))
        socks[member] = conn
    assert len(idents) == 1
    return socks  # type: ignore[return-value]


def test_each_part_goes_on_its_own_connection(backend: Backend, tmp_path: Path) -> None:
    array = SIZES["striped"]()
    source = tmp_path / "in.npy"
    np.save(source, array)
    header = plan_send([array]).header
    payload = array.tobytes()
    sizes = stripe_sizes(len(payload), 4)
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "--streams", "4", "-q")
        socks = join_by_hand(server, 4)
        start = 0
        for index, sock in enumerate(socks):
            part = payload[start : start + sizes[index]]
            start += sizes[index]
            expected = header + part if index == 0 else part
            assert receive_exactly(sock, len(expected)) == expected, f"stream {index}"
        socks[0].sendall(ACK)
        assert sender.finish() == (0, "")
        for sock in socks:  # nothing more came on any stream
            assert sock.recv(1) == b""
            sock.close()


def test_a_stream_reset_mid_array_fails_the_sender(backend: Backend, tmp_path: Path) -> None:
    # each stream's part larger than what loopback buffers hold: the sender is
    # still sending on stream 1 when it is reset
    array = np.ones(48 * STRIPE_BYTES, np.uint8)
    source = tmp_path / "in.npy"
    np.save(source, array)
    header = len(plan_send([array]).header)
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "--streams", "2", "-q")
        first, second = join_by_hand(server, 2)
        receive_exactly(first, 100_000)
        receive_exactly(second, 100_000)
        second.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        second.close()  # with unread data: a reset
        status, err = sender.finish()
        first.close()
    assert status == 1
    line = one_error_line(err, "send")
    # counted in the array's bytes, as the receiver counts them
    match = re.search(rf"the receiver closed a stream after ([\d,]+) of {array.nbytes:,} bytes "
                      r"of the array \(sent over 2 streams\)$", line)
    assert match, line
    assert 200_000 - header <= int(match[1].replace(",", "")) < array.nbytes


def test_a_receiver_gone_after_stream_0_fails_the_sender_at_once(
    backend: Backend, tmp_path: Path
) -> None:
    """Only the first stream waits for a receiver to listen."""
    source = tmp_path / "in.npy"
    np.save(source, np.zeros(10))
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "--streams", "2", "-q")
    conn, _ = server.accept()
    server.close()  # before stream 0 joins: stream 1 finds nothing listening
    with conn:
        conn.settimeout(TIMEOUT)
        receive_exactly(conn, HELLO.size + GROUP.size)
        conn.sendall(HELLO.pack(b"AWHI", 1, 1, 0, 0, 0) + JOIN.pack(1, 0, 8))
        status, err = sender.finish()
    assert status == 1
    assert one_error_line(err, "send").endswith(
        f"cannot connect every stream to 127.0.0.1:{port}: connection refused (the receiver "
        "stopped listening after stream 0; see its messages)"
    )


def stream_by_hand(port: int, ident: bytes, member: int, size: int) -> socket.socket:
    """A sender's stream opened by hand: its hello, the receiver's, JOINED."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(HELLO.pack(b"AWHI", 1, 1, 0x0002, GROUP.size, 0)
                 + GROUP.pack(ident, member, size))
    assert receive_exactly(sock, HELLO.size)[:4] == b"AWHI"
    assert JOIN.unpack(receive_exactly(sock, JOIN.size)) == (1, 0, 8)
    return sock


def test_a_stream_lost_mid_array_fails_the_receiver(backend: Backend, tmp_path: Path) -> None:
    array = np.ones(4 * STRIPE_BYTES, np.uint8)
    output = tmp_path / "out.npy"
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q")
    port = receiver.port()
    ident = os.urandom(16)
    first, second = (stream_by_hand(port, ident, i, 2) for i in range(2))
    sizes = stripe_sizes(array.nbytes, 2)
    first.sendall(plan_send([array]).header + bytes(sizes[0]))
    second.sendall(bytes(1000))
    second.close()
    status, err = receiver.finish()
    first.close()
    assert status == 1
    line = one_error_line(err, "recv")
    match = re.search(rf"the sender closed a stream after ([\d,]+) of {array.nbytes:,} bytes "
                      r"of the array \(received over 2 streams\)$", line)
    assert match, line
    assert 1000 <= int(match[1].replace(",", "")) <= sizes[0] + 1000
    assert os.listdir(tmp_path) == []  # no partial file


def test_a_refusal_stops_every_stream(backend: Backend, tmp_path: Path) -> None:
    """The receiver's AWNO comes on stream 0; the sender's other streams stop too."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.ones(8 * STRIPE_BYTES, np.uint8))
    outcome = run_pair(backend, source, output, ["--max-bytes", "1MB"], ["--streams", "4"])
    reason = "the array is 8,388,608 bytes, over its --max-bytes of 1,000,000"
    failed(outcome, f"the receiver refused: {reason}", f"refused the sender's array: {reason}")
    assert os.listdir(tmp_path) == ["in.npy"]


def test_a_group_not_whole_within_the_handshake_timeout_is_dropped(
    backend: Backend, tmp_path: Path
) -> None:
    """Two groups form side by side; neither is whole in time, so each of
    their streams is dropped in a line, and the receiver goes on waiting."""
    output = tmp_path / "out.npy"
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "--handshake-timeout", "1",
                   "--timeout", "3")
    port = receiver.port()
    ident = os.urandom(16)
    started = time.monotonic()
    first = stream_by_hand(port, ident, 0, 3)
    other = stream_by_hand(port, os.urandom(16), 1, 3)  # another group's
    second = stream_by_hand(port, ident, 1, 3)
    status, err = receiver.finish()
    assert 2.5 < time.monotonic() - started < 8
    for sock in (first, other, second):
        sock.close()
    assert status == 1
    lines = quiet_lines(err)
    assert lines[-1] == "arraywire recv: error: nobody connected within 3 s"
    assert len(lines) == 4, err
    for line in lines[:3]:
        assert re.fullmatch(r"arraywire recv: dropped 127\.0\.0\.1:\d+: the sender did not "
                            r"connect every stream of its group within 1 s", line), err
    assert not output.exists()


def test_a_plain_sender_is_served_while_a_group_forms(backend: Backend, tmp_path: Path) -> None:
    """A plain message on another connection is a sender of its own: the
    first peer whose opening is done is the one received from."""
    output = tmp_path / "out.npy"
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q")
    port = receiver.port()
    first = stream_by_hand(port, os.urandom(16), 0, 2)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as plain:
        plan = plan_send([np.arange(3)])
        plain.sendall(plan.header + np.arange(3).tobytes())
        assert receive_exactly(plain, len(ACK)) == ACK
        status, err = receiver.finish()
    first.close()
    assert (status, quiet_lines(err)) == (0, [])
    np.testing.assert_array_equal(np.load(output), np.arange(3))


BAD_GROUP_HELLOS = {
    # a hello of the stream feature that is wrong in itself, or names no group
    "message-version-0": (HELLO.pack(b"AWHI", 1, 0, 0x0002, GROUP.size, 0)
                          + GROUP.pack(bytes(16), 0, 2),
                          "hello declares version 1 and message version 0"),
    "group-of-one": (HELLO.pack(b"AWHI", 1, 1, 0x0002, GROUP.size, 0)
                     + GROUP.pack(bytes(16), 0, 1),
                     "stream group of 1 streams with this stream at index 0"),
}


@pytest.mark.parametrize("case", list(BAD_GROUP_HELLOS))
def test_a_bad_group_hello_fails_the_receiver_clearly(backend: Backend, tmp_path: Path,
                                                      case: str) -> None:
    hello, says = BAD_GROUP_HELLOS[case]
    output = tmp_path / "out.npy"
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q", "--timeout", "1")
    with socket.create_connection(("127.0.0.1", receiver.port()), timeout=TIMEOUT) as sock:
        sock.sendall(hello)
        status, err = receiver.finish()
    assert status == 1
    dropped, last = quiet_lines(err)
    assert f": the connection opening with the sender failed: {says}" in dropped, err
    assert dropped.startswith("arraywire recv: dropped 127.0.0.1:"), err
    assert last == "arraywire recv: error: nobody connected within 1 s"
    assert os.listdir(tmp_path) == []


def test_a_terminated_striped_receive_stops_every_stream(backend: Backend,
                                                         tmp_path: Path) -> None:
    output = tmp_path / "out.npy"
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q")
    port = receiver.port()
    ident = os.urandom(16)
    first, second = (stream_by_hand(port, ident, i, 2) for i in range(2))
    first.sendall(plan_send([np.ones(4 * STRIPE_BYTES, np.uint8)]).header + bytes(1000))
    second.sendall(bytes(1000))
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "out.npy.partial").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # the threads are waiting for the rest
    receiver.proc.send_signal(signal.SIGTERM)
    status, err = receiver.finish()
    first.close()
    second.close()
    assert status == 130, err
    assert "interrupted" in one_error_line(err, "recv")
    assert os.listdir(tmp_path) == []
