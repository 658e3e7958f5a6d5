"""The message engine sans I/O, as h11 is tested: plans and receives fed
bytes from a buffer by a driver of a few lines, no socket. The drivers here
do what ``_drivers.blocking.read_into`` and ``_sync.channel.Channel._read``
do: fill each read, report ``moved``, and on a failure call ``fail`` and
``end_of_stream``."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from arraywire._wire import engine
from arraywire._wire.engine import (
    DRAIN_BYTES,
    STAGING_BYTES,
    STRIPE_BYTES,
    MessageProgress,
    Packed,
    Receive,
    Stripes,
    buffered_reads,
    plan_send,
    split_bytes,
    stripe_sizes,
    writable_bytes,
)
from arraywire._wire.errors import IncompleteTransferError, ProtocolError
from arraywire._wire.header import ArraySpec
from arraywire._wire.limits import CLEAN_END

SOME = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from(["|u1", "<i2", ">i4", "<f8", ">c16", "|S3", "<U2", "<M8[us]", "|b1"])
ARRAYS = hnp.arrays(DTYPES.map(np.dtype), hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))


# --- tiny drivers -----------------------------------------------------------------


class Stream:
    """Bytes served in pieces: ``sizes`` gives each receive's most (cycled)."""

    def __init__(self, data: bytes, sizes: list[int] | None = None) -> None:
        self.data = data
        self.at = 0
        self.sizes = sizes or [1 << 30]
        self.calls = 0

    def recv_into(self, view: memoryview) -> int:
        most = self.sizes[self.calls % len(self.sizes)]
        self.calls += 1
        count = min(len(view), most, len(self.data) - self.at)
        view[:count] = self.data[self.at : self.at + count]
        self.at += count
        return count

    def fill(self, buffers: list[Any], progress: Any = None) -> int:
        """What a core's recvmsg_into does: fill every buffer, or raise."""
        views = [writable_bytes(buffer) for buffer in buffers]
        total = sum(len(view) for view in views)
        done = 0
        for view in views:
            filled = 0
            while filled < len(view):
                count = self.recv_into(view[filled:])
                if not count:
                    raise IncompleteTransferError(done + filled, total)
                filled += count
                if progress is not None:
                    progress(done + filled, total)
            done += filled
        return done


def drive(message: Receive, stream: Stream, reads: Any = None) -> None:
    """read_into's loop over an in-memory stream."""
    try:
        for buffers in message.reads() if reads is None else reads:
            reporter = message.reporter
            part = None if reporter is None else reporter.part(message.offset)
            message.moved(stream.fill(buffers, part))
    except BaseException as exc:
        failed(message, exc)
        raise


def failed(message: Receive, exc: BaseException) -> None:
    """What both drivers do on a failure: count it, and end cleanly if it was."""
    message.fail(exc)
    end = message.end_of_stream(exc)
    if end is not None:
        raise end from None


def wire(plan: engine.SendPlan) -> bytes:
    """What a driver writes for a plan: each batch whole, then ``moved``."""
    out = bytearray()
    for batch in plan.batches():
        written = b"".join(bytes(writable_bytes(b) if not isinstance(b, bytes) else b)
                           for b in batch)
        out += written
        plan.moved(len(written))
    assert plan.complete() == len(out) == plan.total
    return bytes(out)


def receive(data: bytes, sizes: list[int] | None = None, **kwargs: Any) -> Receive:
    message = Receive(kwargs.pop("max_bytes", 1 << 30), **kwargs)
    drive(message, Stream(data, sizes))
    return message


def same(got: list[np.ndarray], sent: list[np.ndarray]) -> None:
    assert len(got) == len(sent)
    for a, b in zip(got, sent, strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# --- plan_send ------------------------------------------------------------------------


def test_a_contiguous_plan_is_one_batch_header_first() -> None:
    a, b = np.arange(6, dtype="<i2"), np.asfortranarray(np.ones((2, 3)))
    plan = plan_send([a, b, np.zeros(0)])
    (batch,) = plan.batches()
    assert batch[0] is plan.header and batch[1] is a and batch[2] is b and len(batch) == 3
    assert plan.total == len(plan.header) + 12 + 48
    assert plan.header[16 + 23 + 9 : 16 + 23 + 10] == b"F"  # the second descriptor's order
    assert plan.reporter is None


def test_a_strided_array_is_packed_through_the_staging_buffer() -> None:
    base = np.arange(1_200_000, dtype="<f8")
    strided = base[::2]  # 4.8 MB of 8-byte runs: more than one staging buffer
    plan = plan_send([np.arange(3, dtype="|u1"), strided])
    assert [type(s) for s in plan.segments] == [np.ndarray, Packed]
    batches = []
    for batch in plan.batches():  # each copied before the next, as a driver sends it
        batches.append([bytes(writable_bytes(b) if not isinstance(b, bytes) else b) for b in batch])
        plan.moved(sum(len(b) for b in batches[-1]))
    assert [len(b) for b in batches] == [3, 1]
    assert [len(piece) for piece in batches[0][2:] + batches[1]] == [STAGING_BYTES, 4_800_000 - STAGING_BYTES]
    assert b"".join(b"".join(b) for b in batches) == plan.header + b"\0\1\2" + strided.tobytes()
    assert plan.offset == plan.total


def test_long_runs_of_a_strided_array_go_as_views() -> None:
    rows = np.zeros((3, 20_000), "<f8")[:, :10_000]  # 80 kB runs, at least MIN_RUN_BYTES
    plan = plan_send([rows])
    assert len(plan.segments) == 3 and all(np.shares_memory(s, rows) for s in plan.segments)
    assert wire(plan)[len(plan.header) :] == rows.tobytes()


@pytest.mark.parametrize(
    ("bytes_done", "out_of_step", "counted"),
    [(None, True, 10), (0, True, 10), (5, True, 15), (plan_send([np.zeros(4)]).total - 10, False, None)],
)
def test_a_failed_send_counts_from_the_message_start(bytes_done, out_of_step, counted) -> None:
    plan = plan_send([np.zeros(4)])
    plan.moved(10)
    exc = OSError("reset")
    exc.bytes_done = bytes_done  # type: ignore[attr-defined]
    assert plan.fail(exc) is out_of_step
    assert exc.bytes_done == (counted or plan.total)  # type: ignore[attr-defined]


def test_a_send_that_failed_before_its_first_byte_is_in_step() -> None:
    plan = plan_send([np.zeros(4)])
    exc = TimeoutError()
    assert plan.fail(exc) is False and exc.bytes_done == 0  # type: ignore[attr-defined]
    cut = IncompleteTransferError(3, 99)
    plan.moved(20)
    assert plan.fail(cut) is True
    assert (cut.bytes_done, cut.bytes_expected) == (23, plan.total)


# --- striping ---------------------------------------------------------------------------


def test_stripe_sizes_of_the_documented_example() -> None:
    assert stripe_sizes(400_000_000, 4) == [100_003_840] * 3 + [99_988_480]
    assert stripe_sizes(STRIPE_BYTES, 2) == [STRIPE_BYTES // 2] * 2
    assert stripe_sizes(STRIPE_BYTES + 1, 3) == [352_256, 352_256, 344_065]
    sizes = stripe_sizes(STRIPE_BYTES, 300)  # pages run out before the streams
    assert sizes == [4096] * 256 + [0] * 44


@given(st.integers(1, 1 << 40), st.integers(1, 64))
def test_stripe_sizes_cover_the_payload_in_whole_pages(payload: int, streams: int) -> None:
    sizes = stripe_sizes(payload, streams)
    assert len(sizes) == streams and sum(sizes) == payload
    nonzero = [size for size in sizes if size]
    assert all(size % 4096 == 0 for size in nonzero[:-1]) and nonzero[-1] <= nonzero[0]
    assert sizes == sorted(sizes, reverse=True)


def test_split_bytes_cuts_views_across_buffers() -> None:
    a, b = np.arange(5, dtype=np.uint8), np.arange(10, 17, dtype=np.uint8)
    parts = split_bytes([a, b], [3, 0, 6, 3])
    assert [[p.tobytes() for p in part] for part in parts] == [
        [b"\0\1\2"], [], [b"\3\4", bytes(range(10, 14))], [bytes(range(14, 17))]
    ]
    assert all(np.shares_memory(p, a) or np.shares_memory(p, b) for part in parts for p in part)


def test_plan_stripes_header_first_on_stream_0() -> None:
    array = np.arange(STRIPE_BYTES // 8 * 3, dtype="<f8")  # 3 MiB
    plan = plan_send([array])
    assert plan.stripes(1) is None and plan_send([np.zeros(STRIPE_BYTES // 8 - 1)]).stripes(4) is None
    parts = plan.stripes(4)
    assert parts is not None and len(parts) == 4 and parts[0][0] is plan.header
    sent = [b"".join(bytes(p) for p in part) for part in parts]
    assert [len(s) for s in sent] == [len(plan.header) + 786_432, 786_432, 786_432, 786_432]
    assert b"".join(sent) == plan.header + array.tobytes()


def test_a_striped_message_round_trips_over_four_in_memory_streams() -> None:
    arrays = [np.arange(300_000, dtype="<i4"), np.asfortranarray(np.ones((500, 300)))]
    plan = plan_send(arrays)
    streams = [Stream(b"".join(bytes(writable_bytes(p) if not isinstance(p, bytes) else p)
                               for p in part), [7919]) for part in plan.stripes(4) or []]
    message = Receive(None, streams=4)
    reads = message.reads()
    for buffers in reads:
        if isinstance(buffers, Stripes):
            assert buffers.sizes == stripe_sizes(plan.total - len(plan.header), 4)
            assert [sum(p.nbytes for p in part) for part in buffers.parts or []] == buffers.sizes
            message.moved(sum(s.fill(part) for s, part in zip(streams, buffers.parts or [], strict=True)))
        else:
            message.moved(streams[0].fill(buffers))
    same(message.result(), arrays)
    assert message.offset == plan.total and all(s.at == len(s.data) for s in streams)


def test_a_striped_misfit_is_drained_without_parts() -> None:
    data = wire(plan_send([np.zeros(STRIPE_BYTES), np.zeros(1)]))
    message = Receive(None, one_array=True, streams=2)
    reads = list(iter_header(message, data))
    assert reads == [Stripes(stripe_sizes(len(data) - message.offset, 2), None)]
    assert message.arrays == []


def iter_header(message: Receive, data: bytes) -> Any:
    """Fill the preamble and block from data; return the reads that follow."""
    stream = Stream(data)
    reads = message.reads()
    for _ in range(2):
        message.moved(stream.fill(next(reads)))
    return reads


# --- Receive ------------------------------------------------------------------------


@SOME
@given(st.lists(ARRAYS, max_size=4), st.lists(st.integers(1, 64), min_size=1, max_size=8),
       st.booleans())
def test_what_is_planned_arrives_in_any_chunks(arrays, sizes, named) -> None:
    sent: Any = {f"n{i}": a for i, a in enumerate(arrays)} if named else arrays
    data = wire(plan_send(sent, metadata=b"meta" if named else None))
    message = receive(data, sizes)
    got = message.message()
    assert message.offset == message.total == len(data)
    if named:
        assert list(got.arrays) == list(sent) and got.metadata == b"meta"
        same(list(got.arrays.values()), arrays)
    else:
        assert got.metadata == b"" and isinstance(got.arrays, list)
        same(got.arrays, arrays)


def test_the_reads_are_preamble_block_then_the_arrays() -> None:
    data = wire(plan_send([np.arange(3, dtype="<i2"), np.ones(2)]))
    message = Receive(1 << 30)
    reads = message.reads()
    stream = Stream(data)
    (preamble,) = next(reads)
    assert len(preamble) == 16 and message.total is None
    message.moved(stream.fill([preamble]))
    (block,) = next(reads)
    assert len(block) == len(data) - 16 - 22
    message.moved(stream.fill([block]))
    arrays = next(reads)
    assert [(a.dtype.str, a.shape) for a in arrays] == [("<i2", (3,)), ("<f8", (2,))]
    assert message.total == len(data) and message.specs[1].nbytes == 16
    message.moved(stream.fill(arrays))
    assert next(reads, None) is None
    same(message.result(), [np.arange(3, dtype="<i2"), np.ones(2)])


def test_a_callable_out_is_asked_once_the_header_is_in() -> None:
    data = wire(plan_send([np.arange(10, dtype=">f4").reshape(2, 5)]))
    asked = []

    def target(spec: ArraySpec) -> np.ndarray:
        asked.append((spec.dtype.str, spec.shape, spec.order, spec.nbytes))
        return np.empty(spec.shape, spec.dtype)

    message = receive(data, one_array=True, out=target)
    assert asked == [(">f4", (2, 5), "C", 40)]
    same(message.result(), [np.arange(10, dtype=">f4").reshape(2, 5)])

    def refuse(spec: ArraySpec) -> np.ndarray:
        raise LookupError(spec.nbytes)

    refused = Receive(None, one_array=True, out=refuse)
    stream = Stream(data)
    with pytest.raises(LookupError, match="40"):
        drive(refused, stream, refused.reads())
    assert refused.offset == len(data) - 40  # the payload is left unread


def test_the_simple_header_of_one_unnamed_array() -> None:
    data = wire(plan_send([np.zeros(3)]))
    assert receive(data).simple_header == data[:-24]
    assert receive(wire(plan_send([np.zeros(3), np.zeros(1)]))).simple_header is None
    assert receive(wire(plan_send({"x": np.zeros(3)}))).simple_header is None
    assert receive(wire(plan_send([np.zeros(3)], metadata=b""))).simple_header is None


def test_into_out_and_misfits_that_are_drained() -> None:
    data = wire(plan_send([np.arange(6.0).reshape(2, 3)]))
    out = np.empty((2, 3))
    message = receive(data, one_array=True, out=out)
    assert message.result()[0] is out and out.tolist() == [[0, 1, 2], [3, 4, 5]]
    misfits = [
        (np.empty((3, 2)), "out is float64 (3, 2) but the message holds float64 (2, 3)"),
        (np.empty((2, 3), np.float32), "out is float32 (2, 3) but the message holds float64 (2, 3)"),
        (np.empty((2, 3), order="F"), "out must be C-contiguous like the message's array"),
        (np.broadcast_to(np.empty(3), (2, 3)), "out is read-only"),
    ]
    for out, problem in misfits:
        message = receive(data, one_array=True, out=out)
        assert message.offset == len(data)  # drained: the stream stays in step
        with pytest.raises(ValueError) as info:
            message.result()
        assert str(info.value) == problem
    two = receive(wire(plan_send([np.zeros(DRAIN_BYTES), np.zeros(1)])), one_array=True)
    with pytest.raises(ValueError, match=r"^expected a message with one array, got one with 2$"):
        two.result()
    assert two.arrays == []


def test_a_drained_payload_uses_bounded_scratch() -> None:
    data = wire(plan_send([np.zeros(DRAIN_BYTES // 4), np.zeros(DRAIN_BYTES // 16)]))
    message = Receive(None, one_array=True)
    reads = iter_header(message, data)
    stream = Stream(data[message.offset :])
    seen = []
    for buffers in reads:  # a scratch buffer of DRAIN_BYTES at most, reused
        seen.append([(b.nbytes, b.base is not None) for b in buffers])
        message.moved(stream.fill(buffers))
    assert seen == [[(DRAIN_BYTES, True)]] * 2 + [[(DRAIN_BYTES // 2, True)]]
    assert message.offset == message.total == len(data)


def test_max_bytes_is_refused_before_any_payload_is_named() -> None:
    data = wire(plan_send([np.zeros(100), np.zeros(100)]))
    message = Receive(1000)
    named = []
    with pytest.raises(ProtocolError) as info:
        for buffers in message.reads():
            named.append([len(writable_bytes(b)) for b in buffers])
            message.moved(Stream(data[message.offset :]).fill(buffers))
    assert str(info.value) == (
        "message declares at least 1,600 payload bytes, over max_bytes=1,000; "
        "pass max_bytes=None to lift the limit"
    )
    assert named == [[16], [len(data) - 16 - 1600]] and message.arrays == []
    with pytest.raises(ProtocolError, match="max_metadata=3"):
        receive(wire(plan_send([], metadata=b"abcd")), max_metadata=3)


# --- a stream cut at every offset ---------------------------------------------------------


@pytest.mark.parametrize("driver", ["blocking", "read-ahead"])
@pytest.mark.parametrize("kind", ["arrays", "misfit"])
def test_a_cut_at_every_offset_counts_the_messages_bytes(kind: str, driver: str) -> None:
    plan = plan_send([np.arange(5, dtype="<i4"), np.zeros((2, 2), "|u1")])
    data = wire(plan)
    block_end = len(plan.header)
    for cut in range(len(data)):
        message = Receive(None, one_array=kind == "misfit")
        with pytest.raises(EOFError) as info:
            if driver == "blocking":
                drive(message, Stream(data[:cut], [3]))
            else:
                channel_read(message, Inbox(Stream(data[:cut], [3])), 1 << 16)
        exc = info.value
        if cut == 0:
            assert type(exc) is EOFError and str(exc) == CLEAN_END
            continue
        assert isinstance(exc, IncompleteTransferError)
        expected = 16 if cut < 16 else block_end if cut < block_end else len(data)
        assert (exc.bytes_done, exc.bytes_expected) == (cut, expected), cut
        assert str(exc) == f"peer closed the connection after {cut:,} of {expected:,} bytes"


def test_fail_says_when_the_stream_is_out_of_step() -> None:
    message = Receive(None)
    assert message.fail(IncompleteTransferError(0, 16)) is False
    assert message.end_of_stream(IncompleteTransferError(0, 16)) is not None
    message.moved(16)
    cut = IncompleteTransferError(2, 30)
    assert message.fail(cut) is True and (cut.bytes_done, cut.bytes_expected) == (18, 46)
    assert message.end_of_stream(cut) is None
    assert message.end_of_stream(OSError()) is None


# --- buffered_reads ------------------------------------------------------------------------


class Inbox:
    """A read-ahead buffer over a Stream, as the core's Inbox is over a socket."""

    def __init__(self, stream: Stream, size: int = 256 << 10) -> None:
        self.stream = stream
        self.memory = bytearray(size)
        self.start = self.end = 0

    @property
    def buffered(self) -> int:
        return self.end - self.start

    def fill(self) -> int:
        kept = self.memory[self.start : self.end]
        self.memory[: len(kept)] = kept
        self.start, self.end = 0, len(kept)
        count = self.stream.recv_into(memoryview(self.memory)[self.end :])
        self.end += count
        return count

    def take(self, obj: Any) -> int:
        view = memoryview(obj).cast("B")
        count = min(len(view), self.buffered)
        view[:count] = self.memory[self.start : self.start + count]
        self.start += count
        return count


def channel_read(message: Receive, inbox: Inbox, direct: int) -> list[Any]:
    """Channel._read over an Inbox; returns the requests it saw."""
    seen: list[Any] = []
    try:
        for request in buffered_reads(message, inbox, direct):
            if isinstance(request, int):
                seen.append(request)
                if not inbox.fill():
                    raise IncompleteTransferError(0, request)
            else:
                seen.append([len(view) for view in request])
                message.moved(inbox.stream.fill(request))
    except BaseException as exc:
        failed(message, exc)
        raise
    return seen


@SOME
@given(st.lists(ARRAYS, min_size=1, max_size=3), st.lists(st.integers(1, 300), min_size=1),
       st.sampled_from([1, 64, 1 << 16]), st.integers(0, 2))
def test_buffered_reads_deliver_back_to_back_messages(arrays, sizes, direct, extra) -> None:
    data = b"".join(wire(plan_send(arrays[: i + 1])) for i in range(extra + 1))
    inbox = Inbox(Stream(data, sizes))
    for i in range(extra + 1):
        message = Receive(None)
        channel_read(message, inbox, direct)
        same(message.result(), arrays[: i + 1])
    assert inbox.stream.at == len(data) and inbox.buffered == 0
    with pytest.raises(EOFError, match="between messages"):
        channel_read(Receive(None), inbox, direct)


def test_buffered_reads_ask_for_fills_then_read_large_payloads_directly() -> None:
    payload = np.arange(100_000, dtype=np.uint8)
    data = wire(plan_send([payload]))  # a header of 39 bytes
    inbox = Inbox(Stream(data, [10, 1000]))
    message = Receive(None)
    # a fill for the preamble (10 bytes come), one for its 6 left (1000 come:
    # the block and 971 payload bytes), then the rest straight from the stream
    assert channel_read(message, inbox, 64 << 10) == [16, 6, [99_029]]
    assert message.result()[0].tobytes() == payload.tobytes()
    small = Inbox(Stream(data, [10, 1000]))
    message = Receive(None)
    assert channel_read(message, small, 1 << 20)[:4] == [16, 6, 99_029, 99_019]
    assert message.result()[0].tobytes() == payload.tobytes()


def test_buffered_reads_pass_stripes_on() -> None:
    data = wire(plan_send([np.zeros(STRIPE_BYTES, np.uint8)]))
    message = Receive(None, streams=3)
    inbox = Inbox(Stream(data[:200]))
    requests = buffered_reads(message, inbox, 1 << 16)
    assert next(requests) == 16
    inbox.fill()
    stripes = next(requests)
    assert isinstance(stripes, Stripes) and stripes.sizes == stripe_sizes(STRIPE_BYTES, 3)
    assert message.offset == 39 and inbox.buffered == 200 - 39


# --- progress -------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_progress_is_throttled_and_ends_exactly_once(clock: list[float]) -> None:
    calls: list[tuple[int, int]] = []
    progress = MessageProgress(lambda done, total: calls.append((done, total)), 1000)
    progress.report(0)
    progress.report(10)  # within PROGRESS_INTERVAL: dropped
    clock[0] += 0.1
    progress.part(500)(20, 400)  # a core call from offset 500 moved 20 of its 400
    progress.report(1000)
    progress.report(1200)
    progress.finish()
    assert calls == [(0, 1000), (520, 1000), (1000, 1000)]


def test_a_receives_progress_counts_message_bytes(clock: list[float]) -> None:
    data = wire(plan_send([np.zeros(1000, np.uint8)]))
    calls: list[tuple[int, int]] = []
    message = Receive(None, progress=lambda done, total: calls.append((done, total)))

    class Ticking(Stream):
        def recv_into(self, view: memoryview) -> int:
            clock[0] += 0.2
            return super().recv_into(view)

    drive(message, Ticking(data, [400]))
    assert calls == [(439, 1039), (839, 1039), (1039, 1039)]
    message.result()  # the end was reported: not again
    assert len(calls) == 3


def test_a_plans_progress_ends_with_the_message_size(clock: list[float]) -> None:
    calls: list[tuple[int, int]] = []
    plan = plan_send([np.zeros(10)], lambda done, total: calls.append((done, total)))
    assert plan.reporter is not None and plan.reporter.total == plan.total
    plan.reporter.part(0)(16, plan.total)
    wire(plan)
    assert calls == [(16, plan.total), (plan.total, plan.total)]
