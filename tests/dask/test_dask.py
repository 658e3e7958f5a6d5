"""The aw:// comm backend, under Dask distributed's own test harness
(gen_test: fresh loop, thread and comm leak checks; gen_cluster), on both
transport backends, plain and with TLS from Dask's Security."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys

import numpy as np
import pytest
import trustme
from hypothesis import given, strategies as st

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from dask_pairs import served_pair  # noqa: E402
from distributed.comm import connect, get_address_host, listen  # noqa: E402
from distributed.comm.core import CommClosedError, FatalCommClosedError  # noqa: E402
from distributed.comm.registry import get_backend  # noqa: E402
from distributed.protocol import Serialized, to_serialize  # noqa: E402
from distributed.protocol.serialize import merge_and_deserialize  # noqa: E402
from distributed.protocol.utils_test import get_host_array  # noqa: E402
from distributed.security import Security  # noqa: E402
from distributed.utils import get_ip  # noqa: E402
from distributed.utils_test import gen_cluster, gen_test  # noqa: E402

from arraywire import ProtocolError, aio  # noqa: E402
from arraywire._wire import dask_frames  # noqa: E402
from arraywire.dask_comm import ArraywireBackend, ArraywireComm  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # distributed's own deprecations are not arraywire's to fix
    "ignore::DeprecationWarning",
    "ignore::PendingDeprecationWarning",
)

# One certificate for every role: the test clusters run on one host
CA = trustme.CA()
CERT = CA.issue_cert("127.0.0.1", "localhost")


def pem(*blobs: trustme.Blob) -> str:
    return "".join(blob.bytes().decode() for blob in blobs)


def tls_security(ca: str, cert: str, key: str) -> Security:
    """TLS for the scheduler, workers and clients; plain connections refused."""
    return Security(
        tls_ca_file=ca,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )


# gen_cluster takes its Security when the test is defined: PEM text, no files
TLS = tls_security(pem(CA.cert_pem), pem(*CERT.cert_chain_pems), pem(CERT.private_key_pem))
PLAIN_AND_TLS = pytest.mark.parametrize("security", [None, TLS], ids=["plain", "tls"])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Security:
    """The same certificates as files, as a deployment has them."""
    where = tmp_path_factory.mktemp("tls")
    CA.cert_pem.write_to_path(where / "ca.pem")
    for blob in CERT.cert_chain_pems:
        blob.write_to_path(where / "cert.pem", append=True)
    CERT.private_key_pem.write_to_path(where / "key.pem")
    return tls_security(str(where / "ca.pem"), str(where / "cert.pem"), str(where / "key.pem"))


def check_tls(comm: ArraywireComm) -> None:
    """The comm runs inside TLS, and its peer showed the test certificate."""
    _, version, bits = comm.extra_info["cipher"]
    assert version.startswith("TLSv1.") and bits >= 128
    assert ("IP Address", "127.0.0.1") in comm.extra_info["peercert"]["subjectAltName"]


async def echo(comm: ArraywireComm) -> None:
    """A server that sends each message back until the peer leaves."""
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass
    finally:
        await comm.close()


def echo_server(**kwargs):
    """An echo listener, started by ``async with`` or ``await``."""
    # deserialize=False: arrays go back as they came, without pickle
    return listen("aw://127.0.0.1:0", echo, deserialize=False, **kwargs)


def test_the_entry_point_names_the_backend() -> None:
    assert isinstance(get_backend("aw"), ArraywireBackend)


def test_importing_arraywire_does_not_import_dask() -> None:
    code = "import sys, arraywire, arraywire.aio; print('distributed' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@gen_test()
async def test_ping_pong(backend) -> None:
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        assert isinstance(comm, ArraywireComm)
        for message in ({"op": "ping"}, {"op": "data", "x": b"z" * 100_000}, (1, 2.5, "three")):
            await comm.write(message)
            assert await comm.read() == message
        await comm.close()


@gen_test()
async def test_twenty_concurrent_clients(backend) -> None:
    async with echo_server() as listener:

        async def client(number: int) -> None:
            comm = await connect(listener.contact_address)
            try:
                for round_ in range(5):
                    payload = {"client": number, "round": round_, "x": to_serialize(np.full(1000, number))}
                    await comm.write(payload)
                    reply = await comm.read()
                    assert reply["client"] == number and reply["round"] == round_
                    np.testing.assert_array_equal(reply["x"], np.full(1000, number))
            finally:
                await comm.close()

        await asyncio.gather(*(client(n) for n in range(20)))


@gen_test()
async def test_explicit_close_makes_read_and_write_fail_at_once(backend) -> None:
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        assert not comm.closed()
        await comm.close()
        assert comm.closed()
        with pytest.raises(CommClosedError):
            await comm.read()
        with pytest.raises(CommClosedError):
            await comm.write({"op": "late"})
        comm.abort()  # again: harmless
        assert "(closed)" in repr(comm)


@PLAIN_AND_TLS
@gen_test()
async def test_implicit_close_reaches_the_peer(backend, security) -> None:
    comm, server_side = await served_pair(security=security)
    await comm.close()
    with pytest.raises(CommClosedError):
        await server_side.read()
    assert server_side.closed()
    with pytest.raises(CommClosedError):
        await server_side.write({"op": "after"})


@PLAIN_AND_TLS
@gen_test()
async def test_close_ends_a_read_in_progress(backend, security) -> None:
    comm, server_side = await served_pair(security=security)
    reading = asyncio.ensure_future(comm.read())
    await asyncio.sleep(0.05)
    await comm.close()
    with pytest.raises(CommClosedError):
        await asyncio.wait_for(reading, 10)
    with pytest.raises(CommClosedError):
        await server_side.read()
    await server_side.close()


@gen_test()
async def test_a_read_waiting_when_the_comm_is_aborted_fails_with_comm_closed(backend) -> None:
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        reading = asyncio.ensure_future(comm.read())
        await asyncio.sleep(0.05)
        comm.abort()
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(reading, 5)
        assert comm.closed()


@gen_test()
async def test_a_cancelled_read_leaves_the_comm_closed(backend) -> None:
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        reading = asyncio.ensure_future(comm.read())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert comm.closed()
        with pytest.raises(CommClosedError):
            await comm.read()


@PLAIN_AND_TLS
@gen_test()
async def test_an_abort_stops_a_large_send_in_progress(backend, security) -> None:
    client, server = await served_pair(security=security)
    # returns at once, as tcp://'s write: the 64 MB are queued, not sent
    await asyncio.wait_for(client.write({"x": to_serialize(np.zeros(8_000_000))}), 10)
    await asyncio.sleep(0.2)  # they cannot all be in the socket buffers: the send waits
    client.abort()
    assert client.closed()
    with pytest.raises(CommClosedError):
        await server.read()
    await server.close()
    with pytest.raises(CommClosedError):
        await client.write({"op": "after"})


@PLAIN_AND_TLS
@gen_test()
async def test_close_waits_for_the_write_in_progress(backend, security) -> None:
    client, server = await served_pair(security=security)
    payload = np.arange(4_000_000, dtype=np.float64)
    writing = asyncio.ensure_future(client.write({"x": to_serialize(payload)}))
    await asyncio.sleep(0)
    reading = asyncio.ensure_future(server.read())
    await client.close()
    assert writing.done() and not writing.exception()
    np.testing.assert_array_equal((await reading)["x"], payload)
    await server.close()


@gen_test()
async def test_comms_outlive_their_stopped_listener(backend) -> None:
    listener = await echo_server()
    address = listener.contact_address
    comm = await connect(address)
    listener.stop()
    await comm.write({"op": "still here"})
    assert await comm.read() == {"op": "still here"}
    await comm.close()
    with pytest.raises(OSError):
        await connect(address, timeout=0.5)


@gen_test()
async def test_connect_times_out_when_nobody_listens(backend) -> None:
    with socket.socket() as reserved:  # a port that refuses connections
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(f"aw://127.0.0.1:{port}", timeout=0.5)
        assert loop.time() - start < 5


@gen_test()
async def test_many_listeners(backend) -> None:
    listeners = [await echo_server() for _ in range(10)]
    try:
        assert len({listener.listen_address for listener in listeners}) == 10
        comms = [await connect(listener.contact_address) for listener in listeners]
        for number, comm in enumerate(comms):
            await comm.write({"n": number})
        assert [(await comm.read())["n"] for comm in comms] == list(range(10))
        for comm in comms:
            await comm.close()
    finally:
        for listener in listeners:
            listener.stop()


DTYPES = ["i1", "<u2", ">i4", "<i8", "<f4", ">f8", "<c16", "?", "S7", "<U3", "<M8[ns]", "<m8[s]", [("a", "<i4"), ("b", "<f8")]]


@pytest.mark.parametrize("deserialize", [True, False], ids=["deserialize", "serialized"])
@gen_test()
async def test_deserialization_on_and_off(backend, deserialize) -> None:
    arrays = {str(dtype): np.zeros(20, dtype=dtype) for dtype in DTYPES}
    for array in arrays.values():
        array.view(np.uint8)[:] = np.arange(array.nbytes, dtype=np.uint8)
    big = np.random.default_rng(1).random(1_000_000)  # 8 MB
    message = {"op": "data", "big": to_serialize(big), "arrays": {k: to_serialize(v) for k, v in arrays.items()}, "blob": b"b" * 8_000_000}
    received: asyncio.Queue = asyncio.Queue()

    async def keep(comm):
        await received.put(await comm.read())
        await comm.close()

    async with listen("aw://127.0.0.1:0", keep, deserialize=deserialize) as listener:
        comm = await connect(listener.contact_address)
        await comm.write(message)
        got = await received.get()
        await comm.close()

    def value(item):
        if deserialize:
            return item
        assert isinstance(item, Serialized)
        return merge_and_deserialize(item.header, item.frames)

    assert got["op"] == "data" and got["blob"] == message["blob"]
    np.testing.assert_array_equal(value(got["big"]), big)
    for name, array in arrays.items():
        out = value(got["arrays"][name])
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out.view(np.uint8), array.view(np.uint8))


@gen_test()
async def test_buffers_of_one_message_never_share_receive_memory(backend) -> None:
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        await comm.write({"data": to_serialize([np.array([1, 2]), np.array([3, 4])]), "big": to_serialize(np.ones(300_000))})
        reply = await comm.read()
        await comm.close()
    a, b = reply["data"]
    hosts = [get_host_array(a), get_host_array(b), get_host_array(reply["big"])]
    assert len({id(host) for host in hosts}) == 3
    np.testing.assert_array_equal(b, [3, 4])


@gen_test()
async def test_shards_of_one_buffer_rejoin_without_a_copy(backend, monkeypatch) -> None:
    received: list = []
    sent_frames: list = []

    def recording_to_frames(arrays):
        received.append(arrays)
        return unpack(arrays)

    def recording_to_arrays(frames):
        sent_frames.append(len(frames))
        return pack(frames)

    unpack, pack = dask_frames.to_frames, dask_frames.to_arrays
    monkeypatch.setattr(dask_frames, "to_frames", recording_to_frames)
    monkeypatch.setattr(dask_frames, "to_arrays", recording_to_arrays)
    big = np.arange(1_000_000, dtype=np.int64)  # 8 MB: eight shards of 1 MiB
    with dask.config.set({"distributed.comm.shard": "1 MiB"}):
        async with echo_server() as listener:
            comm = await connect(listener.contact_address)
            await comm.write({"x": to_serialize(big)})
            reply = await comm.read()
            await comm.close()
    assert sent_frames[-1] >= 2 + 8  # header, sub-header, the shards
    np.testing.assert_array_equal(reply["x"], big)
    host = get_host_array(reply["x"])
    assert any(host is array for array in received[-1])  # a received array, not a join
    assert host.nbytes == big.nbytes


@gen_test()
async def test_more_buffers_than_the_descriptor_limit_still_go_through(backend) -> None:
    count = dask_frames.MAX_BUFFER_ARRAYS + 50
    arrays = [np.full(3, n) for n in range(count)]
    async with echo_server() as listener:
        comm = await connect(listener.contact_address)
        await comm.write({"many": [to_serialize(array) for array in arrays]})
        reply = await comm.read()
        await comm.close()
    assert len(reply["many"]) == count
    for n, array in enumerate(reply["many"]):
        np.testing.assert_array_equal(array, [n, n, n])


@gen_test()
async def test_the_config_cap_refuses_a_larger_message(backend) -> None:
    with dask.config.set({"distributed.comm.aw.max-message-bytes": "1 MiB"}):
        client, server = await served_pair()
        await client.write({"x": to_serialize(np.zeros(10))})
        assert (await server.read())["x"].shape == (10,)
        await client.write({"x": to_serialize(np.zeros(200_000))})
        with pytest.raises(CommClosedError, match="1,048,576"):
            await server.read()
        assert server.closed()
        with pytest.raises(CommClosedError):
            await client.read()
        await client.close()


@gen_test()
async def test_a_message_that_is_not_dask_frames_closes_the_comm(backend) -> None:
    client, server = await served_pair()
    await aio.send_arrays([np.frombuffer(b"not a frame table", np.uint8)], client.socket)
    with pytest.raises(CommClosedError, match=r"ProtocolError.*starts with b'not '"):
        await server.read()
    assert server.closed()
    await client.close()


@gen_test()
async def test_encryption_required_without_tls_is_refused_with_a_clear_error(backend) -> None:
    no_tls = Security(require_encryption=True)
    refused = r"requires encryption .* no TLS is configured: refusing aw://127\.0\.0\.1:.*distributed\.comm\.tls"
    with pytest.raises(RuntimeError, match=refused):
        await listen("aw://127.0.0.1:0", echo, **no_tls.get_listen_args("scheduler"))
    with pytest.raises(RuntimeError, match=refused):
        await connect("aw://127.0.0.1:1", timeout=1, **no_tls.get_connection_args("client"))


@gen_test()
async def test_ping_pong_over_tls_with_encryption_required(backend, tls_files) -> None:
    assert tls_files.require_encryption
    big = np.random.default_rng(3).random(1_000_000)  # 8 MB: more than one TLS write
    async with echo_server(**tls_files.get_listen_args("scheduler")) as listener:
        assert listener.contact_address.startswith("aw://127.0.0.1:")
        comm = await connect(listener.contact_address, **tls_files.get_connection_args("client"))
        check_tls(comm)
        assert comm.extra_info["arraywire_backend"] == backend.name
        for message in ({"op": "ping"}, {"op": "data", "x": b"z" * 100_000}):
            await comm.write(message)
            assert await comm.read() == message
        await comm.write({"x": to_serialize(big)})
        np.testing.assert_array_equal((await comm.read())["x"], big)
        await comm.close()


@gen_test()
async def test_the_listening_end_of_a_tls_comm_sees_the_clients_certificate(backend) -> None:
    client, server = await served_pair(security=TLS)
    check_tls(server)
    assert server.extra_info["cipher"] == client.extra_info["cipher"]
    await client.write({"x": to_serialize(np.arange(10))})
    np.testing.assert_array_equal((await server.read())["x"], np.arange(10))
    await client.close()
    await server.close()


@gen_test()
async def test_tls_against_a_plain_listener_and_back_fails_at_once(backend) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with echo_server() as plain:
        with pytest.raises(FatalCommClosedError, match="does not speak TLS"):
            await connect(plain.contact_address, timeout=30, **TLS.get_connection_args("client"))
        comm = await connect(plain.contact_address)  # plain clients are still served
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}
        await comm.close()
    async with echo_server(**TLS.get_listen_args("scheduler")) as encrypted:
        # a connection failure to Dask: retried until the connect timeout
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(encrypted.contact_address, timeout=1)
        with pytest.raises(ConnectionError, match="peer closed the connection") as failed:
            await get_backend("aw").get_connector().connect(encrypted.contact_address[5:])
        assert isinstance(failed.value.__cause__, ProtocolError)
        comm = await connect(encrypted.contact_address, **TLS.get_connection_args("client"))
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}
        await comm.close()
    assert loop.time() - start < 15  # the TLS failure was not retried until its timeout


@gen_test()
async def test_a_certificate_the_other_end_does_not_trust_is_refused_at_once(backend) -> None:
    stranger_ca = trustme.CA()
    stranger = stranger_ca.issue_cert("127.0.0.1", "localhost")
    # a client that trusts another CA, then a client with a certificate of another CA
    distrusting = tls_security(pem(stranger_ca.cert_pem), pem(*CERT.cert_chain_pems), pem(CERT.private_key_pem))
    distrusted = tls_security(pem(CA.cert_pem), pem(*stranger.cert_chain_pems), pem(stranger.private_key_pem))
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with echo_server(**TLS.get_listen_args("scheduler")) as listener:
        with pytest.raises(FatalCommClosedError, match=r"TLS certificate of aw://\S+ was not accepted"):
            await connect(listener.contact_address, timeout=30, **distrusting.get_connection_args("client"))
        with pytest.raises(FatalCommClosedError, match=r"TLS with aw://\S+ failed"):
            await connect(listener.contact_address, timeout=30, **distrusted.get_connection_args("client"))
    assert loop.time() - start < 15


@gen_test()
async def test_unknown_connection_arguments_are_ignored(backend) -> None:
    async with echo_server(some_future_option=3) as listener:
        comm = await connect(listener.contact_address, another_option="x")
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}
        await comm.close()


@gen_test()
async def test_repr_and_addresses(backend) -> None:
    async with echo_server() as listener:
        assert listener.listen_address.startswith("aw://127.0.0.1:")
        assert listener.contact_address == listener.listen_address
        comm = await connect(listener.contact_address)
        assert comm.peer_address == listener.contact_address
        host, port = comm.local_address[len("aw://"):].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert repr(comm) == f"<ArraywireComm  local={comm.local_address} remote={comm.peer_address}>"
        assert comm.extra_info["arraywire_backend"] == backend.name
        assert comm.same_host
        await comm.close()


@gen_test()
async def test_a_wildcard_listener_gives_a_concrete_contact_address(backend) -> None:
    async with listen("aw://0.0.0.0:0", echo) as listener:
        port = listener.listen_address.rsplit(":", 1)[1]
        assert listener.listen_address == f"aw://0.0.0.0:{port}"
        assert listener.contact_address == f"aw://{get_ip()}:{port}"
    async with listen("aw://", echo, default_host="127.0.0.1") as listener:
        assert listener.contact_address.startswith("aw://127.0.0.1:")
        comm = await connect(listener.contact_address)
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}
        await comm.close()


@gen_test()
async def test_ipv6(backend) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    async with listen("aw://[::1]:0", echo) as listener:
        assert listener.contact_address.startswith("aw://[::1]:")
        comm = await connect(listener.contact_address)
        await comm.write({"x": to_serialize(np.arange(5))})
        np.testing.assert_array_equal((await comm.read())["x"], np.arange(5))
        await comm.close()


def test_address_rules_are_tcps() -> None:
    backend = get_backend("aw")
    tcp = get_backend("tcp")
    for loc in ("127.0.0.1:8786", "[::1]:8786", "localhost:8786"):
        assert backend.get_address_host(loc) == tcp.get_address_host(loc)
        assert backend.get_address_host_port(loc) == tcp.get_address_host_port(loc)
        assert backend.resolve_address(loc) == tcp.resolve_address(loc)
        assert backend.get_local_address_for(loc) == tcp.get_local_address_for(loc)
    assert get_address_host("aw://10.1.2.3:5") == "10.1.2.3"


@gen_cluster(
    client=True,
    scheduler_kwargs={"protocol": "aw://"},
    worker_kwargs={"protocol": "aw://"},
)
async def test_a_cluster_computes_and_moves_data_over_aw(c, s, a, b, backend) -> None:
    assert s.address.startswith("aw://")
    assert a.address.startswith("aw://") and b.address.startswith("aw://")
    x = da.arange(2_000_000, chunks=250_000)
    total = await c.compute(x.sum(), workers=None)
    assert total == 2_000_000 * 1_999_999 // 2
    data = np.random.default_rng(2).random(50_000_000 // 8)  # 50 MB
    [future] = await c.scatter([data], workers=[a.address])
    moved = c.submit(lambda array: array[::-1].copy(), future, workers=[b.address])
    np.testing.assert_array_equal(await c.gather(moved), data[::-1])
    np.testing.assert_array_equal(await c.gather(future), data)
    assert set(await c.gather(c.map(lambda n: n * 2, range(20)))) == {n * 2 for n in range(20)}


@gen_cluster(
    client=True,
    security=TLS,
    scheduler_kwargs={"protocol": "aw://"},
    worker_kwargs={"protocol": "aw://"},
)
async def test_a_cluster_computes_over_aw_with_tls(c, s, a, b, backend) -> None:
    assert s.address.startswith("aw://")
    assert a.address.startswith("aw://") and b.address.startswith("aw://")
    for comm in (c.scheduler_comm.comm, s.stream_comms[a.address].comm, s.stream_comms[b.address].comm):
        assert isinstance(comm, ArraywireComm)
        check_tls(comm)
    x = da.arange(2_000_000, chunks=250_000)
    assert await c.compute(x.sum()) == 2_000_000 * 1_999_999 // 2
    data = np.random.default_rng(4).random(20_000_000 // 8)  # 20 MB, from worker to worker
    [future] = await c.scatter([data], workers=[a.address])
    moved = c.submit(lambda array: array[::-1].copy(), future, workers=[b.address])
    np.testing.assert_array_equal(await c.gather(moved), data[::-1])


# --- the frame layout (docs/PROTOCOL.md, "Dask messages over aw://"), no sockets


@given(st.lists(st.binary(max_size=300), max_size=12), st.lists(st.integers(0, 3), max_size=12))
def test_frames_come_back_as_they_went(payloads, owners) -> None:
    buffers = [bytearray(b"x" * 200 + bytes(range(50))) for _ in range(3)]
    frames: list = []
    for payload, source in zip(payloads, owners + [0] * len(payloads), strict=False):
        frames.append(payload if source == 0 else memoryview(buffers[source - 1])[: len(payload)])
    arrays = dask_frames.to_arrays(frames)
    assert [bytes(frame) for frame in dask_frames.to_frames(arrays)] == [bytes(f) for f in frames]


def test_shards_of_one_buffer_travel_as_one_view_of_it() -> None:
    buffer = np.arange(1000, dtype=np.uint8)
    shards = [memoryview(buffer)[:400], memoryview(buffer)[400:]]
    head, joined = dask_frames.to_arrays([b"header", *shards])
    assert np.shares_memory(joined, buffer) and joined.nbytes == 1000
    frames = dask_frames.to_frames([head.copy(), joined.copy()])
    assert frames[1].obj is frames[2].obj and bytes(frames[1]) + bytes(frames[2]) == buffer.tobytes()


@given(st.binary(max_size=200), st.integers(0, 3))
def test_a_corrupt_head_gives_protocol_error_or_frames_that_add_up(noise, extra_arrays) -> None:
    head = np.frombuffer(dask_frames.PREFIX.pack(b"AWDF", 1, len(noise) // 12) + noise, np.uint8)
    arrays = [head, *(np.zeros(n, np.uint8) for n in range(extra_arrays))]
    try:
        frames = dask_frames.to_frames(arrays)
    except ProtocolError:
        return
    assert sum(frame.nbytes for frame in frames) == sum(a.nbytes for a in arrays) - dask_frames.PREFIX.size - len(frames) * 12


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ([], "at least its head"),
        ({"a": np.zeros(20, np.uint8)}, "no array names"),
        ([np.zeros(20, np.float64)], "uint8"),
        ([np.zeros(5, np.uint8)], "shorter than its 16-byte prefix"),
        ([np.frombuffer(b"AWDF\x02\0\0\0" + bytes(8), np.uint8)], "layout version 2"),
        ([np.frombuffer(dask_frames.PREFIX.pack(b"AWDF", 1, 10**15), np.uint8)], "frame table of"),
    ],
)
def test_what_is_not_a_dask_message_is_named(arrays, reason) -> None:
    with pytest.raises(ProtocolError, match=reason):
        dask_frames.to_frames(arrays)


class Records(logging.Handler):
    """The records of one logger, whatever Dask's logging setup propagates."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@gen_test()
async def test_garbage_sent_to_a_listener_is_one_warning_under_distributed_comm_aw(
    backend,
) -> None:
    aw, heard = logging.getLogger("distributed.comm.aw"), Records()
    aw.addHandler(heard)
    try:
        async with listen("aw://127.0.0.1:0", echo) as listener:
            reader, writer = await asyncio.open_connection(*listener.get_host_port())
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                await reader.read()  # until dropped
            except ConnectionResetError:  # dropped with bytes unread
                pass
            here = writer.get_extra_info("sockname")
            writer.close()
    finally:
        aw.removeHandler(heard)
    [warning] = [r.getMessage() for r in heard.records if r.levelno == logging.WARNING]
    assert f"dropped {here[0]}:{here[1]}" in warning
    assert "the peer is not arraywire: its hello begins with b'GET '" in warning
