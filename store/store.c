/*
 * store/store.c -- the LMDB environment, the writer thread with group
 * commit, short read transactions and fault handling.
 *
 * One writer thread takes everything queued, runs each op in a nested
 * transaction of one batch transaction (a failing op undoes only itself)
 * and commits the batch once: that commit is the fsync every op of the
 * batch waits for. No write transaction is open while the thread waits for
 * work. Lazy ops start no commit of their own: they ride with the next
 * batch, or are committed alone STORE_LAZY_DELAY_MS after the first of
 * them was queued, and always before the store closes. Once a batch's
 * completions are posted, the page-cache pages of the whole chunks it wrote
 * are dropped (pagedrop.c, store.drop_written_pages). A commit failure that
 * may leave the environment unusable (I/O error, MDB_PANIC) makes the writer
 * reopen it; read transactions hold an rwlock shared so that the reopen waits
 * until none is in use.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sodium.h>

#include "store.h"

/* 2: counters in their own database, chunks sized to whole pages;
 * 3: messages of encryption scheme 2; 4: of scheme 3. A store of an older
 * format is read as it is and upgraded by the first process that opens
 * it for writing, so that an older mailgated refuses it instead of
 * failing per message. */
#define STORE_FORMAT      4
#define STORE_FORMAT_READ 2 /* the oldest format read */
#define STORE_MAP_DEFAULT (64ULL << 30)
#define STORE_RESERVE_DEF (64ULL << 20)
#define STORE_BATCH_OPS   256
/* Bytes per commit at most. Measured with 32 writers of 1 MiB messages
 * (2-core VM, 2 MiB L2 per core): 2 MiB batches store about 1.5 times as
 * many messages per second as 4 MiB ones and 2.5 times as many as 64 MiB
 * ones, because LMDB's dirty pages are copied into the page cache at
 * commit, which is fast while the batch still sits in the CPU's cache.
 * On a disk whose flush costs 5 ms this still allows 400 MB/s. Batches of
 * small messages seldom reach it (32 writers of 64 KiB: just about). */
#define STORE_BATCH_BYTES  (2U << 20)
#define STORE_MAXREADERS   126
#define STORE_ERRBUF_LEN   256
#define STORE_UNSAFE_FLAGS (MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP)
/* How often the writer looks for reader slots of dead processes (a
 * mailgatectl or backup killed inside a read transaction): such a slot
 * pins every page freed after its snapshot while the daemon runs on. The
 * check reads the reader table and probes foreign pids: microseconds. */
#define STORE_READER_CHECK_S 1
/* How long a lazy op waits for a batch that commits anyway before it is
 * committed alone. At one message at a time through the SMTP proxy the
 * next message's held commit comes one client round of MAIL, RCPT, DATA
 * and the data later (a few ms on a LAN): it takes the publish along, so
 * a message costs one fsync, not two. Short enough that the publish is on
 * disk long before anyone could look for the message. */
#define STORE_LAZY_DELAY_MS 100

struct mg_store {
    char *dir;
    uint64_t map_size; /* as configured (the env may round it) */
    uint64_t reserve;  /* configured, before the 10 % cap */
    unsigned batch_ops;
    bool read_only;
    char epoch[17];
    struct mg_vault_senders *senders; /* scheme 2 sender keys */
    uint8_t alg;                      /* the scheme new messages get */
    struct mg_pagedrop *pagedrop;     /* NULL: written pages stay cached */

    /* env and dbs change only under envlock held exclusively (reopen) */
    pthread_rwlock_t envlock;
    MDB_env *env;
    struct mg_store_dbs dbs;
    bool need_reopen;         /* writer thread only */
    time_t reader_checked_at; /* writer thread only (CLOCK_MONOTONIC s) */

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    struct mg_store_op *head, *tail;
    struct mg_store_op *lazy_head, *lazy_tail; /* ride with the next batch */
    struct timespec lazy_due; /* CLOCK_MONOTONIC: commit them alone then */
    struct timespec linger;   /* the writer wakes then after a batch */
    bool lingering;           /* ... and waits for it: no lazy signal */
    size_t queued_bytes;      /* queued + the batch being committed */
    bool stopping;
    bool writer_running;
    pthread_t writer;
};

/* mg_store_run's waiters, each with its own condition: a completion
 * wakes the one thread that waits for it (a shared condition broadcast
 * woke every waiter for every op: with 32 of them, 16 wake-ups of 32
 * threads per batch on the writer thread) */
struct store_run_waiter {
    struct mg_store_op *op;
    pthread_cond_t cond;
    bool done;
    struct store_run_waiter *next;
};
static pthread_mutex_t store_run_lock = PTHREAD_MUTEX_INITIALIZER;
static struct store_run_waiter *store_run_waiters;

/* The store whose writer this thread is (NULL on other threads). */
static _Thread_local struct mg_store *store_writer_self;

static _Thread_local char store_errbuf[4][STORE_ERRBUF_LEN];
static _Thread_local unsigned store_errnext;

static const char *store_error(const char *fmt, ...) MG_PRINTF(1, 2);

/* Error text for any thread (mg_error's buffers are the loop's). */
static const char *
store_error(const char *fmt, ...)
{
    char *b = store_errbuf[store_errnext++ % 4];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(b, STORE_ERRBUF_LEN, fmt, ap);
    va_end(ap);
    return b;
}

static void
store_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t
store_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

static void
store_hex(char out[17], const uint8_t in[8])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[16] = '\0';
}

/* ------------------------------------------------------- classification */

/* Failures of the store itself (space, I/O, a broken environment) are
 * temporary: the sender retries, nothing is lost. Only "not found" and
 * "exists", which are the op's own logic, are permanent. */
static bool
store_rc_temporary(int rc)
{
    return rc != 0 && rc != MDB_NOTFOUND && rc != MDB_KEYEXIST;
}

/* The short text a client may see for an LMDB or system code. */
static const char *
store_rc_text(int rc)
{
    switch (rc) {
    case MDB_MAP_FULL:
        return store_error("store map full");
    case ENOSPC:
        return store_error("disk full");
    case EDQUOT:
        return store_error("disk quota exceeded");
    case EIO:
        return store_error("I/O error: %s", mdb_strerror(rc));
    case MDB_PANIC:
        return store_error("store failure (reopening): %s", mdb_strerror(rc));
    default:
        return store_error("store error: %s", mdb_strerror(rc));
    }
}

/* An environment that may be unusable after this code: reopen it. */
static bool
store_rc_fatal(int rc)
{
    return rc != 0 && rc != MDB_MAP_FULL && rc != MDB_TXN_FULL &&
           rc != MDB_NOTFOUND && rc != MDB_KEYEXIST && rc != ENOMEM;
}

static void
store_op_fail(struct mg_store_op *op, bool temporary, const char *text)
{
    op->status = MG_ERROR;
    op->temporary = temporary;
    snprintf(op->error, sizeof(op->error), "%s", text);
}

/* ---------------------------------------------------------- environment */

/* Free the reader slots of processes that died inside a read
 * transaction (at open, and from the writer while the daemon runs). */
static void
store_readers_check(MDB_env *env)
{
    int dead = 0, rc = mdb_reader_check(env, &dead);

    if (rc != 0)
        mg_log(MG_LOG_WARNING, "store: reader check: %s", mdb_strerror(rc));
    else if (dead > 0)
        mg_log(MG_LOG_INFO, "store: cleared %d stale reader slot%s", dead,
               dead == 1 ? "" : "s");
}

/* Open a created env (closed again on failure). */
static int
store_env_open(struct mg_store *st, MDB_env *env, const char **error_r)
{
    unsigned flags = MDB_NOTLS | (st->read_only ? MDB_RDONLY : 0);
    unsigned got = 0;
    int rc;

    if ((rc = mdb_env_set_maxdbs(env, 8)) != 0 ||
        (rc = mdb_env_set_mapsize(env, (size_t)st->map_size)) != 0 ||
        (rc = mdb_env_set_maxreaders(env, STORE_MAXREADERS)) != 0 ||
        (rc = mdb_env_open(env, st->dir, flags, 0600)) != 0) {
        *error_r =
            store_error("opening the store %s: %s", st->dir, mdb_strerror(rc));
        mdb_env_close(env);
        return MG_ERROR;
    }
    /* durability is the product: refuse to run without it */
    if (mdb_env_get_flags(env, &got) != 0 || (got & STORE_UNSAFE_FLAGS) != 0) {
        *error_r =
            store_error("store %s opened without durable commits", st->dir);
        mdb_env_close(env);
        return MG_ERROR;
    }
    store_readers_check(env);
    return MG_OK;
}

/* The databases from `first` on ("meta" is 0: read before the others,
 * so that a store of another format is named as such). */
static int
store_dbs_open(MDB_txn *txn, bool create, size_t first, size_t end,
               struct mg_store_dbs *dbs, const char **error_r)
{
    static const char *const names[] = {"meta",  "mailbox", "message", "chunk",
                                        "dedup", "kv",      "counter"};
    MDB_dbi *slots[] = {&dbs->meta,  &dbs->mailbox, &dbs->message, &dbs->chunk,
                        &dbs->dedup, &dbs->kv,      &dbs->counter};
    int rc;

    if (end > sizeof(names) / sizeof(names[0]))
        end = sizeof(names) / sizeof(names[0]);
    for (size_t i = first; i < end; i++) {
        rc = mdb_dbi_open(txn, names[i], create ? MDB_CREATE : 0, slots[i]);
        if (rc == MDB_NOTFOUND) {
            *error_r = store_error("the store has no %s database (not "
                                   "initialised?)",
                                   names[i]);
            return MG_ERROR;
        }
        if (rc != 0) {
            *error_r = store_error("opening database %s: %s", names[i],
                                   mdb_strerror(rc));
            return MG_ERROR;
        }
    }
    return MG_OK;
}

static int
store_meta_put(struct mg_store *st, MDB_txn *txn, const char *name,
               const void *data, size_t len, const char **error_r)
{
    MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)data};
    int rc = mdb_put(txn, st->dbs.meta, &k, &v, 0);

    if (rc != 0) {
        *error_r = store_error("writing store %s: %s", name, mdb_strerror(rc));
        return MG_ERROR;
    }
    return MG_OK;
}

struct mg_vault_senders *
mg_store_senders(struct mg_store *st)
{
    return st->senders;
}

uint8_t
mg_store_alg(const struct mg_store *st)
{
    return st->alg;
}

/* Format and epoch: checked on every open, created with the store. */
static int
store_meta_init(struct mg_store *st, MDB_txn *txn, const char **error_r)
{
    MDB_val k, v;
    uint8_t buf[8];
    uint32_t format;
    int rc;

    k.mv_data = (void *)"format";
    k.mv_size = 6;
    rc = mdb_get(txn, st->dbs.meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        if (st->read_only) {
            *error_r = store_error("store %s is not initialised", st->dir);
            return MG_ERROR;
        }
        store_put_u32(buf, STORE_FORMAT);
        if (store_meta_put(st, txn, "format", buf, 4, error_r) != MG_OK)
            return MG_ERROR;
        mg_log(MG_LOG_INFO, "store: created %s (format %d)", st->dir,
               STORE_FORMAT);
    } else if (rc != 0) {
        *error_r = store_error("reading store format: %s", mdb_strerror(rc));
        return MG_ERROR;
    } else if (v.mv_size != 4) {
        *error_r = store_error("store format record is corrupt");
        return MG_ERROR;
    } else {
        format = store_get_u32(v.mv_data);
        if (format > STORE_FORMAT) {
            *error_r = store_error("store format %u is newer than this "
                                   "mailgated understands (%d); upgrade "
                                   "mailgated",
                                   format, STORE_FORMAT);
            return MG_ERROR;
        }
        if (format < STORE_FORMAT_READ) {
            /* no store of an older format was ever deployed: nothing to
             * migrate, but never misread one */
            *error_r = store_error("store format %u is older than this "
                                   "mailgated reads (%d); it was made by a "
                                   "development version: move %s away "
                                   "and start with a new store",
                                   format, STORE_FORMAT_READ, st->dir);
            return MG_ERROR;
        }
        if (format < STORE_FORMAT && !st->read_only) {
            /* its records are read as they are; from now on it may hold
             * messages an older version cannot read */
            store_put_u32(buf, STORE_FORMAT);
            if (store_meta_put(st, txn, "format", buf, 4, error_r) != MG_OK)
                return MG_ERROR;
            mg_log(MG_LOG_INFO, "store: %s upgraded from format %u to %d",
                   st->dir, format, STORE_FORMAT);
        }
    }

    k.mv_data = (void *)"epoch";
    k.mv_size = 5;
    rc = mdb_get(txn, st->dbs.meta, &k, &v);
    if (rc == MDB_NOTFOUND && !st->read_only) {
        randombytes_buf(buf, sizeof(buf));
        if (store_meta_put(st, txn, "epoch", buf, 8, error_r) != MG_OK)
            return MG_ERROR;
        store_hex(st->epoch, buf);
    } else if (rc != 0) {
        *error_r = store_error("reading store epoch: %s", mdb_strerror(rc));
        return MG_ERROR;
    } else if (v.mv_size != 8) {
        *error_r = store_error("store epoch record is corrupt");
        return MG_ERROR;
    } else {
        store_hex(st->epoch, v.mv_data);
    }
    return MG_OK;
}

/* Open the env and its databases; at first use also format and epoch.
 * The env is created by the caller and closed here on failure. */
static int
store_env_setup(struct mg_store *st, MDB_env *env, const char **error_r)
{
    MDB_txn *txn;
    int rc;

    if (store_env_open(st, env, error_r) != MG_OK)
        return MG_ERROR;
    rc = mdb_txn_begin(env, NULL, st->read_only ? MDB_RDONLY : 0, &txn);
    if (rc != 0) {
        *error_r = store_error("store %s: %s", st->dir, mdb_strerror(rc));
        mdb_env_close(env);
        return MG_ERROR;
    }
    if (store_dbs_open(txn, !st->read_only, 0, 1, &st->dbs, error_r) != MG_OK ||
        store_meta_init(st, txn, error_r) != MG_OK ||
        store_dbs_open(txn, !st->read_only, 1, SIZE_MAX, &st->dbs, error_r) !=
            MG_OK) {
        mdb_txn_abort(txn);
        mdb_env_close(env);
        return MG_ERROR;
    }
    rc = mdb_txn_commit(txn); /* also for read-only: keeps the dbi handles */
    if (rc != 0) {
        *error_r = store_error("store %s: %s", st->dir, mdb_strerror(rc));
        mdb_env_close(env);
        return MG_ERROR;
    }
    return MG_OK;
}

/* Messages a crash left behind: WRITING ones go (their sender never got
 * an acknowledgement), HELD ones were committed and are published with a
 * flag (the SMTP proxy may or may not have confirmed them upstream). */
static int
store_recover(struct mg_store *st, const char **error_r)
{
    struct pending {
        char mailbox[MG_MAILBOX_ID_MAX + 1];
        uint64_t id;
        uint8_t state;
    } *v = NULL;
    size_t n = 0, cap = 0, removed = 0, published = 0;
    struct mg_msg_header h;
    MDB_cursor *c;
    MDB_txn *txn = NULL;
    MDB_val k, d;
    int rc, ret = MG_OK;

    rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_cursor_open(txn, st->dbs.message, &c);
    if (rc != 0) {
        if (txn != NULL)
            mdb_txn_abort(txn);
        *error_r = store_error("store recovery: %s", mdb_strerror(rc));
        return MG_ERROR;
    }
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (k.mv_size != MG_MSG_KEY ||
            mg_codec_msg_decode(d.mv_data, d.mv_size, &h, error_r) != MG_OK) {
            mg_log(MG_LOG_WARNING, "store: skipping a bad message record");
            continue;
        }
        if (h.state == MG_MSG_VISIBLE)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = mg_xrealloc(v, cap * sizeof(*v));
        }
        memcpy(v[n].mailbox, k.mv_data, MG_MAILBOX_ID_MAX);
        v[n].mailbox[MG_MAILBOX_ID_MAX] = '\0';
        v[n].id = 0;
        for (int i = 0; i < 8; i++)
            v[n].id = v[n].id << 8 | ((const uint8_t *)k.mv_data)[32 + i];
        v[n].state = h.state;
        n++;
    }
    mdb_cursor_close(c);

    for (size_t i = 0; i < n && ret == MG_OK; i++) {
        const char *err;

        if (v[i].state == MG_MSG_HELD &&
            mg_rec_msg_get(st, txn, v[i].mailbox, v[i].id, &h, &err) == MG_OK) {
            h.flags |= MG_MSG_F_UNCONFIRMED;
            if (mg_rec_msg_put(st, txn, v[i].mailbox, v[i].id, &h, &err) ==
                    MG_OK &&
                mg_rec_msg_publish(st, txn, v[i].mailbox, v[i].id, &err) ==
                    MG_OK) {
                published++;
                continue;
            }
            if (mg_rec_take_rc() != 0) {
                *error_r = store_error("store recovery: %s", err);
                ret = MG_ERROR;
                break;
            }
            /* no mailbox to publish into: nothing can read it */
            mg_log(MG_LOG_WARNING, "store: held message %s/%llu: %s",
                   v[i].mailbox, (unsigned long long)v[i].id, err);
        }
        if (mg_rec_msg_delete(st, txn, v[i].mailbox, v[i].id, &err) ==
            MG_ERROR) {
            *error_r = store_error("store recovery: %s", err);
            ret = MG_ERROR;
        }
        removed++;
    }
    free(v);
    if (ret != MG_OK) {
        mdb_txn_abort(txn);
        return MG_ERROR;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        *error_r = store_error("store recovery: %s", mdb_strerror(rc));
        return MG_ERROR;
    }
    if (removed > 0)
        mg_log(MG_LOG_INFO, "store: removed %zu unfinished message%s", removed,
               removed == 1 ? "" : "s");
    if (published > 0)
        mg_log(MG_LOG_WARNING,
               "store: published %zu held message%s (flagged unconfirmed)",
               published, published == 1 ? "" : "s");
    return MG_OK;
}

/* Close and reopen the environment (writer thread). Readers are kept out
 * for the time it takes; on failure the store stays closed and the next
 * batch tries again. */
static void
store_reopen(struct mg_store *st)
{
    const char *error;
    MDB_env *env;
    int rc;

    /* created before the old one closes: a new handle, never the old */
    rc = mdb_env_create(&env);
    if (rc != 0) {
        mg_log(MG_LOG_ERROR, "store: reopen failed: %s", mdb_strerror(rc));
        return;
    }
    pthread_rwlock_wrlock(&st->envlock);
    if (st->env != NULL) {
        mdb_env_close(st->env);
        st->env = NULL;
    }
    if (st->pagedrop != NULL)
        mg_pagedrop_env_changed(st->pagedrop);
    if (store_env_setup(st, env, &error) != MG_OK) {
        mg_log(MG_LOG_ERROR, "store: reopen failed: %s", error);
    } else {
        st->env = env;
        st->need_reopen = false;
        mg_log(MG_LOG_WARNING, "store: environment reopened");
    }
    pthread_rwlock_unlock(&st->envlock);
}

/* ---------------------------------------------------------------- space */

static uint64_t
store_limit(struct mg_store *st, uint64_t map)
{
    uint64_t reserve = st->reserve ? st->reserve : STORE_RESERVE_DEF;

    if (reserve > map / 10)
        reserve = map / 10;
    return map - reserve;
}

/* Bytes of the map in use: pages up to the last one, minus the free ones.
 * The free list is read (in a read txn) only when it matters: when the
 * last page plus `needed` new bytes would pass the limit. */
static uint64_t
store_used(struct mg_store *st, uint64_t needed, uint64_t *limit_r)
{
    MDB_envinfo info;
    MDB_stat stat;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t pages, freep = 0;

    if (mdb_env_info(st->env, &info) != 0 || mdb_env_stat(st->env, &stat) != 0)
        return 0;
    *limit_r = store_limit(st, info.me_mapsize);
    pages = (uint64_t)info.me_last_pgno + 1;
    if (pages * stat.ms_psize + needed <= *limit_r)
        return pages * stat.ms_psize;
    if (mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn) != 0)
        return pages * stat.ms_psize;
    if (mdb_cursor_open(txn, 0, &c) == 0) { /* FREE_DBI */
        while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
            size_t count; /* an IDL: its first element is its length */

            if (v.mv_size >= sizeof(count)) {
                memcpy(&count, v.mv_data, sizeof(count));
                freep += count;
            }
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    if (freep > pages)
        freep = pages;
    return (pages - freep) * stat.ms_psize;
}

bool
mg_store_low_space(struct mg_store *st)
{
    uint64_t used, limit = UINT64_MAX;

    pthread_rwlock_rdlock(&st->envlock);
    used = st->env != NULL ? store_used(st, 0, &limit) : 0;
    pthread_rwlock_unlock(&st->envlock);
    return used > limit;
}

/* --------------------------------------------------------------- writer */

/* Run one op in its own nested transaction of the batch. */
static void
store_apply(struct mg_store *st, MDB_txn *parent, struct mg_store_op *op)
{
    MDB_txn *child;
    int rc, lrc;

    rc = mdb_txn_begin(st->env, parent, 0, &child);
    if (rc != 0) {
        store_op_fail(op, store_rc_temporary(rc), store_rc_text(rc));
        if (store_rc_fatal(rc))
            st->need_reopen = true;
        return;
    }
    op->error[0] = '\0';
    (void)mg_rec_take_rc();
    rc = op->apply(st, child, op);
    if (rc == MG_OK) {
        rc = mdb_txn_commit(child);
        if (rc != 0) {
            store_op_fail(op, store_rc_temporary(rc), store_rc_text(rc));
            if (store_rc_fatal(rc))
                st->need_reopen = true;
        }
        return;
    }
    mdb_txn_abort(child);
    /* an LMDB code returned, or one behind a records function's error */
    lrc = rc == MG_ERROR || rc == MG_DECLINED || rc == MG_AGAIN
              ? mg_rec_take_rc()
              : rc;
    if (lrc == MDB_PANIC)
        st->need_reopen = true;
    if (store_rc_temporary(lrc)) {
        const char *text = store_rc_text(lrc);

        /* the short cause first, the op's own detail after it */
        if (op->error[0] != '\0' && strcmp(op->error, text) != 0)
            text = store_error("%s (%s)", text, op->error);
        store_op_fail(op, true, text);
        return;
    }
    if (op->error[0] == '\0')
        snprintf(op->error, sizeof(op->error), "%s",
                 lrc != 0 ? mdb_strerror(lrc) : "store operation failed");
    op->status = MG_ERROR;
    op->temporary = false;
}

/* One line per batch with temporary failures (disk full must be seen,
 * but not once per message). */
static void
store_batch_log(struct mg_store_op *batch)
{
    const char *first = NULL;
    size_t n = 0, failed = 0;

    for (struct mg_store_op *op = batch; op != NULL; op = op->next, n++) {
        if (op->status != MG_OK && op->temporary) {
            if (first == NULL)
                first = op->error;
            failed++;
        }
    }
    if (failed > 0)
        mg_log(MG_LOG_WARNING, "store: %zu of %zu writes failed: %s", failed, n,
               first);
}

static void
store_readers_check_due(struct mg_store *st)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - st->reader_checked_at < STORE_READER_CHECK_S)
        return;
    st->reader_checked_at = now.tv_sec;
    store_readers_check(st->env);
}

static void
store_batch(struct mg_store *st, struct mg_store_op *batch)
{
    struct mg_store_op *op;
    uint64_t used = 0, limit = UINT64_MAX, added = 0, needed = 0;
    MDB_txn *txn = NULL;
    int rc;

    for (op = batch; op != NULL; op = op->next) {
        op->status = MG_OK;
        op->temporary = false;
        op->error[0] = '\0';
    }
    if (st->need_reopen || st->env == NULL)
        store_reopen(st);
    if (st->env == NULL) {
        for (op = batch; op != NULL; op = op->next)
            store_op_fail(op, true, "store unavailable");
        return;
    }
    if (st->pagedrop != NULL)
        mg_pagedrop_clear(st->pagedrop); /* left over from a failed begin */
    for (op = batch; op != NULL; op = op->next) {
        if (op->new_data)
            needed += op->bytes;
    }
    store_readers_check_due(st);
    used = store_used(st, needed, &limit);
    rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc == MDB_PANIC) {
        store_reopen(st);
        rc = st->env != NULL ? mdb_txn_begin(st->env, NULL, 0, &txn) : rc;
    }
    if (rc != 0) {
        for (op = batch; op != NULL; op = op->next)
            store_op_fail(op, true, store_rc_text(rc));
        if (store_rc_fatal(rc))
            st->need_reopen = true;
        return;
    }
    for (op = batch; op != NULL; op = op->next) {
        /* new data must leave room for the deletions that free space */
        if (op->new_data && used + added + op->bytes > limit) {
            store_op_fail(op, true, "store is within its reserve");
            continue;
        }
        store_apply(st, txn, op);
        if (op->status == MG_OK && op->new_data)
            added += op->bytes;
    }
    rc = mdb_txn_commit(txn); /* the fsync */
    if (rc != 0) {
        const char *text = store_rc_text(rc);

        if (st->pagedrop != NULL)
            mg_pagedrop_clear(st->pagedrop);

        mg_log(MG_LOG_ERROR, "store: commit failed: %s", mdb_strerror(rc));
        for (op = batch; op != NULL; op = op->next) {
            if (op->status == MG_OK)
                store_op_fail(op, true, text);
        }
        if (store_rc_fatal(rc))
            st->need_reopen = true;
    }
    store_batch_log(batch);
    if (st->need_reopen)
        store_reopen(st);
}

/* STORE_LAZY_DELAY_MS from now (CLOCK_MONOTONIC). */
static void
store_lazy_due(struct timespec *t)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_nsec += STORE_LAZY_DELAY_MS * 1000000L;
    t->tv_sec += t->tv_nsec / 1000000000L;
    t->tv_nsec %= 1000000000L;
}

/* Take the ops of the next batch off the queues (qlock held): every lazy
 * op, then queued ops up to the batch limits (at least one). */
static struct mg_store_op *
store_take_batch(struct mg_store *st, size_t *bytes_r)
{
    struct mg_store_op *batch = st->lazy_head, *last = st->lazy_tail;
    size_t nops = 0, bytes = 0;

    for (struct mg_store_op *op = batch; op != NULL; op = op->next) {
        nops++;
        bytes += op->bytes;
    }
    st->lazy_head = st->lazy_tail = NULL;
    while (st->head != NULL &&
           (nops == 0 || (nops < st->batch_ops &&
                          bytes + st->head->bytes <= STORE_BATCH_BYTES))) {
        struct mg_store_op *op = st->head;

        st->head = op->next;
        op->next = NULL;
        if (last != NULL)
            last->next = op;
        else
            batch = op;
        last = op;
        nops++;
        bytes += op->bytes;
    }
    if (st->head == NULL)
        st->tail = NULL;
    *bytes_r = bytes;
    return batch;
}

static void *
store_writer(void *arg)
{
    struct mg_store *st = arg;
    struct mg_store_op *batch, *op, *next;
    size_t bytes;

    store_writer_self = st;
    pthread_mutex_lock(&st->qlock);
    for (;;) {
        /* no transaction is open while waiting; lazy ops alone wait until
         * they are due (or the store closes). After a batch the writer
         * lingers for STORE_LAZY_DELAY_MS: a lazy op queued meanwhile
         * (the proxy's publish, right after its commit) needs no wake-up
         * of its own: it rides with the next batch, or the writer, awake
         * at the linger's end, then waits until it is due. */
        while (st->head == NULL && !st->stopping) {
            if (st->lazy_head != NULL) {
                if (pthread_cond_timedwait(&st->qcond, &st->qlock,
                                           &st->lazy_due) == ETIMEDOUT)
                    break;
            } else if (st->lingering) {
                if (pthread_cond_timedwait(&st->qcond, &st->qlock,
                                           &st->linger) == ETIMEDOUT)
                    st->lingering = false; /* lazy ops wait till due */
            } else {
                pthread_cond_wait(&st->qcond, &st->qlock);
            }
        }
        st->lingering = false;
        if (st->head == NULL && st->lazy_head == NULL)
            break;
        batch = store_take_batch(st, &bytes);
        pthread_mutex_unlock(&st->qlock);

        store_batch(st, batch);

        pthread_mutex_lock(&st->qlock);
        st->queued_bytes -= bytes;
        store_lazy_due(&st->linger);
        st->lingering = true; /* before the completions: see store_writer */
        pthread_mutex_unlock(&st->qlock);
        for (op = batch; op != NULL; op = next) {
            next = op->next; /* op may be gone after complete */
            op->next = NULL;
            op->complete(op);
        }
        /* after the completions: the 250s do not wait for it */
        if (st->pagedrop != NULL && st->env != NULL)
            (void)mg_pagedrop_run(st->pagedrop, st->env, st->dbs.chunk);
        pthread_mutex_lock(&st->qlock);
    }
    pthread_mutex_unlock(&st->qlock);
    return NULL;
}

/* Queue an op at the tail of the normal or the lazy queue. The writer is
 * signalled after the lock is let go: woken under it, it would only block
 * on the lock again (two more futex calls and a switch). */
static void
store_enqueue(struct mg_store *st, struct mg_store_op *op, bool lazy)
{
    bool wake = false;

    op->next = NULL;
    pthread_mutex_lock(&st->qlock);
    if (!st->writer_running) {
        pthread_mutex_unlock(&st->qlock);
        store_op_fail(op, false, "the store is read-only");
        op->complete(op);
        return;
    }
    if (!lazy) {
        if (st->tail != NULL)
            st->tail->next = op;
        else
            st->head = op;
        st->tail = op;
        wake = true;
    } else if (st->lazy_tail != NULL) {
        st->lazy_tail->next = op; /* due with the first one */
        st->lazy_tail = op;
    } else {
        store_lazy_due(&st->lazy_due);
        st->lazy_head = st->lazy_tail = op;
        /* an idle writer sets its alarm; a lingering one wakes before
         * this op is due anyway, and sets it then */
        wake = !st->lingering;
    }
    st->queued_bytes += op->bytes;
    pthread_mutex_unlock(&st->qlock);
    if (wake)
        pthread_cond_signal(&st->qcond);
}

void
mg_store_submit(struct mg_store *st, struct mg_store_op *op)
{
    store_enqueue(st, op, false);
}

void
mg_store_submit_lazy(struct mg_store *st, struct mg_store_op *op)
{
    store_enqueue(st, op, true);
}

static void
store_run_complete(struct mg_store_op *op)
{
    pthread_mutex_lock(&store_run_lock);
    for (struct store_run_waiter *w = store_run_waiters; w != NULL;
         w = w->next) {
        if (w->op == op) {
            w->done = true;
            pthread_cond_signal(&w->cond);
            break;
        }
    }
    pthread_mutex_unlock(&store_run_lock);
}

int
mg_store_run(struct mg_store *st, struct mg_store_op *op)
{
    struct store_run_waiter w = {.op = op};
    struct store_run_waiter **pp;

    pthread_cond_init(&w.cond, NULL);
    pthread_mutex_lock(&store_run_lock);
    w.next = store_run_waiters;
    store_run_waiters = &w;
    pthread_mutex_unlock(&store_run_lock);
    op->complete = store_run_complete;
    mg_store_submit(st, op);
    pthread_mutex_lock(&store_run_lock);
    while (!w.done)
        pthread_cond_wait(&w.cond, &store_run_lock);
    for (pp = &store_run_waiters; *pp != &w; pp = &(*pp)->next)
        ;
    *pp = w.next;
    pthread_mutex_unlock(&store_run_lock);
    pthread_cond_destroy(&w.cond);
    return op->status;
}

size_t
mg_store_queued_bytes(struct mg_store *st)
{
    size_t n;

    pthread_mutex_lock(&st->qlock);
    n = st->queued_bytes;
    pthread_mutex_unlock(&st->qlock);
    return n;
}

/* ----------------------------------------------------------- open/close */

static int
store_mkdir(const char *dir, const char **error_r)
{
    struct stat sb;

    if (mkdir(dir, 0700) == 0 ||
        (errno == EEXIST && stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)))
        return MG_OK;
    *error_r = store_error("creating %s: %s", dir, strerror(errno));
    return MG_ERROR;
}

static void
store_free(struct mg_store *st)
{
    mg_vault_senders_free(st->senders); /* wipes the sender keys */
    mg_pagedrop_free(st->pagedrop);
    pthread_rwlock_destroy(&st->envlock);
    pthread_mutex_destroy(&st->qlock);
    pthread_cond_destroy(&st->qcond);
    free(st->dir);
    free(st);
}

int
mg_store_open(const struct mg_store_config *cfg, struct mg_store **st_r,
              const char **error_r)
{
    struct mg_store *st;
    int rc;

    if (sodium_init() < 0) {
        *error_r = store_error("libsodium failed to initialise");
        return MG_ERROR;
    }
    if (!cfg->read_only && store_mkdir(cfg->dir, error_r) != MG_OK)
        return MG_ERROR;

    st = mg_xcalloc(1, sizeof(*st));
    st->dir = mg_xstrdup(cfg->dir);
    st->map_size = cfg->map_size ? cfg->map_size : STORE_MAP_DEFAULT;
    st->reserve = cfg->reserve;
    st->batch_ops = cfg->batch_ops ? cfg->batch_ops : STORE_BATCH_OPS;
    st->read_only = cfg->read_only;
    st->alg = cfg->alg != 0 ? cfg->alg : mg_vault_alg_auto();
    if (!mg_vault_alg_writable(st->alg)) {
        *error_r = store_error("encryption scheme %u (%s) is not available "
                               "here%s",
                               st->alg, mg_vault_alg_cipher(st->alg),
                               st->alg == MG_VAULT_ALG_V3
                                   ? ": OpenSSL provides no AES-256-GCM"
                                   : "");
        free(st->dir);
        free(st);
        return MG_ERROR;
    }
    if (!st->read_only && cfg->sender_key_lifetime >= 0) {
        st->senders = mg_vault_senders_new(
            cfg->sender_key_lifetime > 0 ? (unsigned)cfg->sender_key_lifetime
                                         : MG_VAULT_SENDER_LIFETIME,
            MG_VAULT_SENDER_MESSAGES, MG_VAULT_SENDER_MAILBOXES);
    }
    if (!st->read_only && cfg->drop_written_pages)
        st->pagedrop = mg_pagedrop_new();
    pthread_rwlock_init(&st->envlock, NULL);
    pthread_mutex_init(&st->qlock, NULL);
    {
        pthread_condattr_t ca; /* lazy_due is monotonic */

        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&st->qcond, &ca);
        pthread_condattr_destroy(&ca);
    }

    rc = mdb_env_create(&st->env);
    if (rc != 0) {
        *error_r = store_error("mdb_env_create: %s", mdb_strerror(rc));
        store_free(st);
        return MG_ERROR;
    }
    if (store_env_setup(st, st->env, error_r) != MG_OK) {
        store_free(st);
        return MG_ERROR;
    }
    if (!st->read_only) {
        /* only the holder of the data directory (the daemon) may clean up:
         * another process would remove the daemon's messages in flight */
        if (cfg->recover && store_recover(st, error_r) != MG_OK)
            goto fail;
        rc = pthread_create(&st->writer, NULL, store_writer, st);
        if (rc != 0) {
            *error_r =
                store_error("starting the store writer: %s", strerror(rc));
            goto fail;
        }
        st->writer_running = true;
    }
    mg_log(MG_LOG_DEBUG, "store: opened %s%s, epoch %s, writing scheme %u (%s)",
           st->dir, st->read_only ? " read-only" : "", st->epoch, st->alg,
           mg_vault_alg_cipher(st->alg));
    *st_r = st;
    return MG_OK;
fail:
    mdb_env_close(st->env);
    store_free(st);
    return MG_ERROR;
}

void
mg_store_close(struct mg_store *st)
{
    if (st == NULL)
        return;
    pthread_mutex_lock(&st->qlock);
    st->stopping = true;
    pthread_cond_signal(&st->qcond);
    pthread_mutex_unlock(&st->qlock);
    if (st->writer_running)
        pthread_join(st->writer, NULL); /* it drains the queue first */
    if (st->env != NULL)
        mdb_env_close(st->env); /* closes the dbi handles too */
    store_free(st);
}

const char *
mg_store_epoch(const struct mg_store *st)
{
    return st->epoch;
}

const struct mg_store_dbs *
mg_store_dbs(const struct mg_store *st)
{
    return &st->dbs;
}

MDB_env *
mg_store_env(struct mg_store *st)
{
    return st->env;
}

void
mg_store_chunk_written(struct mg_store *st, const uint8_t key[MG_CHUNK_KEY],
                       size_t len)
{
    /* only the batch's writes: a tool's own transaction is not committed
     * by the writer */
    if (st->pagedrop != NULL && store_writer_self == st)
        mg_pagedrop_note(st->pagedrop, key, len);
}

bool
mg_store_drops_pages(const struct mg_store *st)
{
    return st->pagedrop != NULL;
}

void
mg_store_chunk_deleting(struct mg_store *st, const void *value, size_t len)
{
    if (st->pagedrop != NULL && store_writer_self == st)
        mg_pagedrop_prefetch(st->pagedrop, st->env, value, len);
}

/* ---------------------------------------------------------------- reads */

int
mg_store_read_begin(struct mg_store *st, MDB_txn **txn_r, const char **error_r)
{
    int rc;

    pthread_rwlock_rdlock(&st->envlock);
    if (st->env == NULL) {
        pthread_rwlock_unlock(&st->envlock);
        *error_r = store_error("store unavailable");
        return MG_ERROR;
    }
    rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn_r);
    if (rc != 0) {
        pthread_rwlock_unlock(&st->envlock);
        *error_r = store_error("read transaction: %s", mdb_strerror(rc));
        return MG_ERROR;
    }
    return MG_OK;
}

void
mg_store_read_end(struct mg_store *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&st->envlock);
}

/* ------------------------------------------------------ backup, epoch */

static int
store_not_dot(const struct dirent *de)
{
    return strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
}

int
mg_store_backup(struct mg_store *st, const char *dir, const char **error_r)
{
    struct dirent **names;
    int rc, n;

    if (store_mkdir(dir, error_r) != MG_OK)
        return MG_ERROR;
    /* never mix a copy with whatever was there */
    n = scandir(dir, &names, store_not_dot, alphasort);
    if (n < 0) {
        *error_r = store_error("%s: %s", dir, strerror(errno));
        return MG_ERROR;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (n > 0) {
        *error_r = store_error("backup directory %s is not empty", dir);
        return MG_ERROR;
    }
    pthread_rwlock_rdlock(&st->envlock);
    rc = st->env != NULL ? mdb_env_copy2(st->env, dir, MDB_CP_COMPACT) : EIO;
    pthread_rwlock_unlock(&st->envlock);
    if (rc != 0) {
        *error_r = store_error("backup to %s: %s", dir, mdb_strerror(rc));
        return MG_ERROR;
    }
    mg_log(MG_LOG_INFO, "store: backup written to %s", dir);
    return MG_OK;
}

struct store_epoch_op {
    struct mg_store_op op;
    uint8_t epoch[8];
};

/* Returns the LMDB code itself, so the writer can classify it. */
static int
store_epoch_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct store_epoch_op *e = op->arg;
    MDB_val k = {5, (void *)"epoch"}, v = {8, e->epoch};

    return mdb_put(txn, st->dbs.meta, &k, &v, 0);
}

int
mg_store_new_epoch(struct mg_store *st, const char **error_r)
{
    struct store_epoch_op e;

    if (st->read_only) {
        *error_r = store_error("the store is open read-only");
        return MG_ERROR;
    }
    memset(&e, 0, sizeof(e));
    randombytes_buf(e.epoch, sizeof(e.epoch));
    e.op.apply = store_epoch_apply;
    e.op.arg = &e;
    if (mg_store_run(st, &e.op) != MG_OK) {
        *error_r = store_error("setting a new epoch: %s", e.op.error);
        return MG_ERROR;
    }
    store_hex(st->epoch, e.epoch);
    mg_log(MG_LOG_INFO, "store: new epoch %s", st->epoch);
    return MG_OK;
}
