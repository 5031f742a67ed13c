/*
 * store/pagedrop.c -- drop the page-cache pages of the message chunks a
 * batch wrote, once its commit is durable (store.drop_written_pages).
 *
 * Mail is written once and read once, often much later: keeping its pages
 * cached only fills the cache. On virtual machines that return free memory
 * to the host (virtio-balloon free page reporting) every new page-cache
 * page also costs a first touch on the host (about 9 µs per 4 KiB page);
 * pages freed here are taken again, still warm, by the next batch's
 * writes. See bench/README.md, "Dropping the written pages".
 *
 * Only whole chunks (64 KiB) are dropped; the last, partial chunk of every
 * message stays, so a small message (most mail) stays cached for the
 * archiver: read back from the disk it cost a POP3 retrieval of 4 KiB
 * messages right after delivery a third of its rate, while the page-cache
 * cost saved is small per message. LMDB stores a value larger than half a
 * page on overflow pages of its own, starting at a page boundary, so the
 * pages from the one holding its first byte to the one holding its last
 * are the value's alone. Branch, leaf and meta pages,
 * which every lookup needs, are never touched. The offsets come from a
 * read transaction after the commit: a value's address in the map minus
 * the map's address (LMDB returns the address without reading the page,
 * so finding it costs no page fault). LMDB tells the map's address only
 * for MDB_FIXEDMAP, so it is read once from /proc/self/maps: the mapping
 * of the store's file (device and inode checked). The pages are clean
 * after the commit's fdatasync: POSIX_FADV_DONTNEED frees them at once.
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "store.h"

/* The values dropped: whole chunks (16 pages of 4 KiB). */
#define PAGEDROP_MIN (MG_VAULT_CHUNK + MG_VAULT_ABYTES)

struct mg_pagedrop {
    uint8_t (*keys)[MG_CHUNK_KEY]; /* chunk keys the open batch wrote */
    size_t nkeys, capkeys;
    struct pagedrop_range {
        uint64_t start, end; /* file bytes, page-aligned */
    } * ranges;
    size_t capranges;
    /* the mapping of the store's file: [map, map_end), map = offset 0 */
    uintptr_t map, map_end;
    bool map_failed; /* not found: drop nothing (until a reopen) */
};

struct mg_pagedrop *
mg_pagedrop_new(void)
{
    return mg_xcalloc(1, sizeof(struct mg_pagedrop));
}

void
mg_pagedrop_free(struct mg_pagedrop *d)
{
    if (d == NULL)
        return;
    free(d->keys);
    free(d->ranges);
    free(d);
}

void
mg_pagedrop_note(struct mg_pagedrop *d, const uint8_t key[MG_CHUNK_KEY],
                 size_t len)
{
    if (len < PAGEDROP_MIN)
        return; /* a batch of small messages costs nothing */
    if (d->nkeys == d->capkeys) {
        d->capkeys = d->capkeys ? d->capkeys * 2 : 64;
        d->keys = mg_xrealloc(d->keys, d->capkeys * sizeof(*d->keys));
    }
    memcpy(d->keys[d->nkeys++], key, MG_CHUNK_KEY);
}

void
mg_pagedrop_clear(struct mg_pagedrop *d)
{
    d->nkeys = 0;
}

void
mg_pagedrop_env_changed(struct mg_pagedrop *d)
{
    d->nkeys = 0;
    d->map = d->map_end = 0;
    d->map_failed = false;
}

/* Find the mapping of fd's file that holds p (/proc/self/maps). */
static int
pagedrop_find_map(struct mg_pagedrop *d, const void *p, int fd)
{
    uintptr_t addr = (uintptr_t)p;
    unsigned long long start, end, pgoff, ino;
    unsigned dmaj, dmin;
    struct stat sb;
    char line[512];
    FILE *f;
    int ret = MG_ERROR;

    if (fstat(fd, &sb) != 0 || (f = fopen("/proc/self/maps", "re")) == NULL)
        goto out;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%llx-%llx %*s %llx %x:%x %llu", &start, &end, &pgoff,
                   &dmaj, &dmin, &ino) != 6 ||
            addr < start || addr >= end)
            continue;
        if (ino == (unsigned long long)sb.st_ino &&
            makedev(dmaj, dmin) == sb.st_dev && start >= pgoff) {
            d->map = (uintptr_t)(start - pgoff);
            d->map_end = (uintptr_t)end;
            ret = MG_OK;
        }
        break;
    }
    fclose(f);
out:
    if (ret != MG_OK) {
        d->map_failed = true;
        mg_log(MG_LOG_WARNING, "store: drop_written_pages: the store's "
                               "mapping is not in /proc/self/maps; the "
                               "written pages stay cached");
    }
    return ret;
}

static int
pagedrop_cmp(const void *a, const void *b)
{
    const struct pagedrop_range *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

void
mg_pagedrop_prefetch(struct mg_pagedrop *d, MDB_env *env, const void *value,
                     size_t len)
{
    MDB_stat stat;
    uintptr_t page;
    int fd;

    if (len < PAGEDROP_MIN || d->map_failed || mdb_env_stat(env, &stat) != 0 ||
        mdb_env_get_fd(env, &fd) != 0)
        return;
    /* in the map only (a page this transaction wrote is in memory) */
    if (((uintptr_t)value < d->map || (uintptr_t)value + len > d->map_end) &&
        pagedrop_find_map(d, value, fd) != MG_OK)
        return;
    page = d->map + ((uintptr_t)value - d->map) / stat.ms_psize * stat.ms_psize;
    /* asynchronous: the reads of a whole deletion run side by side */
    (void)madvise((void *)page, stat.ms_psize, MADV_WILLNEED);
}

size_t
mg_pagedrop_run(struct mg_pagedrop *d, MDB_env *env, MDB_dbi chunk)
{
    MDB_stat stat;
    MDB_txn *txn;
    MDB_val k, v;
    size_t n = 0, m, dropped = 0;
    uint64_t psize;
    int fd;

    if (d->nkeys == 0 || d->map_failed) {
        d->nkeys = 0;
        return 0;
    }
    if (mdb_env_stat(env, &stat) != 0 || mdb_env_get_fd(env, &fd) != 0 ||
        mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0) {
        d->nkeys = 0;
        return 0;
    }
    psize = stat.ms_psize;
    if (d->capranges < d->nkeys) {
        d->capranges = d->nkeys;
        d->ranges = mg_xrealloc(d->ranges, d->capranges * sizeof(*d->ranges));
    }
    for (size_t i = 0; i < d->nkeys; i++) {
        uint64_t off;

        k.mv_size = MG_CHUNK_KEY;
        k.mv_data = d->keys[i];
        /* not found: its op failed and was undone */
        if (mdb_get(txn, chunk, &k, &v) != 0 || v.mv_size < PAGEDROP_MIN ||
            v.mv_size < psize)
            continue;
        /* outside the known mapping: found once, again after a remap */
        if (((uintptr_t)v.mv_data < d->map ||
             (uintptr_t)v.mv_data + v.mv_size > d->map_end) &&
            pagedrop_find_map(d, v.mv_data, fd) != MG_OK)
            break;
        off = (uint64_t)((uintptr_t)v.mv_data - d->map);
        d->ranges[n].start = off / psize * psize;
        d->ranges[n].end = (off + v.mv_size + psize - 1) / psize * psize;
        n++;
    }
    mdb_txn_abort(txn);
    d->nkeys = 0;
    if (n == 0)
        return 0;
    /* a message's chunks mostly lie next to each other: one call each */
    qsort(d->ranges, n, sizeof(*d->ranges), pagedrop_cmp);
    m = 0;
    for (size_t i = 1; i < n; i++) {
        if (d->ranges[i].start <= d->ranges[m].end) {
            if (d->ranges[i].end > d->ranges[m].end)
                d->ranges[m].end = d->ranges[i].end;
        } else {
            d->ranges[++m] = d->ranges[i];
        }
    }
    for (size_t i = 0; i <= m; i++) {
        uint64_t len = d->ranges[i].end - d->ranges[i].start;

        /* A lookup that faulted a leaf page in also mapped the cached
         * pages around it (the kernel's fault-around, 64 KiB), among them
         * chunks of this batch, and mapped pages are not dropped: unmap
         * them first. On this read-only shared mapping that only clears
         * page-table entries; a reader faults the page in again. Advice
         * only: a failure costs cache, never data. */
        (void)madvise((void *)(d->map + d->ranges[i].start), len,
                      MADV_DONTNEED);
        if (posix_fadvise(fd, (off_t)d->ranges[i].start, (off_t)len,
                          POSIX_FADV_DONTNEED) == 0)
            dropped += len;
    }
    return dropped;
}
