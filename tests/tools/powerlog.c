/*
 * tests/tools/powerlog.c -- LD_PRELOAD shim for the power-cut test: a
 * user-space dm-log-writes. Every write to a file whose name ends in
 * "data.mdb" (the LMDB data file), every fsync/fdatasync of it and every
 * "ACK " line the program prints on stdout is appended, in order, to the
 * log file named by MG_POWERLOG; tests/integration/powercut_replay.py
 * rebuilds from it the file a power cut at any point would have left.
 *
 * LMDB 0.9.24 (mdb.c) writes the data file with pwrite (one page run) or
 * lseek+writev (several), syncs it with fdatasync (fsync on old kernels)
 * and writes the meta page with pwrite on a second descriptor opened
 * O_DSYNC. The other write calls are logged too, in case that changes.
 *
 * Records (host byte order): u8 type, 3 zero bytes, u32 length, u64 value,
 * then `length` bytes:
 *   'W' write on a plain descriptor     value = offset, bytes = data
 *   'D' write on an O_DSYNC/O_SYNC one  (durable once it returned)
 *   'R' the write just logged returned  value = its result (int64)
 *   'B' fsync/fdatasync begins
 *   'E' it ended                        value = 0 if it succeeded
 *   'T' ftruncate                       value = new length
 *   'M' msync (of any mapping: WRITEMAP is not modelled)
 *   'A' the program acknowledged        bytes = the line(s) written
 * An ACK line is seen in a write(2) to stdout or, as mg-crashtest prints
 * it, in the stdout buffer when fflush(stdout) is called.
 * A write is logged before the call and its 'R' after, with the lock held
 * across, so the two are adjacent, at most one write is in flight, and a
 * write whose 'R' precedes a 'B' completed before that sync began. Each
 * record is one write(2) to the log, not buffered: a SIGKILL loses none.
 *
 * MG_POWERLOG_LIE=1 makes fsync/fdatasync of the data file do nothing and
 * return 0 (a disk that lies), to show the replay then finds the loss.
 * Test-only: never installed.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define PL_MAX_FD 4096
#define PL_SUFFIX "data.mdb"

enum {
    PL_NONE,
    PL_PLAIN,
    PL_DSYNC
};

struct pl_head {
    uint8_t type;
    uint8_t zero[3];
    uint32_t len;
    uint64_t value;
};

static pthread_mutex_t pl_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char pl_kind[PL_MAX_FD];
static int pl_log = -2; /* -2: not opened yet, -1: no MG_POWERLOG */

#define PL_REAL(name, type)  \
    static type real_##name; \
    if (real_##name == NULL) \
    real_##name = (type)dlsym(RTLD_NEXT, #name)

typedef ssize_t (*pl_write_fn)(int, const void *, size_t);

static ssize_t
pl_real_write(int fd, const void *p, size_t n)
{
    PL_REAL(write, pl_write_fn);
    return real_write(fd, p, n);
}

/* All of p to the log (under pl_lock). */
static void
pl_put(const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t r = pl_real_write(pl_log, c, n);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            abort(); /* a hole in the log would fake a result */
        c += r;
        n -= (size_t)r;
    }
}

typedef int (*pl_open_fn)(const char *, int, ...);

static void
pl_log_open(void)
{
    const char *path;

    if (pl_log != -2)
        return;
    path = getenv("MG_POWERLOG");
    if (path == NULL) {
        pl_log = -1;
        return;
    }
    PL_REAL(open, pl_open_fn);
    pl_log = real_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (pl_log < 0)
        abort();
}

/* One record: header and payload(s) in one write(2) where they fit. */
static void
pl_record(uint8_t type, uint64_t value, const struct iovec *iov, int iovcnt,
          size_t len)
{
    struct pl_head h = {.type = type, .len = (uint32_t)len, .value = value};
    size_t left = len;

    pl_log_open();
    if (pl_log < 0)
        return;
    pl_put(&h, sizeof(h));
    for (int i = 0; i < iovcnt && left > 0; i++) {
        size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;

        pl_put(iov[i].iov_base, n);
        left -= n;
    }
}

static int
pl_tracked(int fd)
{
    return fd >= 0 && fd < PL_MAX_FD ? pl_kind[fd] : PL_NONE;
}

static void
pl_opened(int fd, const char *path, int flags)
{
    size_t n = path != NULL ? strlen(path) : 0, s = sizeof(PL_SUFFIX) - 1;

    if (fd < 0 || fd >= PL_MAX_FD)
        return;
    pthread_mutex_lock(&pl_lock);
    if (n >= s && strcmp(path + n - s, PL_SUFFIX) == 0)
        pl_kind[fd] = (flags & (O_DSYNC | O_SYNC)) != 0 ? PL_DSYNC : PL_PLAIN;
    else
        pl_kind[fd] = PL_NONE;
    pthread_mutex_unlock(&pl_lock);
}

/* ------------------------------------------------------------ open */

static mode_t
pl_mode(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) != 0 ? (mode_t)va_arg(ap, int) : 0;
}

__attribute__((visibility("default"))) int
open(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    int fd;

    PL_REAL(open, pl_open_fn);
    va_start(ap, flags);
    mode = pl_mode(flags, ap);
    va_end(ap);
    fd = real_open(path, flags, mode);
    pl_opened(fd, path, flags);
    return fd;
}

__attribute__((visibility("default"))) int
open64(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    int fd;

    PL_REAL(open64, pl_open_fn);
    va_start(ap, flags);
    mode = pl_mode(flags, ap);
    va_end(ap);
    fd = real_open64(path, flags, mode);
    pl_opened(fd, path, flags);
    return fd;
}

typedef int (*pl_openat_fn)(int, const char *, int, ...);

__attribute__((visibility("default"))) int
openat(int dir, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    int fd;

    PL_REAL(openat, pl_openat_fn);
    va_start(ap, flags);
    mode = pl_mode(flags, ap);
    va_end(ap);
    fd = real_openat(dir, path, flags, mode);
    pl_opened(fd, path, flags);
    return fd;
}

__attribute__((visibility("default"))) int
openat64(int dir, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    int fd;

    PL_REAL(openat64, pl_openat_fn);
    va_start(ap, flags);
    mode = pl_mode(flags, ap);
    va_end(ap);
    fd = real_openat64(dir, path, flags, mode);
    pl_opened(fd, path, flags);
    return fd;
}

typedef int (*pl_close_fn)(int);

__attribute__((visibility("default"))) int
close(int fd)
{
    PL_REAL(close, pl_close_fn);
    if (fd >= 0 && fd < PL_MAX_FD && pl_kind[fd] != PL_NONE) {
        pthread_mutex_lock(&pl_lock);
        pl_kind[fd] = PL_NONE;
        pthread_mutex_unlock(&pl_lock);
    }
    return real_close(fd);
}

/* ------------------------------------------------------------ writes */

typedef off_t (*pl_lseek_fn)(int, off_t, int);

static off_t
pl_position(int fd)
{
    PL_REAL(lseek, pl_lseek_fn);
    return real_lseek(fd, 0, SEEK_CUR);
}

/* After the call: 'R' with what it returned (-1: failed, short: only that
 * much was written). A write with no 'R' was in flight when killed. */
static void
pl_returned(ssize_t r)
{
    pl_record('R', (uint64_t)(int64_t)r, NULL, 0, 0);
}

static size_t
pl_iovlen(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;

    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

static uint8_t
pl_wtype(int kind)
{
    return kind == PL_DSYNC ? 'D' : 'W';
}

typedef ssize_t (*pl_pwrite_fn)(int, const void *, size_t, off_t);

__attribute__((visibility("default"))) ssize_t
pwrite(int fd, const void *p, size_t n, off_t off)
{
    PL_REAL(pwrite, pl_pwrite_fn);
    int kind = pl_tracked(fd);
    struct iovec v = {.iov_base = (void *)p, .iov_len = n};
    ssize_t r;

    if (kind == PL_NONE)
        return real_pwrite(fd, p, n, off);
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)off, &v, 1, n);
    r = real_pwrite(fd, p, n, off);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

__attribute__((visibility("default"))) ssize_t
pwrite64(int fd, const void *p, size_t n, off_t off)
{
    PL_REAL(pwrite64, pl_pwrite_fn);
    int kind = pl_tracked(fd);
    struct iovec v = {.iov_base = (void *)p, .iov_len = n};
    ssize_t r;

    if (kind == PL_NONE)
        return real_pwrite64(fd, p, n, off);
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)off, &v, 1, n);
    r = real_pwrite64(fd, p, n, off);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

typedef ssize_t (*pl_pwritev_fn)(int, const struct iovec *, int, off_t);

__attribute__((visibility("default"))) ssize_t
pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    PL_REAL(pwritev, pl_pwritev_fn);
    int kind = pl_tracked(fd);
    ssize_t r;

    if (kind == PL_NONE)
        return real_pwritev(fd, iov, iovcnt, off);
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)off, iov, iovcnt,
              pl_iovlen(iov, iovcnt));
    r = real_pwritev(fd, iov, iovcnt, off);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

typedef ssize_t (*pl_pwritev2_fn)(int, const struct iovec *, int, off_t, int);

__attribute__((visibility("default"))) ssize_t
pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
    PL_REAL(pwritev2, pl_pwritev2_fn);
    int kind = pl_tracked(fd);
    ssize_t r;

    if (kind == PL_NONE)
        return real_pwritev2(fd, iov, iovcnt, off, flags);
    /* RWF_DSYNC/RWF_SYNC make this one write durable when it returns */
    if ((flags & (RWF_DSYNC | RWF_SYNC)) != 0)
        kind = PL_DSYNC;
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)(off == -1 ? pl_position(fd) : off),
              iov, iovcnt, pl_iovlen(iov, iovcnt));
    r = real_pwritev2(fd, iov, iovcnt, off, flags);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

typedef ssize_t (*pl_writev_fn)(int, const struct iovec *, int);

__attribute__((visibility("default"))) ssize_t
writev(int fd, const struct iovec *iov, int iovcnt)
{
    PL_REAL(writev, pl_writev_fn);
    int kind = pl_tracked(fd);
    ssize_t r;

    if (kind == PL_NONE)
        return real_writev(fd, iov, iovcnt);
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)pl_position(fd), iov, iovcnt,
              pl_iovlen(iov, iovcnt));
    r = real_writev(fd, iov, iovcnt);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

/* The program's acknowledgement: a write to stdout starting "ACK ". */
static int
pl_is_ack(int fd, const void *p, size_t n)
{
    return fd == STDOUT_FILENO && n >= 4 && memcmp(p, "ACK ", 4) == 0;
}

__attribute__((visibility("default"))) ssize_t
write(int fd, const void *p, size_t n)
{
    int kind = pl_tracked(fd);
    struct iovec v = {.iov_base = (void *)p, .iov_len = n};
    ssize_t r;

    if (kind == PL_NONE) {
        if (pl_is_ack(fd, p, n)) {
            /* logged before it can reach the reader: never late */
            pthread_mutex_lock(&pl_lock);
            pl_record('A', 0, &v, 1, n);
            pthread_mutex_unlock(&pl_lock);
        }
        return pl_real_write(fd, p, n);
    }
    pthread_mutex_lock(&pl_lock);
    pl_record(pl_wtype(kind), (uint64_t)pl_position(fd), &v, 1, n);
    r = pl_real_write(fd, p, n);
    pl_returned(r);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

typedef int (*pl_fflush_fn)(FILE *);

/* printf("ACK ...") + fflush(stdout): stdio writes with glibc's internal
 * write, which no shim sees, so the line is read from the FILE buffer
 * (glibc's public struct _IO_FILE) before it is flushed. */
__attribute__((visibility("default"))) int
fflush(FILE *f)
{
    PL_REAL(fflush, pl_fflush_fn);
    if (f == stdout && f->_IO_write_base != NULL &&
        f->_IO_write_ptr > f->_IO_write_base) {
        size_t n = (size_t)(f->_IO_write_ptr - f->_IO_write_base);
        struct iovec v = {.iov_base = f->_IO_write_base, .iov_len = n};

        if (pl_is_ack(STDOUT_FILENO, f->_IO_write_base, n)) {
            pthread_mutex_lock(&pl_lock);
            pl_record('A', 0, &v, 1, n);
            pthread_mutex_unlock(&pl_lock);
        }
    }
    return real_fflush(f);
}

typedef int (*pl_ftruncate_fn)(int, off_t);

__attribute__((visibility("default"))) int
ftruncate(int fd, off_t len)
{
    PL_REAL(ftruncate, pl_ftruncate_fn);
    int r;

    if (pl_tracked(fd) == PL_NONE)
        return real_ftruncate(fd, len);
    pthread_mutex_lock(&pl_lock);
    r = real_ftruncate(fd, len);
    if (r == 0)
        pl_record('T', (uint64_t)len, NULL, 0, 0);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

/* ------------------------------------------------------------ syncs */

static int
pl_lie(void)
{
    const char *v = getenv("MG_POWERLOG_LIE");

    return v != NULL && strcmp(v, "1") == 0;
}

typedef int (*pl_sync_fn)(int);

static int
pl_sync(int fd, pl_sync_fn real)
{
    int r;

    if (pl_tracked(fd) == PL_NONE)
        return real(fd);
    if (pl_lie())
        return 0;
    pthread_mutex_lock(&pl_lock);
    pl_record('B', 0, NULL, 0, 0);
    pthread_mutex_unlock(&pl_lock);
    r = real(fd);
    pthread_mutex_lock(&pl_lock);
    pl_record('E', r == 0 ? 0 : 1, NULL, 0, 0);
    pthread_mutex_unlock(&pl_lock);
    return r;
}

__attribute__((visibility("default"))) int
fsync(int fd)
{
    PL_REAL(fsync, pl_sync_fn);
    return pl_sync(fd, real_fsync);
}

__attribute__((visibility("default"))) int
fdatasync(int fd)
{
    PL_REAL(fdatasync, pl_sync_fn);
    return pl_sync(fd, real_fdatasync);
}

typedef int (*pl_msync_fn)(void *, size_t, int);

__attribute__((visibility("default"))) int
msync(void *addr, size_t len, int flags)
{
    PL_REAL(msync, pl_msync_fn);
    pthread_mutex_lock(&pl_lock);
    pl_record('M', 0, NULL, 0, 0);
    pthread_mutex_unlock(&pl_lock);
    return real_msync(addr, len, flags);
}
