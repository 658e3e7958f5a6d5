"""What `arraywire send` / `arraywire recv` say when something is wrong: the
array's bytes counted alike at both ends, files that are not whole .npy
files, peers that are not arraywire, refusals and their reasons. Real
processes on loopback, both backends."""

from __future__ import annotations

import os
import re
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from backends import Backend
from sockets import receive_exactly
from test_cli import (  # the autouse fixture reaps this module's children too
    HELLO,
    TIMEOUT,
    Cli,
    _reap_children,  # noqa: F401
    one_error_line,
    quiet_lines,
    same_file_contents,
    start_receiver,
    wait_closed,
)

import arraywire
from arraywire._cli.common import MAX_REASON, REFUSE, Failure, Incoming, send_refusal
from arraywire._wire import control, hello
from arraywire._wire.engine import plan_send

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


# --- both ends count the array's bytes -------------------------------------------------


def test_the_bars_of_both_ends_count_the_arrays_bytes(backend: Backend, tmp_path: Path) -> None:
    """1,000 bytes of array in a message of 1,039: both bars say 1.00kB."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.ones(125)
    assert len(plan_send([array]).header) == 39
    np.save(source, array)
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), terminal=True)
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", terminal=True)
    (send_status, send_err), (recv_status, recv_err) = sender.finish(), receiver.finish()
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    for label, err in (("send in.npy", send_err), ("recv out.npy", recv_err)):
        assert re.search(rf"\r{label}: 100%\|.+\| 1\.00kB/1\.00kB ", err), err
        assert "1.04kB" not in err
        assert ", 1,000 bytes in " in err  # the summary


def cut_relay(listener: socket.socket, receiver_port: int, forward: int) -> None:
    """Pass the first forward bytes of one sender to the receiver, then end
    both connections: the receiver's with a close, the sender's with a reset."""
    sender, _ = listener.accept()
    with sender, socket.create_connection(("127.0.0.1", receiver_port)) as receiver:
        receiver.sendall(receive_exactly(sender, forward))
        receiver.shutdown(socket.SHUT_WR)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        wait_closed(receiver)  # the receiver has read all there is


def test_a_cut_transfer_is_counted_alike_at_both_ends(backend: Backend, tmp_path: Path) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.ones(4_000_000)
    np.save(source, array)
    header = len(plan_send([array]).header)
    receiver = start_receiver(backend, output, "-q")
    port = receiver.port()
    with socket.create_server(("127.0.0.1", 0)) as relay:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{relay.getsockname()[1]}", "-q")
        cut_relay(relay, port, header + 300_000)
        (send_status, send_err), (recv_status, recv_err) = sender.finish(), receiver.finish()
    assert (send_status, recv_status) == (1, 1)
    assert one_error_line(recv_err, "recv") == (
        "arraywire recv: error: the sender closed the connection after 300,000 of "
        "32,000,000 bytes of the array"
    )
    line = one_error_line(send_err, "send")
    match = re.fullmatch(r"arraywire send: error: the receiver closed the connection after "
                         r"([\d,]+) of 32,000,000 bytes of the array", line)
    assert match, line
    assert 300_000 <= int(match[1].replace(",", "")) < 32_000_000
    assert not output.exists()


# --- files that are not whole .npy files ---------------------------------------------


def test_a_truncated_or_foreign_file_is_named(backend: Backend, tmp_path: Path) -> None:
    whole = tmp_path / "whole.npy"
    np.save(whole, np.ones((1000, 3)))  # a 128-byte header, then 24,000 bytes
    data = whole.read_bytes()
    files = {
        "truncated.npy": data[:10_000],
        "header-cut.npy": data[:100],
        "magic-only.npy": data[:9],
        "empty.npy": b"",
        "random.npy": np.random.default_rng(3).bytes(5000),
        "future.npy": b"\x93NUMPY\x04\x00" + data[8:],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    said = {
        "truncated.npy": "is truncated: its header declares float64 (1000, 3), 24,000 bytes, "
                         "but the file holds 9,872 bytes after its 128-byte header",
        "header-cut.npy": "is truncated: it ends inside its .npy header of 118 bytes (100 "
                          "bytes in all)",
        "magic-only.npy": "is truncated: it ends inside its .npy header (9 bytes in all)",
        "empty.npy": "is empty, not a .npy file",
        "random.npy": "is not a .npy file: it does not begin with numpy's magic "
                      "b'\\x93NUMPY'",
        "future.npy": "is a .npy file of format version 4.0, which this numpy does not read "
                      "(it reads 1.0, 2.0 and 3.0)",
    }
    for name, text in said.items():
        path = tmp_path / name
        # exit status 1, as for a missing file: nothing is sent, nothing connects
        status, err = Cli(backend, "send", str(path), "127.0.0.1:9", "-q").finish()
        assert status == 1, err
        assert one_error_line(err, "send") == f"arraywire send: error: {path} {text}"


# --- peers that are not arraywire ------------------------------------------------------

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Answers400(socketserver.StreamRequestHandler):
    """An HTTP server's answer to what it cannot parse: 400, then close."""

    def handle(self) -> None:
        self.rfile.read(100)
        self.wfile.write(BAD_REQUEST)


@pytest.fixture
def http_server() -> Iterator[int]:
    """A tiny HTTP server in a thread; its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answers400)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.mark.parametrize("size", [1_000, 4_000_000], ids=["small", "large"])
def test_a_sender_told_off_by_an_http_server_says_so(
    backend: Backend, tmp_path: Path, http_server: int, size: int
) -> None:
    """A small array is all sent before the answer; a large one stops at it."""
    source = tmp_path / "in.npy"
    np.save(source, np.ones(size))
    status, err = Cli(backend, "send", str(source), f"127.0.0.1:{http_server}", "-q").finish()
    assert status == 1
    assert one_error_line(err, "send") == (
        "arraywire send: error: the receiver is not arraywire recv: it answered "
        "b'HTTP/1.1 400 Bad Request', which looks like HTTP"
    )


def test_a_sender_told_off_by_another_program_says_what_came(
    backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.npy"
    np.save(source, np.ones(4_000_000))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        with conn:
            receive_exactly(conn, 1000)
            conn.sendall(b"\x00\x01garbage\r\nmore")
        status, err = sender.finish()  # closed with unread bytes: reset
    assert status == 1
    assert one_error_line(err, "send") == (
        "arraywire send: error: the receiver is not arraywire recv: it answered "
        "b'\\x00\\x01garbage'"
    )


def test_a_silent_peer_that_closes_is_not_called_foreign(backend: Backend, tmp_path: Path) -> None:
    """A peer that reads a little and closes without a word: the sender says how
    far it got, in the array's bytes."""
    source = tmp_path / "in.npy"
    np.save(source, np.ones(4_000_000))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        receive_exactly(conn, 100_000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        conn.close()
        status, err = sender.finish()
    assert status == 1
    line = one_error_line(err, "send")
    assert re.fullmatch(r"arraywire send: error: the receiver closed the connection after "
                        r"[\d,]+ of 32,000,000 bytes of the array", line), line


# --- what the receiver takes, and its refusals' reasons ----------------------------------


def test_the_receiver_takes_one_named_array_with_metadata(
    backend: Backend, tmp_path: Path
) -> None:
    """A version 2 message of one array: its name and metadata are dropped."""
    output = tmp_path / "out.npy"
    receiver = start_receiver(backend, output, "-q")
    array = np.arange(1000, dtype="<i4")
    plan = plan_send({"weights": array}, metadata=b'{"step": 7}')
    assert plan.header[4] == 2  # a version 2 message
    with socket.create_connection(("127.0.0.1", receiver.port())) as sock:
        sock.sendall(plan.header + array.tobytes())
        assert receive_exactly(sock, 4) == b"AWOK"
    status, err = receiver.finish()
    assert (status, quiet_lines(err)) == (0, [])
    np.testing.assert_array_equal(np.load(output), array)


def test_the_receiver_refuses_several_arrays_once_read(backend: Backend, tmp_path: Path) -> None:
    output = tmp_path / "out.npy"
    receiver = start_receiver(backend, output, "-q")
    arrays = [np.zeros(10), np.ones(20)]
    plan = plan_send(arrays)
    reason = b"expected a message with one array, got one with 2"
    with socket.create_connection(("127.0.0.1", receiver.port())) as sock:
        sock.sendall(plan.header + b"".join(a.tobytes() for a in arrays))
        assert receive_exactly(sock, 8 + len(reason)) == (
            REFUSE + struct.pack("<I", len(reason)) + reason
        )
    status, err = receiver.finish()
    assert status == 1
    assert one_error_line(err, "recv") == (
        f"arraywire recv: error: refused the sender's array: {reason.decode()}"
    )
    assert not output.exists()


def test_a_long_reason_is_cut_at_a_character() -> None:
    """4,096 bytes at most, never half of a character."""
    here, peer = socket.socketpair()
    got = bytearray()

    def read_all() -> None:  # then close: the refusing end waits for that
        with peer:
            while chunk := peer.recv(65536):
                got.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    with here, pytest.raises(Failure, match="refused the sender's array"):
        send_refusal(here, "é" * 3000)  # 6,000 bytes of UTF-8
    reader.join(TIMEOUT)
    reply = bytes(got)
    assert reply[:4] == REFUSE
    (length,) = struct.unpack("<I", reply[4:8])
    assert length == MAX_REASON == 4096
    assert reply[8:].decode("utf-8") == "é" * 2048


def test_a_sender_reads_4096_bytes_of_a_longer_reason(backend: Backend, tmp_path: Path) -> None:
    """A length over 4,096 is not believed: the sender takes 4,096 bytes of
    reason and ignores the rest."""
    source = tmp_path / "in.npy"
    np.save(source, np.ones(10))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        with conn:
            receive_exactly(conn, len(plan_send([np.ones(10)]).header) + 80)
            conn.sendall(REFUSE + struct.pack("<I", 0xFFFFFFFF) + b"x" * 5000)
            status, err = sender.finish()
    assert status == 1
    assert one_error_line(err, "send") == (
        f"arraywire send: error: the receiver refused: {'x' * 4096}"
    )


def test_incoming_reads_at_most_4096_bytes_of_reason() -> None:
    here, peer = socket.socketpair()
    with here, peer:
        peer.sendall(REFUSE + struct.pack("<I", 0xFFFFFFFF) + b"y" * 5000)
        assert Incoming(here).reply() == (REFUSE, "y" * 4096)


# --- a key on the sender only ------------------------------------------------------------


def test_a_keyless_receiver_answers_a_keyed_hello_with_its_own(
    backend: Backend, tmp_path: Path
) -> None:
    """Its hello (version 2, no feature bit, no feature data, no nonce), then
    it closes; it says in plain words which end has the key, and waits on."""
    output = tmp_path / "out.npy"
    receiver = start_receiver(backend, output, "-q", "--timeout", "30")
    keyed = hello.encode(hello.AUTH, hello.NONCE_BYTES) + os.urandom(hello.NONCE_BYTES)
    with socket.create_connection(("127.0.0.1", receiver.port()), timeout=TIMEOUT) as sock:
        sock.sendall(keyed)
        magic, version, reads, features, length, capabilities = HELLO.unpack(
            receive_exactly(sock, HELLO.size)
        )
        # this release's hello: capability bit 0 (control records) set
        assert (magic, version, reads, features, length, capabilities) == (
            b"AWHI", 2, 2, 0, 0, hello.CONTROL
        )
        assert sock.recv(100) == b""  # nothing follows: no nonce, no reason
    match = receiver.wait_for(rb"arraywire recv: dropped [^\n]*\n")
    assert match[0].decode().endswith(
        ": the sender uses a key and the receiver (this end) does not: give this end the "
        "same key (--key-file or ARRAYWIRE_KEY_FILE)\n"
    )
    assert "hello" not in match[0].decode()
    assert receiver.proc.poll() is None  # still waiting for a sender


def test_a_keyed_sender_of_streams_meets_a_keyless_receiver(
    backend: Backend, tmp_path: Path
) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.ones(1000))
    key = tmp_path / "k"
    key.write_bytes(b"s3cret")
    receiver = start_receiver(backend, output, "-q")
    port = receiver.port()
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q", "--streams", "2",
                 "--key-file", str(key))
    status, err = sender.finish()
    assert status == 1
    assert one_error_line(err, "send") == (
        "arraywire send: error: the sender (this end) uses a key and the receiver does not: "
        "give arraywire recv the same key (--key-file or ARRAYWIRE_KEY_FILE)"
    )
    assert receiver.dropped_or_done()
    status, err = receiver.finish()
    [dropped] = [line for line in quiet_lines(err) if "dropped" in line]
    assert dropped.endswith(
        ": the sender uses a key and the receiver (this end) does not: give this end the "
        "same key (--key-file or ARRAYWIRE_KEY_FILE)"
    )
    # and with the key on both ends the same transfer goes through
    receiver = start_receiver(backend, output, "-q", "--key-file", str(key))
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", "-q",
                 "--streams", "2", "--key-file", str(key))
    assert sender.finish() == (0, "")
    assert receiver.finish()[0] == 0
    same_file_contents(output, source)


def test_a_connecting_receiver_names_a_header_it_cannot_read(
    backend: Backend, tmp_path: Path
) -> None:
    """Not a key on one end: the message's first 16 bytes are of a newer version."""
    output = tmp_path / "out.npy"
    with socket.create_server(("127.0.0.1", 0)) as server:
        receiver = Cli(backend, "recv", f"127.0.0.1:{server.getsockname()[1]}", "-o",
                       str(output), "--connect", "-q")
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"AWIR\x09" + bytes(11))
            status, err = receiver.finish()
    assert status == 1
    assert one_error_line(err, "recv").startswith(
        "arraywire recv: error: the sender's header is not one this end reads: message of "
        "protocol version 9; this arraywire reads versions 1 to 2"
    )
    assert not output.exists()


def test_a_descriptor_block_the_receiver_cannot_read_ends_the_connection(
    backend: Backend, tmp_path: Path
) -> None:
    """No reply: the listening receiver drops the peer and waits for the next."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.arange(10))
    receiver = start_receiver(backend, output, "-q")
    port = receiver.port()
    block = struct.pack("<QBcH", 8, 1, b"C", 3) + struct.pack("<Q", 1) + b"<x9"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"AWIR\x01\x00\x00\x00" + struct.pack("<II", len(block), 1) + block)
        assert sock.recv(100) == b""
    match = receiver.wait_for(rb"arraywire recv: dropped [^\n]*\n")
    assert b": the sender's header is not one this end reads: array 0: unusable dtype" in match[0]
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q")
    assert sender.finish() == (0, "")
    assert receiver.finish()[0] == 0
    same_file_contents(output, source)


# --- refusal records, on connections whose opening turned them on ------------------------


def test_a_keyed_receiver_refuses_a_bad_descriptor_block_with_a_record(
    backend: Backend, tmp_path: Path
) -> None:
    """With a key both hellos announce control records: the receiver's Channel
    sends its reason as a refusal record before it closes."""
    output = tmp_path / "out.npy"
    key = tmp_path / "k"
    key.write_bytes(b"s3cret")
    receiver = start_receiver(backend, output, "-q", "--key-file", str(key))
    port = receiver.port()
    block = struct.pack("<QBcH", 8, 1, b"C", 3) + struct.pack("<Q", 1) + b"<x9"
    with arraywire.connect(("127.0.0.1", port), authkey=b"s3cret", timeout=TIMEOUT) as channel:
        sock = channel.socket
        sock.sendall(b"AWIR\x01\x00\x00\x00" + struct.pack("<II", len(block), 1) + block)
        sock.shutdown(socket.SHUT_WR)  # the receiver's drain ends at once
        start = receive_exactly(sock, control.SIZE)
        record = control.decode(start, hello.CONTROL)
        assert record.kind == control.REFUSAL
        reason = receive_exactly(sock, record.length).decode()
        assert reason.startswith("array 0: unusable dtype b'<x9'"), reason
    match = receiver.wait_for(rb"arraywire recv: dropped [^\n]*\n")
    assert b": the sender's header is not one this end reads: array 0: unusable dtype" in match[0]
    assert not output.exists()


def test_a_keyed_sender_reads_a_refusal_record_as_a_refusal(
    backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.npy"
    np.save(source, np.ones(1000))
    key = tmp_path / "k"
    key.write_bytes(b"s3cret")
    header = len(plan_send([np.ones(1000)]).header)
    with arraywire.listen(("127.0.0.1", 0), authkey=b"s3cret") as listener:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{listener.address[1]}", "-q",
                     "--key-file", str(key))
        with listener.accept(timeout=TIMEOUT) as channel:
            receive_exactly(channel.socket, header + 8000)
            channel.socket.sendall(control.encode_refusal("no room for it here"))
            status, err = sender.finish()
    assert status == 1
    assert one_error_line(err, "send") == (
        "arraywire send: error: the receiver refused: no room for it here"
    )
