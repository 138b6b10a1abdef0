"""The download engine: validated resume, verification, parallel ranged parts, one transfer per
machine, progress. ``sync_runner.download`` and ``async_runner.download`` are its two entry
points (one per driver, wired by the façade); ``core.download_machine`` makes every decision."""

from .options import DownloadOptions
from .progress import ProgressCallback, ProgressSpec

__all__ = ["DownloadOptions", "ProgressCallback", "ProgressSpec"]
