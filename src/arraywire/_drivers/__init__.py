"""What the blocking and the asyncio drivers share: addresses and listening
sockets, the Channel rules, the parallel streams moved a thread each."""
