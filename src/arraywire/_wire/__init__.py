"""The wire: the message format, the opening and their rules, sans I/O (no
sockets, TLS, asyncio or threads). Everything above drives it."""
