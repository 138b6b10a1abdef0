"""The I/O-free core: every decision vllm_fetch makes, with no sockets, files or event loops.

Nothing in this package imports requests, aiohttp, asyncio or touches the network or disk.
"""
