"""The wire format as docs/PROTOCOL.md specifies it, through real sockets on
both backends and on the blocking and aio receive paths: the dtype grammar,
limits that senders check as receivers do, names and metadata, versions, a
clean end of stream, inputs that mean what they say, stream sockets only."""

from __future__ import annotations

import array
import asyncio
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from backends import Backend
from hypothesis import HealthCheck, given, settings, strategies as st
from sockets import Peer

import arraywire
from arraywire import IncompleteTransferError, ProtocolError, aio
from arraywire._wire.header import ARRAY_FIXED, DIM, HAS_NAMES, NAME_LENGTH, PREAMBLE

# --- helpers -------------------------------------------------------------------


def header(text: bytes, shape: tuple[int, ...], nbytes: int, version: int = 1) -> bytes:
    block = ARRAY_FIXED.pack(nbytes, len(shape), b"C", len(text))
    block += b"".join(DIM.pack(dim) for dim in shape) + text
    return PREAMBLE.pack(b"AWIR", version, bytes(3), len(block), 1) + block


def blocking_receive(
    sock: socket.socket, call: Callable[..., Any] = arraywire.recv_arrays, **kwargs: Any
) -> Any:
    sock.settimeout(10)
    return call(sock, **kwargs)


def aio_receive(
    sock: socket.socket, call: Callable[..., Any] = aio.recv_arrays, **kwargs: Any
) -> Any:
    sock.setblocking(False)
    return asyncio.run(asyncio.wait_for(call(sock, **kwargs), 10))


RECEIVERS = {"blocking": blocking_receive, "aio": aio_receive}


@pytest.fixture(params=list(RECEIVERS))
def receive(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return RECEIVERS[request.param]


def feed(data: bytes, receive: Callable[..., Any], close: bool = True, **kwargs: Any) -> Any:
    """Send data from a thread into a socketpair, close if asked, and receive."""
    a, b = socket.socketpair()

    def send() -> None:
        try:
            a.sendall(data)
            if close:
                a.shutdown(socket.SHUT_WR)
        except OSError:  # the receiver gave up first
            pass

    sender = Peer(send)
    try:
        return receive(b, **kwargs)
    finally:
        b.close()
        sender.result()
        a.close()


def outcome(data: bytes, receive: Callable[..., Any]) -> tuple[Any, ...]:
    try:
        feed(data, receive)
    except (ProtocolError, EOFError) as exc:
        return (type(exc), str(exc), getattr(exc, "bytes_done", None),
                getattr(exc, "bytes_expected", None))
    return ("accepted",)


# --- 1-3, 6: what a receiver refuses -------------------------------------------

REFUSED_TEXTS = [
    b"|V0", b"[]", b"[('a', [])]", b"[('a', '|S0')]", b"<U0", b"\x00", b"<i4\x00",
    b"f8", b"=f8", b"float64", b"<i4,<i4", b"<M8[generic]", b"<M8", b"<f16", b"|i4", b"<u1",
    b"[('a', '<i4')] ", b"[('a', '<i4')]#c", b"[('a', '<i4'),]", b'[("a", "<i4")]',
    b"[('a', '<i4'), ('a', '<f8')]", b"[('', '<i4')]", b"[('a', '|O')]", b"|O",
    b"[" * 40 + b"('a', '<i4')" + b"]" * 40, b"[('a', '<i4', (0,))]", b"[('a', '<i4', (2))]",
    b"\xff\xfe",
]


@pytest.mark.parametrize("text", REFUSED_TEXTS, ids=repr)
def test_texts_outside_the_grammar_are_refused(backend: Backend, receive, text: bytes) -> None:
    with pytest.raises(ProtocolError, match="array 0"):
        feed(header(text, (1,), 8), receive)


def test_zero_extent_shapes_that_numpy_cannot_allocate(backend: Backend, receive) -> None:
    with pytest.raises(ProtocolError, match="overflows"):
        feed(header(b"<f8", (0, 2**63 - 1), 0), receive)
    assert feed(header(b"<f8", (0, 2**40), 0), receive)[0].shape == (0, 2**40)


def test_no_limit_still_refuses_what_no_machine_allocates(backend: Backend, receive) -> None:
    huge = header(b"|u1", (2**62,), 2**62)
    with pytest.raises(ProtocolError, match="the format's limit"):
        feed(huge, receive, close=False, max_bytes=None)


def test_max_bytes_error_says_how_to_lift_it(backend: Backend, receive) -> None:
    with pytest.raises(ProtocolError, match=r"max_bytes=100; pass max_bytes=None"):
        feed(header(b"<f8", (100,), 800), receive, max_bytes=100)


def test_cut_inside_the_descriptors_counts_bytes_expected_past_bytes_done(
    backend: Backend, receive
) -> None:
    message = header(b"<f8", (10,), 80)
    with pytest.raises(IncompleteTransferError) as info:
        feed(message[:20], receive)
    assert info.value.bytes_done == 20
    assert info.value.bytes_expected == len(message) >= info.value.bytes_done


# --- 4, 6: what numpy produces either round-trips or is refused before sending ---

CORPUS = [
    np.dtype(code) for code in "?bBhHiIlLqQefdFD"
] + [np.dtype(code).newbyteorder(">") for code in "hHiIqQefdFD"] + [
    np.dtype("S1"), np.dtype("S300"), np.dtype("<U1"), np.dtype(">U7"), np.dtype("V12"),
    np.dtype("M8[ns]"), np.dtype(">m8[10us]"), np.dtype("M8[Y]"), np.dtype("M8[3D]"),
    np.dtype([("x", "<i4"), ("y", ">f8")]),
    np.dtype([("x", "u1"), ("y", "<f8")], align=True),
    np.dtype({"names": ["a", "b"], "formats": ["u1", "<i8"], "offsets": [0, 16], "itemsize": 32}),
    np.dtype([(("a title", "a"), "<i4"), (("b title", "b"), "S3")]),
    np.dtype([("sub", "<i2", (2, 3)), ("one", "<f4", (1,))]),
    np.dtype([("outer", [("inner", [("leaf", "<u2", (2,))]), ("pad", "V3")], (2,))]),
    np.dtype([("a", np.dtype(("<i4", (2,))), (3,))]),
    np.dtype([("it's \\ 'quoted'", "<f8"), ("ünïcødé 名前", "u1")]),
    np.dtype([(f"field{i}", "<f4") for i in range(150)]),
    np.dtype([("x" * 1000, "<i4")]),
]
# numpy's own .npy test corpus: dtypes whose text is over the limit
TOO_LONG = [
    np.dtype("i," * 10000 + "i"),
    np.dtype([((f"{i}" * 100), "<f8") for i in range(500)]),
    np.dtype([(f"field{i}", "<f4") for i in range(400)]),
]


@pytest.mark.parametrize("dtype", CORPUS, ids=str)
def test_corpus_round_trips(backend: Backend, receive, dtype: np.dtype) -> None:
    sent = np.zeros((3, 2), dtype)
    sent.view(np.uint8)[...] = np.arange(sent.nbytes, dtype=np.uint64).astype(np.uint8).reshape(
        sent.view(np.uint8).shape
    )
    a, b = socket.socketpair()
    with a, b:
        receiver = Peer(receive, b)
        arraywire.send_array(sent, a)
        (got,) = receiver.result()
    assert got.dtype == dtype and got.shape == sent.shape
    assert got.tobytes() == sent.tobytes()


@pytest.mark.parametrize("dtype", TOO_LONG, ids=lambda d: f"{len(str(d))}-chars")
def test_dtypes_over_the_text_limit_are_refused_before_sending(backend: Backend, dtype) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="over the limit of 4,096 bytes"):
            arraywire.send_array(np.zeros(2, dtype), a)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing was sent


def test_too_many_arrays_for_one_header_are_refused_before_sending(backend: Backend) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="over the limit of 1,048,576 bytes"):
            arraywire.send_arrays([np.zeros(1)] * 50_000, a)
        with pytest.raises(ValueError, match="at most 32"):
            arraywire.send_array(np.zeros((1,) * 33), a)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)


def test_overlapping_fields_have_no_text() -> None:
    overlapping = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i2"], "offsets": [0, 2]})
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match="no exact text"):
        arraywire.send_array(np.zeros(2, overlapping), a)


# --- 7: inputs mean what they say ------------------------------------------------


@pytest.mark.parametrize(
    ("item", "dtype", "shape"),
    [
        (b"hello", np.uint8, (5,)),
        (bytearray(b"hello"), np.uint8, (5,)),
        (memoryview(b"hello"), np.uint8, (5,)),
        (array.array("d", [1.5, 2.5]), np.float64, (2,)),
        ([1, 2, 3], np.asarray([1, 2, 3]).dtype, (3,)),
        ((1.5, 2.5), np.float64, (2,)),
        (7, np.asarray(7).dtype, ()),
        (np.float32(2.5), np.float32, ()),
    ],
    ids=lambda value: type(value).__name__,
)
def test_buffers_arrive_as_they_describe_themselves(
    backend: Backend, receive, item: Any, dtype: Any, shape: tuple[int, ...]
) -> None:
    a, b = socket.socketpair()
    with a, b:
        receiver = Peer(receive, b)
        arraywire.send_array(item, a)
        (got,) = receiver.result()
    assert (got.dtype, got.shape) == (np.dtype(dtype), shape)
    np.testing.assert_array_equal(got, np.asarray(memoryview(item)) if isinstance(
        item, (bytes, bytearray, memoryview, array.array)) else np.asarray(item))


class ExtensionArray:
    """What a pandas extension array looks like to arraywire: a dtype that is
    not numpy's, and an __array__ that would invent values for missing ones."""

    dtype = "Int64"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array([1.0, np.nan])


@pytest.mark.parametrize(
    ("item", "advice"),
    [
        (np.ma.masked_array([1, 2], mask=[0, 1]), "filled"),
        ("hello", "numpy.asarray"),
        ({"x": np.zeros(2)}, "mapping of names"),
        (ExtensionArray(), "to_numpy"),
    ],
    ids=["masked", "str", "mapping-item", "extension-array"],
)
def test_inputs_that_would_lose_information_are_refused(backend: Backend, item, advice) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TypeError, match=advice):
            arraywire.send_array(item, a)
        with pytest.raises(TypeError, match=advice):
            arraywire.send_arrays([np.zeros(1), item], a)
        a.setblocking(False)
        with pytest.raises(TypeError, match=advice):
            asyncio.run(aio.send_array(item, a))
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)


# --- names and metadata --------------------------------------------------------


def test_named_arrays_and_metadata_round_trip(backend: Backend, receive) -> None:
    sent = {"weights": np.arange(6.0).reshape(2, 3), "labels": np.array([3, 1], np.int8),
            "ünï": np.zeros(0)}
    a, b = socket.socketpair()
    with a, b:
        arrays_receiver = Peer(receive, b)
        arraywire.send_arrays(sent, a, metadata=b"step=7")
        got = arrays_receiver.result()
        call = aio.recv_message if receive is aio_receive else arraywire.recv_message
        message_receiver = Peer(receive, b, call)
        arraywire.send_arrays(sent, a, metadata=b"step=8")
        message = message_receiver.result()
    assert isinstance(got, dict) and list(got) == list(sent)
    for name in sent:
        np.testing.assert_array_equal(got[name], sent[name])
        assert got[name].dtype == sent[name].dtype
    assert message.metadata == b"step=8" and list(message.arrays) == list(sent)


def test_unnamed_messages_stay_lists_and_version_1(backend: Backend, receive) -> None:
    a, b = socket.socketpair()
    with a, b:
        receiver = Peer(receive, b)
        arraywire.send_arrays([np.zeros(2), np.ones(3)], a)
        got = receiver.result()
        arraywire.send_array(np.zeros(1), a)
        assert b.recv(5)[4] == 1  # the version byte
    assert isinstance(got, list) and [x.shape for x in got] == [(2,), (3,)]


def test_metadata_over_the_receivers_cap_is_refused(backend: Backend, receive) -> None:
    a, b = socket.socketpair()
    with a, b:
        call = aio.recv_message if receive is aio_receive else arraywire.recv_message

        def receive_capped(sock: socket.socket) -> Any:
            return receive(sock, lambda s: call(s, max_metadata=10))

        receiver = Peer(receive_capped, b)
        arraywire.send_array(np.zeros(1), a, metadata=bytes(11))
        with pytest.raises(ProtocolError, match="max_metadata=10"):
            receiver.result()


def test_bad_names_are_refused_before_sending(backend: Backend) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TypeError, match="names must be str"):
            arraywire.send_arrays({1: np.zeros(1)}, a)
        with pytest.raises(ValueError, match="1 to 1024 bytes"):
            arraywire.send_arrays({"": np.zeros(1)}, a)


def test_a_newer_version_is_refused_naming_both(backend: Backend, receive) -> None:
    message = header(b"<f8", (1,), 8, version=3) + bytes(8)
    with pytest.raises(ProtocolError, match="version 3; this arraywire reads versions 1 to 2"):
        feed(message, receive)


def test_version_1_messages_are_read(backend: Backend, receive) -> None:
    message = header(b"[('a', '<i4'), ('b', '|S2')]", (2,), 12) + bytes(range(12))
    (got,) = feed(message, receive)
    assert got.dtype.names == ("a", "b") and got.tobytes() == bytes(range(12))


# --- 8: a clean end of stream ----------------------------------------------------


def test_a_clean_close_is_eof_and_a_cut_is_incomplete(backend: Backend, receive) -> None:
    with pytest.raises(EOFError, match="between messages") as clean:
        feed(b"", receive)
    assert type(clean.value) is EOFError
    with pytest.raises(IncompleteTransferError):
        feed(b"AWIR", receive)


# --- 9: stream sockets only -----------------------------------------------------

SENDS = [
    lambda s: arraywire.send_from(b"x", s),
    lambda s: arraywire.sendmsg_from([b"x"], s),
    lambda s: arraywire.send_array(np.zeros(1), s),
    lambda s: asyncio.run(aio.send_array(np.zeros(1), s)),
    lambda s: asyncio.run(aio.send_from(b"x", s)),
]
RECEIVES = [
    lambda s: arraywire.recv_into(bytearray(1), s),
    lambda s: arraywire.recvmsg_into([bytearray(1)], s),
    lambda s: arraywire.recv_array(s),
    lambda s: asyncio.run(aio.recv_array(s)),
    lambda s: asyncio.run(aio.recv_into(bytearray(1), s)),
]


@pytest.mark.parametrize("kind", ["SOCK_DGRAM", "SOCK_SEQPACKET"])
@pytest.mark.parametrize("call", SENDS + RECEIVES)
def test_only_stream_sockets(backend: Backend, kind: str, call) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, getattr(socket, kind))
    with a, b:
        a.setblocking(False)
        with pytest.raises(TypeError, match="needs a stream socket"):
            call(a)


# --- random and mutated headers: only the engine's errors ------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    # the backend fixture's choice holds for every example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VALID = [
    header(b"<f8", (3,), 24) + bytes(24),
    header(b"[('a', '<i4', (2,)), (('t', 'b'), '|S3')]", (2,), 22) + bytes(22),
]


@FUZZ
@given(data=st.data())
def test_mutated_headers_give_only_the_engines_errors(backend: Backend, data: st.DataObject) -> None:
    message = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 4))):
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        message = message[: data.draw(st.integers(0, len(message)))]
    check_only_engine_errors(bytes(message))


@FUZZ
@given(message=st.binary(max_size=200))
def test_random_bytes_give_only_the_engines_errors(backend: Backend, message: bytes) -> None:
    check_only_engine_errors(message)


def check_only_engine_errors(message: bytes) -> None:
    results = []
    for receive in RECEIVERS.values():
        try:
            results.append(("ok", [x.tobytes() for x in feed(message, receive)]))
        except (ProtocolError, EOFError) as exc:  # IncompleteTransferError is an EOFError
            results.append((type(exc), str(exc)))
    assert results[0] == results[1]


def test_repeated_names_are_refused(backend: Backend, receive) -> None:
    descriptor = ARRAY_FIXED.pack(8, 1, b"C", 3) + DIM.pack(1) + b"<f8" + NAME_LENGTH.pack(1) + b"x"
    block = descriptor * 2
    message = PREAMBLE.pack(b"AWIR", 2, bytes((HAS_NAMES, 0, 0)), len(block), 2) + block
    with pytest.raises(ProtocolError, match="array 1: name 'x' repeated"):
        feed(message + bytes(16), receive)
