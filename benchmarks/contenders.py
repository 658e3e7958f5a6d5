"""The other ways to move the same bytes, run by ``harness.py`` (see its
``Contender``; arraywire's own ``Raw`` and ``Framed`` live there)."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import socket
import struct
import tempfile
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import numpy as np
import zmq
from harness import Contender

from arraywire._cli.bench import pattern, recv_line, send_line

LENGTH = struct.Struct("!Q")


class Recipe(Contender):
    """The memoryview recipe: ``sock.send`` / ``sock.recv_into`` in a loop."""

    def send(self, array: np.ndarray) -> None:
        view = memoryview(array).cast("B")
        while view:
            view = view[self.sock.send(view) :]

    def recv(self, out: np.ndarray) -> np.ndarray:
        self.recv_exactly(memoryview(out).cast("B"))
        return out

    def recv_exactly(self, view: memoryview) -> None:
        while view:
            moved = self.sock.recv_into(view)
            if not moved:
                raise EOFError("peer closed the connection")
            view = view[moved:]


class Sendall(Recipe):
    """``sock.sendall`` on the sending side, the recv_into loop on the other."""

    def send(self, array: np.ndarray) -> None:
        self.sock.sendall(array)


class Pickle(Recipe):
    """The copying baseline: ``pickle.dumps(protocol=5)`` behind a length, then
    ``sendall``; the receiver reads into a bytearray and unpickles it."""

    def send(self, array: np.ndarray) -> None:
        data = pickle.dumps(array, protocol=5)
        self.sock.sendall(LENGTH.pack(len(data)))
        self.sock.sendall(data)

    def recv(self, out: np.ndarray) -> Any:
        length = bytearray(LENGTH.size)
        self.recv_exactly(memoryview(length))
        data = bytearray(LENGTH.unpack(length)[0])
        self.recv_exactly(memoryview(data))
        return pickle.loads(data)


class MpConnection(Contender):
    """``multiprocessing.connection.Connection`` over the socket:
    ``send_bytes`` / ``recv_bytes_into``."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        self.conn = Connection(sock.detach())

    def send(self, array: np.ndarray) -> None:
        self.conn.send_bytes(array)

    def recv(self, out: np.ndarray) -> np.ndarray:
        self.conn.recv_bytes_into(out)
        return out

    def close(self) -> None:
        self.conn.close()


class _Zmq(Contender):
    """pyzmq over ``tcp://127.0.0.1`` or ``ipc://`` (an AF_UNIX socket of its own).

    The measuring side binds and passes its endpoint over the control socket.
    ``job["copy"]`` picks pyzmq's copy mode (below its copy_threshold, 64 KiB,
    pyzmq copies even with copy=False).
    """

    socket_types: ClassVar[dict[str, int]]

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        sock.close()
        self.copy = job.get("copy", False)
        self.context = zmq.Context()
        self.sock = self.context.socket(self.socket_types[f"{job['kind']}-{role}"])
        self.tmpdir = None
        if role == "measure":
            if job["family"] == "unix":
                self.tmpdir = tempfile.mkdtemp()
                endpoint = f"ipc://{os.path.join(self.tmpdir, 'bench')}"
                self.sock.bind(endpoint)
            else:
                port = self.sock.bind_to_random_port("tcp://127.0.0.1")
                endpoint = f"tcp://127.0.0.1:{port}"
            send_line(ctl, endpoint)
        else:
            self.sock.connect(recv_line(ctl))

    def send(self, array: np.ndarray) -> None:
        self.sock.send(array, copy=self.copy)

    def recv(self, out: np.ndarray) -> Any:
        message = self.sock.recv(copy=self.copy)
        return message if self.copy else message.buffer

    def close(self) -> None:
        self.sock.close()
        self.context.term()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir)


class ZmqPushPull(_Zmq):
    socket_types: ClassVar[dict[str, int]] = {"stream-measure": zmq.PULL, "stream-peer": zmq.PUSH}


class ZmqReqRep(_Zmq):
    """Ping-pong: the client's REQ sends, the peer's REP echoes.

    In a stream each message is a request answered by an empty reply.
    """

    socket_types: ClassVar[dict[str, int]] = {
        "stream-measure": zmq.REP,
        "stream-peer": zmq.REQ,
        "pingpong-measure": zmq.REQ,
        "pingpong-peer": zmq.REP,
    }

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        super().__init__(sock, ctl, job, role)
        self.acknowledge = job["kind"] == "stream"

    def send(self, array: np.ndarray) -> None:
        super().send(array)
        if self.acknowledge:
            self.sock.recv()

    def recv(self, out: np.ndarray) -> Any:
        message = super().recv(out)
        if self.acknowledge:
            self.sock.send(b"")
        return message


class Aio(Contender):
    """``arraywire.aio.send_from`` / ``recv_into`` on a non-blocking socket;
    each batch of messages is one run of the process's event loop."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        from arraywire import aio  # newer than the rest: only this contender needs it

        super().__init__(sock, ctl, job, role)
        self.aio = aio
        sock.setblocking(False)
        self.loop = asyncio.new_event_loop()

    def send_many(self, array: np.ndarray, count: int) -> None:
        self.loop.run_until_complete(self._send(array, count))

    def recv_many(self, out: np.ndarray, count: int) -> np.ndarray:
        return self.loop.run_until_complete(self._recv(out, count))

    async def _send(self, array: np.ndarray, count: int) -> None:
        for _ in range(count):
            await self.aio.send_from(array, self.sock)

    async def _recv(self, out: np.ndarray, count: int) -> np.ndarray:
        for _ in range(count):
            await self.aio.recv_into(out, self.sock)
        return out

    def close(self) -> None:
        self.loop.close()
        super().close()


class AioChannel(Aio):
    """``arraywire.aio.Channel``: ``send`` / ``recv``, one awaited call per
    message, as the blocking ChannelMessages."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        super().__init__(sock, ctl, job, role)
        self.channel = self.aio.Channel(sock)

    async def _send(self, array: np.ndarray, count: int) -> None:
        for _ in range(count):
            await self.channel.send(array)

    async def _recv(self, out: np.ndarray, count: int) -> np.ndarray:
        received = out
        for _ in range(count):
            received = await self.channel.recv(max_bytes=None)
        return received

    def close(self) -> None:
        self.channel.close()
        super().close()


class Memcpy(Contender):
    """The limit for one copy: ``np.copyto`` from an array of the measuring
    process into its reused receive buffer (faulted in by the warm-up
    repetition). Nothing crosses the socket; the peer only waits."""

    def __init__(self, sock: socket.socket, ctl: socket.socket, job: dict[str, Any], role: str):
        super().__init__(sock, ctl, job, role)
        self.source = pattern(max(job["sizes"])) if role == "measure" else None

    def send(self, array: np.ndarray) -> None:
        pass

    def recv(self, out: np.ndarray) -> np.ndarray:
        np.copyto(out, self.source[: out.size])
        return out
