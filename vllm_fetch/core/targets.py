"""What a download may publish over (pure): the target's name is replaced by a rename.

A rename replaces whatever the name held: a regular file is fine, but a directory cannot be
replaced, and a device, FIFO or socket (``-o /dev/null``) must never be: the rename would swap
the node for a regular file. Both are refused before any request is sent. A symlink is judged
by what it names (``files.checked_target`` passes that mode; ``-o /dev/stdout`` is a link).
"""

from __future__ import annotations

import errno
import stat

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def target_refusal(mode: int | None) -> tuple[int, str] | None:
    """``(errno, reason)`` when a target whose ``lstat`` mode is ``mode`` (None: absent) must
    not be published over; None when a rename onto it is fine."""
    if mode is None or stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    if stat.S_ISDIR(mode):
        return errno.EISDIR, "is a directory"
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return errno.EEXIST, f"is {kind}, not a regular file: a download never replaces it"


__all__ = ["target_refusal"]
