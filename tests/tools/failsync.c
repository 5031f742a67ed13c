/*
 * tests/tools/failsync.c -- LD_PRELOAD shim for fault tests: while the
 * file named by MG_FAILSYNC_FLAG exists, fsync/fdatasync/msync fail with
 * EIO, as a dying disk does ("fsyncgate": the data may be lost). While
 * the file named by MG_SLOWSYNC_FLAG exists, they first sleep as many
 * milliseconds as the file says (default 1000): a slow disk, to catch a
 * commit in flight.
 * Test-only: never installed.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

static void
failsync_slow(void)
{
    const char *flag = getenv("MG_SLOWSYNC_FLAG");
    FILE *f = flag != NULL ? fopen(flag, "r") : NULL;
    long ms = 1000;

    if (f == NULL)
        return;
    if (fscanf(f, "%ld", &ms) != 1 || ms < 0)
        ms = 1000;
    (void)fclose(f);
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int
failsync_active(void)
{
    const char *flag = getenv("MG_FAILSYNC_FLAG");

    failsync_slow();
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
