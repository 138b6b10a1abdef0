"""An ``LD_PRELOAD`` shim for the cross-process fault tests, built with ``cc`` when first used.

``SHIM_LOCKS=noop``: ``flock``, ``lockf`` and ``fcntl`` record locks succeed without locking
anything (and ``F_GETLK`` always answers "unlocked"), as on some NFS/Lustre mounts;
``SHIM_LOCKS=enosys``: they fail with ENOSYS. ``SHIM_FULL_DIR=/path``: every write to a file
under that directory fails with ENOSPC (a full disk), reads still work.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int lock_mode(void) {  /* 0: real locks, 1: no-ops, 2: ENOSYS */
    const char *m = getenv("SHIM_LOCKS");
    if (!m) return 0;
    return strcmp(m, "noop") == 0 ? 1 : strcmp(m, "enosys") == 0 ? 2 : 0;
}

static int fake_lock(void) {
    if (lock_mode() == 2) { errno = ENOSYS; return -1; }
    return 0;
}

int flock(int fd, int op) {
    static int (*real)(int, int);
    if (lock_mode()) return fake_lock();
    if (!real) real = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    return real(fd, op);
}

int lockf(int fd, int cmd, off_t len) {
    static int (*real)(int, int, off_t);
    if (lock_mode()) return fake_lock();
    if (!real) real = (int (*)(int, int, off_t))dlsym(RTLD_NEXT, "lockf");
    return real(fd, cmd, len);
}

static int is_lock_cmd(int cmd) {
    return cmd == F_SETLK || cmd == F_SETLKW || cmd == F_GETLK
        || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW || cmd == F_OFD_GETLK;
}

static int shim_fcntl(const char *name, int fd, int cmd, void *arg) {
    if (lock_mode() && is_lock_cmd(cmd)) {
        if (lock_mode() == 1 && (cmd == F_GETLK || cmd == F_OFD_GETLK) && arg)
            ((struct flock *)arg)->l_type = F_UNLCK;
        return fake_lock();
    }
    int (*real)(int, int, ...) = (int (*)(int, int, ...))dlsym(RTLD_NEXT, name);
    return real(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
    va_list ap; va_start(ap, cmd); void *arg = va_arg(ap, void *); va_end(ap);
    return shim_fcntl("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap; va_start(ap, cmd); void *arg = va_arg(ap, void *); va_end(ap);
    return shim_fcntl("fcntl64", fd, cmd, arg);
}

static int disk_full(int fd) {
    const char *dir = getenv("SHIM_FULL_DIR");
    char link[64], path[4096];
    if (!dir) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    if (strncmp(path, dir, strlen(dir)) != 0) return 0;
    errno = ENOSPC;
    return 1;
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (disk_full(fd)) return -1;
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (disk_full(fd)) return -1;
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    return real(fd, buf, count, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (disk_full(fd)) return -1;
    if (!real) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    return real(fd, buf, count, off);
}
"""


def build_shim(directory: Path) -> Path:
    """Compile the shim into ``directory``; skipped only where there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the LD_PRELOAD shim")
    source = directory / "shim.c"
    source.write_text(SOURCE)
    library = directory / "libvllmfetchshim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source),
                    "-ldl"], check=True, capture_output=True, timeout=120)
    return library
