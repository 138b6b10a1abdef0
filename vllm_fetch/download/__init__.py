"""The download engine: validated resume, verification, parallel ranged parts, one transfer per
machine, progress. ``sync_engine.download`` and ``async_engine.download`` are its two entry
points (one per driver); ``Transfer`` holds every decision both share."""

from .options import DownloadOptions
from .progress import ProgressCallback, ProgressSpec

__all__ = ["DownloadOptions", "ProgressCallback", "ProgressSpec"]
