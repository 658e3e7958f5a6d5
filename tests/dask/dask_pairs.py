"""Connected aw:// comm pairs for the Dask backend's tests."""

from __future__ import annotations

import asyncio

from distributed.comm import connect, listen
from distributed.security import Security


async def served_pair(listener_address: str = "aw://127.0.0.1:0", security: Security | None = None):
    """A connected client comm and the server's comm of the same connection
    (over TLS with a Security); the listener is stopped already."""
    served: asyncio.Queue = asyncio.Queue()

    async def keep(comm):
        await served.put(comm)

    security = security or Security()
    async with listen(listener_address, keep, **security.get_listen_args("scheduler")) as listener:
        client = await connect(listener.contact_address, **security.get_connection_args("client"))
        server = await served.get()
    return client, server
