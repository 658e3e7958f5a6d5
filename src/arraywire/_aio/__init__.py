"""The asyncio driver, re-exported by ``arraywire.aio``."""
