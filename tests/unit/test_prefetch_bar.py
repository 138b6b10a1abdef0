"""The prefetch bar counts bytes across files, with the file count beside it."""

from __future__ import annotations

import io

from vllm_fetch.cli.prefetch_bar import PrefetchBar


def test_the_bar_counts_bytes_of_every_file_and_the_files_done() -> None:
    out = io.StringIO()
    bar = PrefetchBar(2, enabled=True, file=out)
    first, second = bar.for_entry(0), bar.for_entry(1)
    first(0, 3 * 1024 * 1024)
    second(512 * 1024, 1024 * 1024)
    first(3 * 1024 * 1024, 3 * 1024 * 1024)
    bar.file_done()
    second(0, 1024 * 1024)  # a restart from zero counts down, not up
    bar.file_done()
    assert bar._bar.n == 3 * 1024 * 1024
    assert bar._bar.total == 4 * 1024 * 1024
    bar.close()
    shown = out.getvalue()
    assert "3.00M/4.00M" in shown and "2/2 files" in shown
