"""What a download may rename over (core.targets)."""

from __future__ import annotations

import errno
import stat

import pytest

from vllm_fetch.core.targets import target_refusal


@pytest.mark.parametrize("mode", [None, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777])
def test_absent_regular_files_and_symlinks_may_be_replaced(mode: int | None) -> None:
    assert target_refusal(mode) is None


def test_a_directory_is_refused_as_eisdir() -> None:
    assert target_refusal(stat.S_IFDIR | 0o755) == (errno.EISDIR, "is a directory")


@pytest.mark.parametrize("mode, kind", [(stat.S_IFCHR, "character device"),
                                        (stat.S_IFBLK, "block device"),
                                        (stat.S_IFIFO, "FIFO"), (stat.S_IFSOCK, "socket")])
def test_nodes_are_never_replaced(mode: int, kind: str) -> None:
    refusal = target_refusal(mode | 0o666)
    assert refusal is not None and refusal[0] == errno.EEXIST and kind in refusal[1]
