"""Which filesystems are shared between machines, and what vllm_fetch guarantees there (pure).

Identified by ``statfs(2)``'s ``f_type`` magic numbers (linux/magic.h and the filesystems' own).
"""

from __future__ import annotations

#: f_type -> name, for the filesystems other machines may write at the same time.
SHARED_FILESYSTEMS = {
    0x6969: "NFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x517B: "SMB",
    0x65735546: "FUSE",
    0x01161970: "GFS2",
    0x7461636F: "OCFS2",
    0x00C36400: "CephFS",
}

#: What holds and what does not on such a filesystem, per directory kind.
GUARANTEES = {
    "cache": (
        "blobs are still written to a temp file, fsynced and renamed, and checked by their seal "
        "on every read, so no reader is served torn or flipped bytes; but the SQLite index and "
        "its file locks are not safe for writers on several machines (keep VLLM_FETCH_CACHE_DIR "
        "on local disk, and share a pre-filled store read-only with VLLM_FETCH_SHARED_CACHE)"
    ),
    "lock": (
        "file locks there may do nothing or hold on one machine only, so 'one transfer per "
        "machine' is not guaranteed (every download stays correct: own partial, verified, "
        "atomic rename); put VLLM_FETCH_LOCK_DIR on local disk"
    ),
}


def shared_filesystem(f_type: int | None) -> str | None:
    """The name of a shared filesystem for a ``statfs`` ``f_type``, or None (local, unknown)."""
    if f_type is None:
        return None
    return SHARED_FILESYSTEMS.get(f_type & 0xFFFFFFFF)


def shared_warning(kind: str, directory: str, fs_name: str) -> str:
    """The one WARNING for a ``kind`` ("cache" or "lock") directory on ``fs_name``."""
    return (f"the vllm_fetch {kind} directory {directory} is on {fs_name}, a filesystem shared "
            f"between machines: {GUARANTEES[kind]}")
