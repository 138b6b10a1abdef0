"""Thin I/O drivers over the core: requests (sync) and aiohttp (async)."""
