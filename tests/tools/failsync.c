/*
 * tests/tools/failsync.c -- LD_PRELOAD shim for fault tests: while the
 * file named by MG_FAILSYNC_FLAG exists, fsync/fdatasync/msync fail with
 * EIO, as a dying disk does ("fsyncgate": the data may be lost).
 * Test-only: never installed.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static int
failsync_active(void)
{
    const char *flag = getenv("MG_FAILSYNC_FLAG");

    return flag != NULL && access(flag, F_OK) == 0;
}

__attribute__((visibility("default"))) int
fsync(int fd)
{
    static int (*real)(int);

    if (failsync_active()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

__attribute__((visibility("default"))) int
fdatasync(int fd)
{
    static int (*real)(int);

    if (failsync_active()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

__attribute__((visibility("default"))) int
msync(void *addr, size_t len, int flags)
{
    static int (*real)(void *, size_t, int);

    if (failsync_active()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
    return real(addr, len, flags);
}
