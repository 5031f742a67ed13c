/* tests/unit/test_store.c -- the LMDB store: open, group commit, faults,
 * records, recovery, backup */
#include "config.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"

#define MB1 "mailbox0001"
#define MB2 "mailbox0002"

/* ------------------------------------------------------------- helpers */

struct fixture {
    char dir[64];
    char path[96];
    struct mg_store *st;
};

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void
rm_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static struct mg_store *
open_store_as(const char *path, uint64_t map_size, bool read_only, bool recover)
{
    struct mg_store_config cfg = {.dir = path,
                                  .map_size = map_size,
                                  .read_only = read_only,
                                  .recover = recover};
    struct mg_store *st = NULL;
    const char *error = NULL;

    if (mg_store_open(&cfg, &st, &error) != MG_OK)
        fail_msg("open %s: %s", path, error);
    return st;
}

/* As the daemon opens it: the data directory is ours, recover. */
static struct mg_store *
open_store(const char *path, uint64_t map_size, bool read_only)
{
    return open_store_as(path, map_size, read_only, !read_only);
}

static int
setup_map(void **state, uint64_t map_size)
{
    struct fixture *f = calloc(1, sizeof(*f));

    snprintf(f->dir, sizeof(f->dir), "/tmp/test_store.XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/store", f->dir);
    f->st = open_store(f->path, map_size, false);
    *state = f;
    return 0;
}

static int
setup(void **state)
{
    return setup_map(state, 64ULL << 20);
}

static int
setup_tiny(void **state)
{
    return setup_map(state, 1ULL << 20);
}

static int
teardown(void **state)
{
    struct fixture *f = *state;

    mg_store_close(f->st);
    rm_tree(f->dir);
    free(f);
    return 0;
}

static void
reopen(struct fixture *f)
{
    mg_store_close(f->st);
    f->st = open_store(f->path, 64ULL << 20, false);
}

/* A synchronous write: fn runs inside the writer's nested transaction. */
typedef int (*write_fn)(struct mg_store *st, MDB_txn *txn, void *ctx,
                        const char **error_r);

struct wop {
    struct mg_store_op op;
    write_fn fn;
    void *ctx;
    size_t txnid;
};

static int
wop_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct wop *w = op->arg;
    const char *error = NULL;
    int ret;

    w->txnid = mdb_txn_id(txn);
    ret = w->fn(st, txn, w->ctx, &error);
    if (ret != MG_OK && error != NULL)
        snprintf(op->error, sizeof(op->error), "%s", error);
    return ret;
}

static void
wop_init(struct wop *w, write_fn fn, void *ctx, bool new_data, size_t bytes)
{
    memset(w, 0, sizeof(*w));
    w->fn = fn;
    w->ctx = ctx;
    w->op.apply = wop_apply;
    w->op.arg = w;
    w->op.new_data = new_data;
    w->op.bytes = bytes;
}

static int
run_write(struct mg_store *st, write_fn fn, void *ctx, struct wop *w_r)
{
    struct wop w;

    wop_init(&w, fn, ctx, false, 0);
    mg_store_run(st, &w.op);
    if (w_r != NULL)
        *w_r = w;
    return w.op.status;
}

/* Write steps used as write_fn with a small context */
static struct mg_mailbox
mailbox(const char *id)
{
    struct mg_mailbox m;

    memset(&m, 0, sizeof(m));
    snprintf(m.id, sizeof(m.id), "%s", id);
    m.active = true;
    m.accept_journal = true;
    m.accept_proxy = true;
    m.created = 1700000000;
    return m;
}

static int
put_mailbox(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    struct mg_mailbox m = mailbox(ctx);

    return mg_rec_mailbox_put(st, txn, &m, error_r);
}

struct msg_spec {
    const char *mailbox;
    uint64_t id;
    uint8_t state;
    uint64_t received;
    uint64_t size;
    uint32_t nchunks;
    size_t chunk_len;
};

static int
put_msg(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    const struct msg_spec *s = ctx;
    struct mg_msg_header h;
    uint8_t *chunk;
    int ret = MG_OK;

    memset(&h, 0, sizeof(h));
    h.state = s->state;
    h.alg = MG_VAULT_ALG_V1;
    h.received = s->received;
    h.size = s->size;
    h.nchunks = s->nchunks;
    if (mg_rec_msg_put(st, txn, s->mailbox, s->id, &h, error_r) != MG_OK)
        return MG_ERROR;
    chunk = calloc(1, s->chunk_len + 1);
    for (uint32_t i = 0; i < s->nchunks && ret == MG_OK; i++) {
        memset(chunk, 'a' + (int)(i % 26), s->chunk_len);
        ret = mg_rec_chunk_put(st, txn, s->mailbox, s->id, i, chunk,
                               s->chunk_len, error_r);
    }
    free(chunk);
    return ret;
}

struct msg_ref {
    const char *mailbox;
    uint64_t id;
};

static int
publish_msg(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    const struct msg_ref *r = ctx;

    return mg_rec_msg_publish(st, txn, r->mailbox, r->id, error_r);
}

static int
delete_msg(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    const struct msg_ref *r = ctx;

    return mg_rec_msg_delete(st, txn, r->mailbox, r->id, error_r);
}

static int
put_kv(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    const char *key = ctx;

    return mg_rec_kv_put(st, txn, key, key, strlen(key), error_r);
}

static bool
kv_exists(struct mg_store *st, const char *key)
{
    struct mg_buf b;
    const char *error;
    MDB_txn *txn;
    int ret;

    if (mg_store_read_begin(st, &txn, &error) != MG_OK)
        return false;
    mg_buf_init(&b);
    ret = mg_rec_kv_get(st, txn, key, &b, &error);
    mg_store_read_end(st, txn);
    mg_buf_free(&b);
    return ret == MG_OK;
}

static int
get_mailbox(struct mg_store *st, const char *id, struct mg_mailbox *m)
{
    const char *error;
    MDB_txn *txn;
    int ret;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    ret = mg_rec_mailbox_get(st, txn, id, m, &error);
    mg_store_read_end(st, txn);
    return ret;
}

static int
get_msg(struct mg_store *st, const char *mbox, uint64_t id,
        struct mg_msg_header *h)
{
    const char *error;
    MDB_txn *txn;
    int ret;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    ret = mg_rec_msg_get(st, txn, mbox, id, h, &error);
    mg_store_read_end(st, txn);
    return ret;
}

static void
check_counters(struct mg_store *st, const char *id, uint64_t messages,
               uint64_t bytes)
{
    struct mg_mailbox m;

    assert_int_equal(get_mailbox(st, id, &m), MG_OK);
    assert_int_equal(m.messages, messages);
    assert_int_equal(m.bytes, bytes);
    mg_mailbox_clear(&m);
}

static size_t
count_chunks(struct mg_store *st, const char *mbox, uint64_t id)
{
    const char *error;
    const void *data;
    size_t len, n = 0;
    MDB_txn *txn;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    while (mg_rec_chunk_get(st, txn, mbox, id, (uint32_t)n, &data, &len,
                            &error) == MG_OK)
        n++;
    mg_store_read_end(st, txn);
    return n;
}

/* --------------------------------------------------------------- open */

/* Rewrite the format record of a closed store with LMDB itself (a store
 * of another format cannot be opened to do it). */
static void
set_format(const char *path, uint8_t format)
{
    uint8_t v[4] = {0, 0, 0, format};
    MDB_val k = {6, "format"}, d = {4, v};
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;

    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
    assert_int_equal(mdb_env_open(env, path, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    assert_int_equal(mdb_put(txn, dbi, &k, &d, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static uint32_t
store_format(struct mg_store *st)
{
    MDB_val k = {6, "format"}, v;
    const char *error;
    const uint8_t *p;
    MDB_txn *txn;
    uint32_t format;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    assert_int_equal(mdb_get(txn, mg_store_dbs(st)->meta, &k, &v), 0);
    assert_int_equal(v.mv_size, 4);
    p = v.mv_data;
    format = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
             p[3];
    mg_store_read_end(st, txn);
    return format;
}

static void
test_open_format_epoch(void **state)
{
    struct fixture *f = *state;
    struct mg_store_config cfg = {.dir = f->path};
    char epoch[17];
    unsigned flags = 0;
    const char *error;
    struct mg_store *st2;
    struct stat sb;
    MDB_txn *txn;
    MDB_val k = {6, "format"}, v;

    assert_int_equal(strlen(mg_store_epoch(f->st)), 16);
    assert_int_equal(strspn(mg_store_epoch(f->st), "0123456789abcdef"), 16);
    snprintf(epoch, sizeof(epoch), "%s", mg_store_epoch(f->st));
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    {
        char data[128];

        snprintf(data, sizeof(data), "%s/data.mdb", f->path);
        assert_int_equal(stat(data, &sb), 0);
        assert_int_equal(sb.st_mode & 0077, 0);
    }

    assert_int_equal(mdb_env_get_flags(mg_store_env(f->st), &flags), 0);
    assert_int_equal(flags & (MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP), 0);
    assert_true(flags & MDB_NOTLS);

    assert_int_equal(mg_store_read_begin(f->st, &txn, &error), MG_OK);
    assert_int_equal(mdb_get(txn, mg_store_dbs(f->st)->meta, &k, &v), 0);
    assert_int_equal(v.mv_size, 4);
    assert_memory_equal(v.mv_data, "\0\0\0\4", 4);
    mg_store_read_end(f->st, txn);
    assert_false(mg_store_low_space(f->st));

    reopen(f);
    assert_string_equal(mg_store_epoch(f->st), epoch);

    /* an older format (1: counters in the mailbox record, 64 KiB chunks)
     * is refused with a clear message, read-only as well */
    mg_store_close(f->st);
    f->st = NULL;
    set_format(f->path, 1);
    assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_ERROR);
    assert_non_null(strstr(error, "store format 1 is older"));
    assert_non_null(strstr(error, "new store"));
    cfg.read_only = true;
    assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_ERROR);
    assert_non_null(strstr(error, "store format 1 is older"));
    cfg.read_only = false;

    /* formats 2 (scheme 1 messages only) and 3 (schemes 1 and 2) are
     * read as they are; the first writable open makes them 4, which a
     * version that knows fewer schemes refuses (below: what a format 3
     * binary says of format 4 is what this one says of format 5) instead
     * of failing message by message */
    for (uint8_t old = 2; old <= 3; old++) {
        set_format(f->path, old);
        cfg.read_only = true;
        assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_OK);
        assert_int_equal(store_format(st2), old);
        mg_store_close(st2);
        cfg.read_only = false;
        assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_OK);
        assert_int_equal(store_format(st2), 4);
        assert_string_equal(mg_store_epoch(st2), epoch);
        mg_store_close(st2);
    }

    /* a newer format is refused with a clear message */
    set_format(f->path, 5);
    assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_ERROR);
    assert_non_null(strstr(error, "store format 5 is newer"));
    assert_non_null(strstr(error, "upgrade mailgated"));
    cfg.read_only = true;
    assert_int_equal(mg_store_open(&cfg, &st2, &error), MG_ERROR);
    assert_non_null(strstr(error, "store format 5 is newer"));
    cfg.read_only = false;
    f->st = open_store(f->dir, 0, false); /* for teardown: another store */
}

/* -------------------------------------------------------- group commit */

/* Holds the writer inside a batch until released, so that what is
 * submitted meanwhile forms the next batch. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool entered, open;
};

static int
gate_fn(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    struct gate *g = ctx;

    /* a write: an empty transaction would not advance the txn id */
    if (put_kv(st, txn, "gate", error_r) != MG_OK)
        return MG_ERROR;
    pthread_mutex_lock(&g->lock);
    g->entered = true;
    pthread_cond_broadcast(&g->cond);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    return MG_OK;
}

static void
noop_complete(struct mg_store_op *op)
{
    (void)op;
}

static struct wop gate_op;

static void
gate_close(struct mg_store *st, struct gate *g)
{
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->entered = g->open = false;
    wop_init(&gate_op, gate_fn, g, false, 0);
    gate_op.op.complete = noop_complete;
    mg_store_submit(st, &gate_op.op);
    pthread_mutex_lock(&g->lock);
    while (!g->entered)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void
gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

#define GC_THREADS 8
#define GC_OPS     8

struct gc_op {
    struct wop w;
    struct mg_store *st;
    char key[32];
    bool visible_at_complete;
};

static pthread_mutex_t gc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gc_cond = PTHREAD_COND_INITIALIZER;
static int gc_done;
static struct gc_op gc_ops[GC_THREADS][GC_OPS];

static void
gc_complete(struct mg_store_op *op)
{
    struct gc_op *g = (struct gc_op *)((char *)op - offsetof(struct gc_op, w));

    /* complete runs after the commit: a fresh reader sees the data */
    g->visible_at_complete = kv_exists(g->st, g->key);
    pthread_mutex_lock(&gc_lock);
    gc_done++;
    pthread_cond_signal(&gc_cond);
    pthread_mutex_unlock(&gc_lock);
}

static void *
gc_thread(void *arg)
{
    struct gc_op *ops = arg;

    for (int j = 0; j < GC_OPS; j++) {
        wop_init(&ops[j].w, put_kv, ops[j].key, true, 100);
        ops[j].w.op.complete = gc_complete;
        mg_store_submit(ops[j].st, &ops[j].w.op);
    }
    return NULL;
}

static void
test_group_commit(void **state)
{
    struct fixture *f = *state;
    pthread_t th[GC_THREADS];
    struct gate g;

    gc_done = 0;
    gate_close(f->st, &g);
    for (int i = 0; i < GC_THREADS; i++) {
        for (int j = 0; j < GC_OPS; j++) {
            gc_ops[i][j].st = f->st;
            snprintf(gc_ops[i][j].key, sizeof(gc_ops[i][j].key), "t/%d/%d", i,
                     j);
        }
        pthread_create(&th[i], NULL, gc_thread, gc_ops[i]);
    }
    for (int i = 0; i < GC_THREADS; i++)
        pthread_join(th[i], NULL);
    assert_true(mg_store_queued_bytes(f->st) >= GC_THREADS * GC_OPS * 100);
    gate_open(&g);

    pthread_mutex_lock(&gc_lock);
    while (gc_done < GC_THREADS * GC_OPS)
        pthread_cond_wait(&gc_cond, &gc_lock);
    pthread_mutex_unlock(&gc_lock);

    for (int i = 0; i < GC_THREADS; i++) {
        for (int j = 0; j < GC_OPS; j++) {
            struct gc_op *o = &gc_ops[i][j];

            assert_int_equal(o->w.op.status, MG_OK);
            assert_true(o->visible_at_complete);
            /* all 64 were queued together: one transaction, one fsync */
            assert_int_equal(o->w.txnid, gc_ops[0][0].w.txnid);
        }
    }
    assert_true(gc_ops[0][0].w.txnid > gate_op.txnid);
    assert_int_equal(mg_store_queued_bytes(f->st), 0);
}

/* ---------------------------------------------------------- lazy ops */

struct lazy_op {
    struct wop w;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    struct timespec at; /* CLOCK_MONOTONIC, when complete ran */
};

static void
lazy_complete(struct mg_store_op *op)
{
    struct lazy_op *l =
        (struct lazy_op *)((char *)op - offsetof(struct lazy_op, w));

    pthread_mutex_lock(&l->lock);
    clock_gettime(CLOCK_MONOTONIC, &l->at);
    l->done = true;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

/* Queue a write of `key` (lazy or not) that reports its completion. */
static void
lazy_submit_as(struct mg_store *st, struct lazy_op *l, const char *key,
               bool lazy)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    wop_init(&l->w, put_kv, (void *)key, false, 0);
    l->w.op.complete = lazy_complete;
    if (lazy)
        mg_store_submit_lazy(st, &l->w.op);
    else
        mg_store_submit(st, &l->w.op);
}

static void
lazy_submit(struct mg_store *st, struct lazy_op *l, const char *key)
{
    lazy_submit_as(st, l, key, true);
}

static bool
lazy_done(struct lazy_op *l)
{
    bool done;

    pthread_mutex_lock(&l->lock);
    done = l->done;
    pthread_mutex_unlock(&l->lock);
    return done;
}

static void
lazy_wait(struct lazy_op *l)
{
    pthread_mutex_lock(&l->lock);
    while (!l->done)
        pthread_cond_wait(&l->cond, &l->lock);
    pthread_mutex_unlock(&l->lock);
}

static void
lazy_destroy(struct lazy_op *l)
{
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
}

static long
ms_between(const struct timespec *a, const struct timespec *b)
{
    return (long)(b->tv_sec - a->tv_sec) * 1000 +
           (b->tv_nsec - a->tv_nsec) / 1000000;
}

static void
test_lazy_ops(void **state)
{
    struct fixture *f = *state;
    struct lazy_op a, b, c, next;
    struct gate g;
    struct timespec t0;

    /* (a) a lazy op rides with the next batch: one commit for both. The
     * writer is held inside a batch meanwhile, so that no delay passes
     * however slow this machine is */
    gate_close(f->st, &g);
    lazy_submit(f->st, &a, "lazy/a");
    lazy_submit_as(f->st, &next, "next/a", false);
    gate_open(&g);
    lazy_wait(&next);
    assert_true(lazy_done(&a));
    assert_int_equal(a.w.op.status, MG_OK);
    assert_int_equal(next.w.op.status, MG_OK);
    assert_int_equal(a.w.txnid, next.w.txnid);
    assert_true(a.w.txnid > gate_op.txnid);
    assert_true(kv_exists(f->st, "lazy/a"));
    lazy_destroy(&a);
    lazy_destroy(&next);

    /* (b) alone, it starts no commit at once, but is committed after the
     * delay (100 ms) all the same */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lazy_submit(f->st, &b, "lazy/b");
    usleep(30 * 1000);
    assert_false(kv_exists(f->st, "lazy/b"));
    lazy_wait(&b);
    assert_int_equal(b.w.op.status, MG_OK);
    assert_true(ms_between(&t0, &b.at) >= 99);
    assert_true(ms_between(&t0, &b.at) < 5000);
    assert_true(b.w.txnid > a.w.txnid);
    assert_true(kv_exists(f->st, "lazy/b"));
    lazy_destroy(&b);

    /* (c) the store never closes with a lazy op left: it is committed
     * first (and before its delay) */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lazy_submit(f->st, &c, "lazy/c");
    mg_store_close(f->st);
    f->st = NULL;
    assert_true(lazy_done(&c));
    assert_int_equal(c.w.op.status, MG_OK);
    assert_true(ms_between(&t0, &c.at) < 99);
    lazy_destroy(&c);
    f->st = open_store(f->path, 64ULL << 20, false);
    assert_true(kv_exists(f->st, "lazy/c"));
}

static int
failing_fn(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    /* writes first: the failure must undo it */
    if (put_kv(st, txn, ctx, error_r) != MG_OK)
        return MG_ERROR;
    *error_r = "boom";
    return MG_ERROR;
}

static int
panic_fn(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    (void)st;
    (void)txn;
    (void)ctx;
    (void)error_r;
    return MDB_PANIC;
}

static void
test_failure_isolated(void **state)
{
    struct fixture *f = *state;
    struct wop a, b, c;
    struct gate g;
    MDB_env *env;

    gate_close(f->st, &g);
    wop_init(&a, put_kv, "iso/a", true, 10);
    wop_init(&b, failing_fn, "iso/b", true, 10);
    wop_init(&c, put_kv, "iso/c", true, 10);
    a.op.complete = b.op.complete = c.op.complete = noop_complete;
    mg_store_submit(f->st, &a.op);
    mg_store_submit(f->st, &b.op);
    gate_open(&g);
    mg_store_run(f->st, &c.op); /* completes after a and b */
    assert_int_equal(a.op.status, MG_OK);
    assert_int_equal(c.op.status, MG_OK);
    assert_int_equal(b.op.status, MG_ERROR);
    assert_false(b.op.temporary);
    assert_string_equal(b.op.error, "boom");
    assert_int_equal(a.txnid, b.txnid);
    assert_int_equal(a.txnid, c.txnid);
    assert_true(kv_exists(f->st, "iso/a"));
    assert_false(kv_exists(f->st, "iso/b"));
    assert_true(kv_exists(f->st, "iso/c"));

    /* MDB_PANIC from an op: temporary, and the environment is reopened */
    env = mg_store_env(f->st);
    assert_int_equal(run_write(f->st, panic_fn, NULL, &a), MG_ERROR);
    assert_true(a.op.temporary);
    assert_true(mg_store_env(f->st) != env);
    assert_int_equal(run_write(f->st, put_kv, "iso/d", NULL), MG_OK);
    assert_true(kv_exists(f->st, "iso/d"));
    assert_true(kv_exists(f->st, "iso/a"));
}

/* ------------------------------------------------------------- space */

static void
test_map_full_and_reserve(void **state)
{
    struct fixture *f = *state;
    struct msg_spec big = {MB1, 1, MG_MSG_WRITING, 1, 2 << 20, 32, 65536};
    struct msg_spec small = {MB1, 0, MG_MSG_WRITING, 1, 32768, 1, 32768};
    struct msg_ref ref = {MB1, 0};
    struct mg_msg_header h;
    struct wop w;
    uint64_t n = 0, id;

    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);

    /* one op larger than the map (its size understated): map full */
    wop_init(&w, put_msg, &big, true, 0);
    mg_store_run(f->st, &w.op);
    assert_int_equal(w.op.status, MG_ERROR);
    assert_true(w.op.temporary);
    assert_non_null(strstr(w.op.error, "map full"));
    assert_int_equal(get_msg(f->st, MB1, 1, &h), MG_DECLINED);
    assert_int_equal(count_chunks(f->st, MB1, 1), 0);

    /* fill with 32 KiB messages until new data is refused */
    for (id = 10;; id++) {
        small.id = id;
        wop_init(&w, put_msg, &small, true, 32768);
        mg_store_run(f->st, &w.op);
        if (w.op.status != MG_OK)
            break;
        ref.id = id;
        assert_int_equal(run_write(f->st, publish_msg, &ref, NULL), MG_OK);
        n++;
        assert_true(n < 100);
    }
    assert_true(w.op.temporary);
    assert_true(strstr(w.op.error, "reserve") != NULL ||
                strstr(w.op.error, "map full") != NULL);
    assert_true(n >= 10);
    assert_int_equal(get_msg(f->st, MB1, id, &h), MG_DECLINED); /* none half */
    assert_int_equal(count_chunks(f->st, MB1, id), 0);
    check_counters(f->st, MB1, n, n * 32768);

    /* what is not new data may use the reserve; then the store is low */
    small.chunk_len = 8192;
    for (small.id = id; !mg_store_low_space(f->st); small.id++) {
        wop_init(&w, put_msg, &small, false, 8192);
        assert_int_equal(mg_store_run(f->st, &w.op), MG_OK);
        assert_true(small.id < id + 20);
    }
    id = small.id;
    small.chunk_len = 32768;
    wop_init(&w, put_msg, &small, true, 0);
    assert_int_equal(mg_store_run(f->st, &w.op), MG_ERROR);
    assert_true(w.op.temporary);
    assert_string_equal(w.op.error, "store is within its reserve");

    /* deletions still commit (the archiver drains the mailbox) */
    for (uint64_t i = 10; i < id; i++) {
        ref.id = i;
        assert_int_equal(run_write(f->st, delete_msg, &ref, &w), MG_OK);
    }
    check_counters(f->st, MB1, 0, 0);
    assert_false(mg_store_low_space(f->st));

    /* new mail fits again in the freed pages (most of it: free pages are
     * reused two transactions later and overflow pages need runs) */
    for (id = 1000;; id++) {
        small.id = id;
        wop_init(&w, put_msg, &small, true, 32768);
        mg_store_run(f->st, &w.op);
        if (w.op.status != MG_OK)
            break;
        assert_true(id < 1000 + 2 * n);
    }
    assert_true(id - 1000 >= n / 2);
    assert_true(w.op.temporary);
    assert_int_equal(get_msg(f->st, MB1, id, &h), MG_DECLINED);
    /* and once full again, deletions still commit */
    ref.id = 1000;
    assert_int_equal(run_write(f->st, delete_msg, &ref, &w), MG_OK);
    assert_int_equal(get_msg(f->st, MB1, 1000, &h), MG_DECLINED);
}

/* ----------------------------------------------------------- records */

static void
test_mailboxes(void **state)
{
    struct fixture *f = *state;
    struct mg_mailbox m, *v;
    const char *error;
    MDB_txn *txn;
    size_t n;

    assert_int_equal(run_write(f->st, put_mailbox, "zzzzzzzz01", NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_mailbox, MB2, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_mailbox, "BAD", NULL), MG_ERROR);

    assert_int_equal(get_mailbox(f->st, MB2, &m), MG_OK);
    assert_string_equal(m.id, MB2);
    assert_true(m.active);
    assert_int_equal(m.created, 1700000000);
    mg_mailbox_clear(&m);
    assert_int_equal(get_mailbox(f->st, "nosuchmailbox", &m), MG_DECLINED);

    assert_int_equal(mg_store_read_begin(f->st, &txn, &error), MG_OK);
    assert_int_equal(mg_rec_mailbox_list(f->st, txn, &v, &n, &error), MG_OK);
    mg_store_read_end(f->st, txn);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].id, MB1);
    assert_string_equal(v[1].id, MB2);
    assert_string_equal(v[2].id, "zzzzzzzz01");
    for (size_t i = 0; i < n; i++)
        mg_mailbox_clear(&v[i]);
    free(v);
}

static int
del_mailbox(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    int ret = mg_rec_mailbox_del(st, txn, ctx, error_r);

    return ret == MG_DECLINED ? MG_ERROR : ret;
}

static void
test_mailbox_delete(void **state)
{
    struct fixture *f = *state;
    struct mg_mailbox m;

    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, del_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(get_mailbox(f->st, MB1, &m), MG_DECLINED);
    assert_int_equal(run_write(f->st, del_mailbox, MB1, NULL), MG_ERROR);
}

struct ids_ctx {
    uint64_t n, first;
};

static int
take_ids(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    struct ids_ctx *c = ctx;

    return mg_rec_msg_ids(st, txn, c->n, &c->first, error_r);
}

static void
test_msg_ids(void **state)
{
    struct fixture *f = *state;
    struct ids_ctx a = {5, 0}, b = {3, 0}, c = {1, 0};

    assert_int_equal(run_write(f->st, take_ids, &a, NULL), MG_OK);
    assert_int_equal(a.first, 1);
    assert_int_equal(run_write(f->st, take_ids, &b, NULL), MG_OK);
    assert_int_equal(b.first, 6);
    reopen(f);
    assert_int_equal(run_write(f->st, take_ids, &c, NULL), MG_OK);
    assert_int_equal(c.first, 9);
}

static void
test_msg_counters(void **state)
{
    struct fixture *f = *state;
    struct msg_spec m1 = {MB1, 1, MG_MSG_WRITING, 100, 100, 2, 10};
    struct msg_spec m2 = {MB1, 2, MG_MSG_HELD, 200, 50, 1, 10};
    struct msg_spec m3 = {MB1, 3, MG_MSG_WRITING, 300, 7, 1, 10};
    struct msg_ref r1 = {MB1, 1}, r2 = {MB1, 2}, r3 = {MB1, 3}, r9 = {MB1, 9};
    struct mg_msg_header h;

    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &m1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &m2, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &m3, NULL), MG_OK);
    check_counters(f->st, MB1, 0, 0);

    assert_int_equal(run_write(f->st, publish_msg, &r1, NULL), MG_OK);
    check_counters(f->st, MB1, 1, 100);
    assert_int_equal(run_write(f->st, publish_msg, &r1, NULL), MG_OK);
    check_counters(f->st, MB1, 1, 100); /* counted once */
    assert_int_equal(run_write(f->st, publish_msg, &r2, NULL), MG_OK);
    check_counters(f->st, MB1, 2, 150);
    assert_int_equal(get_msg(f->st, MB1, 2, &h), MG_OK);
    assert_int_equal(h.state, MG_MSG_VISIBLE);
    assert_int_equal(h.flags, 0);

    assert_int_equal(run_write(f->st, delete_msg, &r3, NULL), MG_OK);
    check_counters(f->st, MB1, 2, 150); /* not visible: not counted */
    assert_int_equal(run_write(f->st, delete_msg, &r1, NULL), MG_OK);
    check_counters(f->st, MB1, 1, 50);
    assert_int_equal(count_chunks(f->st, MB1, 1), 0);
    assert_int_equal(get_msg(f->st, MB1, 1, &h), MG_DECLINED);
    /* deleting what is not there is declined (the op sees MG_DECLINED) */
    assert_int_equal(run_write(f->st, delete_msg, &r9, NULL), MG_ERROR);
    /* publishing into a mailbox that does not exist fails */
    r9.mailbox = MB2;
    m3.mailbox = MB2;
    assert_int_equal(run_write(f->st, put_msg, &m3, NULL), MG_OK);
    r9.id = 3;
    assert_int_equal(run_write(f->st, publish_msg, &r9, NULL), MG_ERROR);
}

static void
test_msg_list_oldest(void **state)
{
    struct fixture *f = *state;
    /* a mailbox whose id is a prefix of the other's must not mix in */
    const char *short_id = "mailbox0";
    const char *long_id = "mailbox00";
    struct msg_spec s[] = {
        {long_id, 10, MG_MSG_VISIBLE, 100, 10, 0, 0},
        {long_id, 3, MG_MSG_HELD, 50, 30, 0, 0},
        {long_id, 5, MG_MSG_VISIBLE, 500, 50, 0, 0},
        {long_id, 7, MG_MSG_WRITING, 70, 70, 0, 0},
        {short_id, 4, MG_MSG_VISIBLE, 1, 1, 0, 0},
        {"mailbox01", 1, MG_MSG_VISIBLE, 2, 2, 0, 0},
    };
    struct mg_msg_ref *v;
    const char *error;
    uint64_t received;
    MDB_txn *txn;
    size_t n;

    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        assert_int_equal(run_write(f->st, put_msg, &s[i], NULL), MG_OK);

    assert_int_equal(mg_store_read_begin(f->st, &txn, &error), MG_OK);
    assert_int_equal(
        mg_rec_msg_list(f->st, txn, long_id, false, &v, &n, &error), MG_OK);
    assert_int_equal(n, 4);
    assert_int_equal(v[0].id, 3);
    assert_int_equal(v[0].state, MG_MSG_HELD);
    assert_int_equal(v[1].id, 5);
    assert_int_equal(v[1].size, 50);
    assert_int_equal(v[1].received, 500);
    assert_int_equal(v[2].id, 7);
    assert_int_equal(v[3].id, 10);
    free(v);
    assert_int_equal(mg_rec_msg_list(f->st, txn, long_id, true, &v, &n, &error),
                     MG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(v[0].id, 5);
    assert_int_equal(v[1].id, 10);
    free(v);
    assert_int_equal(
        mg_rec_msg_list(f->st, txn, short_id, false, &v, &n, &error), MG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(v[0].id, 4);
    free(v);
    assert_int_equal(
        mg_rec_msg_list(f->st, txn, "mailbox99", false, &v, &n, &error), MG_OK);
    assert_int_equal(n, 0);
    free(v);

    /* oldest = the first visible one in id order */
    assert_int_equal(mg_rec_msg_oldest(f->st, txn, long_id, &received, &error),
                     MG_OK);
    assert_int_equal(received, 500);
    assert_int_equal(
        mg_rec_msg_oldest(f->st, txn, "mailbox99", &received, &error),
        MG_DECLINED);
    mg_store_read_end(f->st, txn);
}

static void
test_chunks(void **state)
{
    struct fixture *f = *state;
    struct msg_spec a = {MB1, 7, MG_MSG_WRITING, 1, 100, 5, 20};
    struct msg_spec b = {MB1, 8, MG_MSG_WRITING, 1, 100, 3, 20};
    struct msg_ref ra = {MB1, 7};
    const char *error;
    const void *data;
    size_t len;
    MDB_txn *txn;

    assert_int_equal(run_write(f->st, put_msg, &a, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &b, NULL), MG_OK);
    assert_int_equal(count_chunks(f->st, MB1, 7), 5);
    assert_int_equal(count_chunks(f->st, MB1, 8), 3);
    assert_int_equal(mg_store_read_begin(f->st, &txn, &error), MG_OK);
    assert_int_equal(
        mg_rec_chunk_get(f->st, txn, MB1, 7, 2, &data, &len, &error), MG_OK);
    assert_int_equal(len, 20);
    assert_memory_equal(data, "cccccccccccccccccccc", 20);
    assert_int_equal(
        mg_rec_chunk_get(f->st, txn, MB1, 7, 5, &data, &len, &error),
        MG_DECLINED);
    mg_store_read_end(f->st, txn);

    assert_int_equal(run_write(f->st, delete_msg, &ra, NULL), MG_OK);
    assert_int_equal(count_chunks(f->st, MB1, 7), 0);
    assert_int_equal(count_chunks(f->st, MB1, 8), 3); /* the neighbour stays */
}

static void
test_recovery(void **state)
{
    struct fixture *f = *state;
    struct msg_spec w = {MB1, 1, MG_MSG_WRITING, 1, 100, 3, 10};
    struct msg_spec h = {MB1, 2, MG_MSG_HELD, 2, 40, 2, 10};
    struct msg_spec v = {MB1, 3, MG_MSG_VISIBLE, 3, 0, 1, 10};
    struct msg_spec orphan = {MB2, 1, MG_MSG_HELD, 2, 40, 2, 10};
    struct mg_msg_header hd;

    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &w, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &h, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &v, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &orphan, NULL), MG_OK);

    /* a second process (mailgatectl) never cleans up the daemon's
     * messages in flight */
    struct mg_store *other = open_store_as(f->path, 64ULL << 20, false, false);

    assert_int_equal(get_msg(other, MB1, 1, &hd), MG_OK);
    assert_int_equal(hd.state, MG_MSG_WRITING);
    assert_int_equal(get_msg(other, MB1, 2, &hd), MG_OK);
    assert_int_equal(hd.state, MG_MSG_HELD);
    mg_store_close(other);

    reopen(f);

    assert_int_equal(get_msg(f->st, MB1, 1, &hd), MG_DECLINED);
    assert_int_equal(count_chunks(f->st, MB1, 1), 0);
    assert_int_equal(get_msg(f->st, MB1, 2, &hd), MG_OK);
    assert_int_equal(hd.state, MG_MSG_VISIBLE);
    assert_int_equal(hd.flags & MG_MSG_F_UNCONFIRMED, MG_MSG_F_UNCONFIRMED);
    assert_int_equal(count_chunks(f->st, MB1, 2), 2);
    assert_int_equal(get_msg(f->st, MB1, 3, &hd), MG_OK);
    assert_int_equal(hd.flags, 0);
    check_counters(f->st, MB1, 1, 40);
    /* held in a mailbox that is gone: nothing can read it, removed */
    assert_int_equal(get_msg(f->st, MB2, 1, &hd), MG_DECLINED);
    assert_int_equal(count_chunks(f->st, MB2, 1), 0);
}

struct dedup_ctx {
    const char *mb, *up, *user, *uidl;
    uint64_t id;
};

static int
put_dedup(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    struct dedup_ctx *d = ctx;

    return mg_rec_dedup_put(st, txn, d->mb, d->up, d->user, d->uidl, d->id,
                            error_r);
}

static void
test_dedup_kv(void **state)
{
    struct fixture *f = *state;
    struct dedup_ctx d = {MB1, "pop.example.org", "ab", "c-uidl", 42};
    struct mg_buf b;
    const char *error;
    uint64_t id = 0;
    MDB_txn *txn;

    assert_int_equal(run_write(f->st, put_dedup, &d, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_kv, "setting/x", NULL), MG_OK);
    assert_int_equal(mg_store_read_begin(f->st, &txn, &error), MG_OK);
    assert_int_equal(mg_rec_dedup_get(f->st, txn, MB1, "pop.example.org", "ab",
                                      "c-uidl", &id, &error),
                     MG_OK);
    assert_int_equal(id, 42);
    /* fields are length-prefixed: moving a byte across makes another key */
    assert_int_equal(mg_rec_dedup_get(f->st, txn, MB1, "pop.example.org", "a",
                                      "bc-uidl", &id, &error),
                     MG_DECLINED);
    assert_int_equal(mg_rec_dedup_get(f->st, txn, MB2, "pop.example.org", "ab",
                                      "c-uidl", &id, &error),
                     MG_DECLINED);
    mg_buf_init(&b);
    assert_int_equal(mg_rec_kv_get(f->st, txn, "setting/x", &b, &error), MG_OK);
    assert_int_equal(mg_buf_len(&b), 9);
    assert_memory_equal(mg_buf_data(&b), "setting/x", 9);
    mg_buf_free(&b);
    mg_store_read_end(f->st, txn);
}

static int
del_kv(struct mg_store *st, MDB_txn *txn, void *ctx, const char **error_r)
{
    int ret = mg_rec_kv_del(st, txn, ctx, error_r);

    return ret == MG_DECLINED ? MG_ERROR : ret;
}

static void
test_kv_delete(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(run_write(f->st, put_kv, "account/admin", NULL), MG_OK);
    assert_true(kv_exists(f->st, "account/admin"));
    assert_int_equal(run_write(f->st, del_kv, "account/admin", NULL), MG_OK);
    assert_false(kv_exists(f->st, "account/admin"));
    assert_int_equal(run_write(f->st, del_kv, "account/admin", NULL), MG_ERROR);
}

/* ------------------------------------------------------ backup, epoch */

static void
test_backup_epoch(void **state)
{
    struct fixture *f = *state;
    struct msg_spec m = {MB1, 5, MG_MSG_VISIBLE, 9, 10, 2, 100};
    char backup[128], epoch[17];
    struct mg_store *copy;
    struct mg_msg_header h;
    const char *error;
    FILE *fp;

    assert_int_equal(run_write(f->st, put_mailbox, MB1, NULL), MG_OK);
    assert_int_equal(run_write(f->st, put_msg, &m, NULL), MG_OK);
    snprintf(backup, sizeof(backup), "%s/backup", f->dir);
    assert_int_equal(mg_store_backup(f->st, backup, &error), MG_OK);
    /* a second backup into the same directory is refused */
    assert_int_equal(mg_store_backup(f->st, backup, &error), MG_ERROR);
    assert_non_null(strstr(error, "not empty"));

    /* the copy opens as a store with the same data (one env per store:
     * close ours first, as a restore would) */
    snprintf(epoch, sizeof(epoch), "%s", mg_store_epoch(f->st));
    mg_store_close(f->st);
    copy = open_store(backup, 0, true);
    assert_string_equal(mg_store_epoch(copy), epoch);
    assert_int_equal(get_msg(copy, MB1, 5, &h), MG_OK);
    assert_int_equal(h.size, 10);
    assert_int_equal(count_chunks(copy, MB1, 5), 2);
    check_counters(copy, MB1, 0, 0);
    mg_store_close(copy);

    /* a restore sets a new epoch, which is kept */
    copy = open_store(backup, 0, false);
    assert_int_equal(mg_store_new_epoch(copy, &error), MG_OK);
    assert_string_not_equal(mg_store_epoch(copy), epoch);
    snprintf(epoch, sizeof(epoch), "%s", mg_store_epoch(copy));
    mg_store_close(copy);
    copy = open_store(backup, 0, false);
    assert_string_equal(mg_store_epoch(copy), epoch);
    mg_store_close(copy);

    f->st = open_store(f->path, 64ULL << 20, false);
    snprintf(backup, sizeof(backup), "%s/notempty", f->dir);
    mkdir(backup, 0700);
    snprintf(backup + strlen(backup), sizeof(backup) - strlen(backup), "/x");
    fp = fopen(backup, "w");
    assert_non_null(fp);
    fclose(fp);
    *strrchr(backup, '/') = '\0';
    assert_int_equal(mg_store_backup(f->st, backup, &error), MG_ERROR);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_format_epoch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_full_and_reserve, setup_tiny,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_mailboxes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mailbox_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_list_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_kv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kv_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backup_epoch, setup, teardown),
    };

    if (getenv("MG_TEST_VERBOSE") == NULL)
        mg_log_setup("test_store", MG_LOG_ERROR, MG_LOGT_STDERR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
