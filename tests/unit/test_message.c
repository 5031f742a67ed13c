/* tests/unit/test_message.c -- store/message.c: the streaming writer and
 * reader over the real store and vault */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <sodium.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "store.h"

#define CHUNK MG_VAULT_CHUNK
#define NMBOX 3

#if defined(__SANITIZE_ADDRESS__)
/* freed chunk buffers sit in ASan's quarantine (256 MB by default), which
 * would hide whether the writer's memory stays flat */
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
    return "quarantine_size_mb=16";
}
#endif
#define BIG_SIZE (150u * 1024 * 1024)

static char tmpdir[64];
static char storedir[96];
static struct mg_store *st;
static char mbox[NMBOX][MG_MAILBOX_ID_MAX + 1];
static struct mg_vault_key *keys[NMBOX];

/* ------------------------------------------------------------ helpers */

struct sync {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int status;
    bool temporary;
    char error[200];
    int drained;
};

static void
sync_init(struct sync *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
}

static void
sync_destroy(struct sync *s)
{
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
}

static void
sync_done(struct mg_store_writer *w, int status, bool temporary,
          const char *error, void *arg)
{
    struct sync *s = arg;

    (void)w;
    pthread_mutex_lock(&s->lock);
    s->done = true;
    s->status = status;
    s->temporary = temporary;
    snprintf(s->error, sizeof(s->error), "%s", error ? error : "");
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void
sync_drained(void *arg)
{
    struct sync *s = arg;

    pthread_mutex_lock(&s->lock);
    s->drained++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static int
sync_wait(struct sync *s)
{
    pthread_mutex_lock(&s->lock);
    while (!s->done)
        pthread_cond_wait(&s->cond, &s->lock);
    s->done = false;
    pthread_mutex_unlock(&s->lock);
    return s->status;
}

/* Wait until drained ran more than `seen` times. */
static void
sync_wait_drained(struct sync *s, int seen)
{
    pthread_mutex_lock(&s->lock);
    while (s->drained <= seen)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

/* A deterministic body byte at offset i. */
static uint8_t
body_byte(uint64_t i, unsigned seed)
{
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull + seed * 0x100000001b3ull;

    x ^= x >> 29;
    return (uint8_t)(x ^ (x >> 17));
}

static void
body_fill(uint8_t *p, uint64_t off, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = body_byte(off + i, seed);
}

struct run_op {
    struct mg_store_op op;
    int (*fn)(MDB_txn *txn, void *arg);
    void *arg;
};

static int
run_apply(struct mg_store *s, MDB_txn *txn, struct mg_store_op *op)
{
    struct run_op *r = (struct run_op *)op;

    (void)s;
    return r->fn(txn, r->arg);
}

/* Run fn in a write transaction of the store's writer. */
static int
run_write(int (*fn)(MDB_txn *txn, void *arg), void *arg)
{
    struct run_op r;

    memset(&r, 0, sizeof(r));
    r.op.apply = run_apply;
    r.fn = fn;
    r.arg = arg;
    return mg_store_run(st, &r.op);
}

static int
noop_fn(MDB_txn *txn, void *arg)
{
    (void)txn;
    (void)arg;
    return MG_OK;
}

static int
mailbox_put_fn(MDB_txn *txn, void *arg)
{
    const char *error = NULL;

    return mg_rec_mailbox_put(st, txn, arg, &error);
}

static void
mailbox_create(char id[MG_MAILBOX_ID_MAX + 1], struct mg_vault_key **key_r)
{
    struct mg_mailbox m;
    const char *password = "test-password-aaaa-bbbb-cccc";
    const char *error = NULL;
    uint64_t ops, mem;

    memset(&m, 0, sizeof(m));
    mg_mailbox_id_new(m.id);
    m.name = mg_xstrdup("test");
    m.description = mg_xstrdup("");
    m.active = true;
    m.created = (uint64_t)time(NULL);
    m.accept_journal = true;
    m.accept_proxy = true;
    mg_vault_default_limits(&ops, &mem);
    assert_int_equal(
        mg_vault_keys_new(password, ops, mem, m.pk, &m.wraps[0], &error),
        MG_OK);
    m.nwraps = 1;
    assert_int_equal(run_write(mailbox_put_fn, &m), MG_OK);
    assert_int_equal(
        mg_vault_unlock(&m.wraps[0], m.pk, password, key_r, &error), MG_OK);
    memcpy(id, m.id, sizeof(m.id));
    mg_mailbox_clear(&m);
}

/* the scheme the store writes: 0 (auto) in the first group of tests,
 * scheme 2 in the second */
static uint8_t store_alg;

static void
store_open(void)
{
    struct mg_store_config cfg = {
        .dir = storedir,
        .map_size = 2ull << 30,
        .reserve = 1 << 20,
        .recover = true, /* plays the daemon: it owns the store */
        .alg = store_alg,
    };
    const char *error = NULL;

    if (mg_store_open(&cfg, &st, &error) != MG_OK)
        fail_msg("store open: %s", error);
}

static struct mg_envelope test_env = {
    .source = "test",
    .sender = "alice@example.org",
    .rcpts = (char *[]){"bob@example.net", "carol@example.com"},
    .nrcpts = 2,
    .client = "192.0.2.7",
    .tls = NULL,
};

/* Write one message of `size` bytes (seeded) to n mailboxes, in pieces of
 * `piece` bytes; waits for back-pressure and the commit. */
static struct mg_store_writer *
write_msg(size_t n, uint64_t size, unsigned seed, size_t piece, bool publish)
{
    const char *ids[NMBOX];
    const char *error = NULL;
    struct mg_store_writer *w;
    uint8_t *buf = malloc(piece);
    struct sync s;
    uint64_t off = 0;
    int rc;

    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        ids[i] = mbox[i];
    sync_init(&s);
    w = mg_store_writer_begin(st, ids, n, &test_env, &error);
    if (w == NULL)
        fail_msg("writer_begin: %s", error);
    mg_store_writer_on_drained(w, sync_drained, &s);
    while (off < size) {
        size_t len = size - off < piece ? (size_t)(size - off) : piece;
        int seen;

        body_fill(buf, off, len, seed);
        pthread_mutex_lock(&s.lock);
        seen = s.drained;
        pthread_mutex_unlock(&s.lock);
        rc = mg_store_writer_write(w, buf, len);
        if (rc == MG_AGAIN) {
            sync_wait_drained(&s, seen);
            continue;
        }
        assert_int_equal(rc, MG_OK);
        off += len;
    }
    mg_store_writer_commit(w, publish, sync_done, &s);
    rc = sync_wait(&s);
    if (rc != MG_OK)
        fail_msg("commit: %s", s.error);
    sync_destroy(&s);
    free(buf);
    return w;
}

/* Read a message and compare it with its seeded content. Returns the
 * reader's final status (MG_DECLINED = read to the end); *good_r = body
 * bytes returned, each checked against the original. */
static int
read_msg(size_t mb, const struct mg_vault_key *key, uint64_t id, uint64_t size,
         unsigned seed, uint64_t *good_r)
{
    struct mg_store_reader *r;
    const char *error = NULL;
    const void *data;
    uint8_t *expect = malloc(CHUNK);
    uint64_t off = 0;
    size_t len;
    int rc;

    assert_non_null(expect);
    *good_r = 0;
    rc = mg_store_reader_open(st, key, mbox[mb], id, &r, &error);
    if (rc != MG_OK) {
        free(expect);
        return rc;
    }
    const struct mg_envelope *env = mg_store_reader_envelope(r);
    assert_string_equal(env->source, "test");
    assert_string_equal(env->sender, "alice@example.org");
    assert_int_equal(env->nrcpts, 2);
    assert_string_equal(env->rcpts[0], "bob@example.net");
    assert_string_equal(env->rcpts[1], "carol@example.com");
    assert_string_equal(env->client, "192.0.2.7");
    assert_null(env->tls);
    assert_int_equal(mg_store_reader_size(r), size);
    while ((rc = mg_store_reader_next(r, &data, &len, &error)) == MG_OK) {
        assert_true(len <= CHUNK);
        assert_true(off + len <= size);
        body_fill(expect, off, len, seed);
        /* whatever comes out must be the original, never tampered bytes */
        assert_memory_equal(data, expect, len);
        off += len;
    }
    if (rc == MG_DECLINED)
        assert_int_equal(off, size);
    /* the reader stays failed / at its end */
    assert_int_equal(mg_store_reader_next(r, &data, &len, &error), rc);
    mg_store_reader_close(r);
    free(expect);
    *good_r = off;
    return rc;
}

static int
msg_state(size_t mb, uint64_t id)
{
    struct mg_msg_header h;
    const char *error = NULL;
    MDB_txn *txn;
    int rc;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    rc = mg_rec_msg_get(st, txn, mbox[mb], id, &h, &error);
    mg_store_read_end(st, txn);
    return rc == MG_OK ? h.state : 0;
}

static bool
listed(size_t mb, uint64_t id, bool visible_only)
{
    struct mg_msg_ref *v = NULL;
    const char *error = NULL;
    MDB_txn *txn;
    size_t n = 0;
    bool found = false;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    assert_int_equal(
        mg_rec_msg_list(st, txn, mbox[mb], visible_only, &v, &n, &error),
        MG_OK);
    mg_store_read_end(st, txn);
    for (size_t i = 0; i < n; i++)
        found |= v[i].id == id;
    free(v);
    return found;
}

static bool
chunk_exists(size_t mb, uint64_t id, uint32_t k)
{
    const char *error = NULL;
    const void *data;
    MDB_txn *txn;
    size_t len;
    int rc;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    rc = mg_rec_chunk_get(st, txn, mbox[mb], id, k, &data, &len, &error);
    mg_store_read_end(st, txn);
    return rc == MG_OK;
}

/* ------------------------------------------------------------ set-up */

static int
group_setup(void **state)
{
    const char *error = NULL;

    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/mg-test-message.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    snprintf(storedir, sizeof(storedir), "%s/store", tmpdir);
    if (mg_vault_init(2, &error) != MG_OK)
        return -1;
    store_open();
    for (size_t i = 0; i < NMBOX; i++)
        mailbox_create(mbox[i], &keys[i]);
    return 0;
}

static int
group_setup_v2(void **state)
{
    store_alg = MG_VAULT_ALG_V2;
    return group_setup(state);
}

static int
group_teardown(void **state)
{
    char cmd[128];

    (void)state;
    for (size_t i = 0; i < NMBOX; i++)
        mg_vault_key_free(keys[i]);
    mg_store_close(st);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ tests */

static const uint64_t sizes[] = {
    0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3,
};

static void
test_uidl(void **state)
{
    char a[40], b[40];

    (void)state;
    mg_msg_uidl(st, 1, a);
    mg_msg_uidl(st, 18446744073709551615ull, b);
    assert_true(strlen(b) >= 1 && strlen(b) <= 70);
    assert_string_not_equal(a, b);
    for (const char *p = b; *p != '\0'; p++)
        assert_true(*p > 0x20 && *p < 0x7f);
    assert_non_null(strstr(a, mg_store_epoch(st)));
}

static void
round_trip(size_t n)
{
    uint64_t good;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        /* odd piece sizes cross the chunk borders everywhere */
        struct mg_store_writer *w =
            write_msg(n, sizes[i], (unsigned)i, 7777, true);
        const uint64_t *ids = mg_store_writer_ids(w);

        for (size_t c = 0; c < n; c++) {
            assert_int_equal(msg_state(c, ids[c]), MG_MSG_VISIBLE);
            assert_true(listed(c, ids[c], true));
            assert_int_equal(
                read_msg(c, keys[c], ids[c], sizes[i], (unsigned)i, &good),
                MG_DECLINED);
            if (c > 0)
                assert_true(ids[c] != ids[c - 1]);
        }
        mg_store_writer_free(w);
    }
}

static void
test_round_trip_one(void **state)
{
    (void)state;
    round_trip(1);
}

static void
test_round_trip_three(void **state)
{
    (void)state;
    round_trip(3);
}

static void
test_wrong_key(void **state)
{
    struct mg_store_writer *w = write_msg(1, 1000, 9, 1000, true);
    uint64_t id = mg_store_writer_ids(w)[0], good;

    (void)state;
    assert_int_equal(read_msg(0, keys[1], id, 1000, 9, &good), MG_ERROR);
    assert_int_equal(good, 0);
    /* and a message that does not exist */
    assert_int_equal(read_msg(0, keys[0], id + 1000000, 0, 0, &good),
                     MG_DECLINED);
    mg_store_writer_free(w);
}

static void
test_begin_errors(void **state)
{
    const char *ids[] = {"nosuchmailbox0000"};
    const char *error = NULL;

    (void)state;
    assert_null(mg_store_writer_begin(st, ids, 1, &test_env, &error));
    assert_non_null(error);
    ids[0] = "bad id!";
    assert_null(mg_store_writer_begin(st, ids, 1, &test_env, &error));
}

/* ---------------------------------------------------------- tampering */

struct tamper {
    size_t mb;
    uint64_t id;
    uint32_t k, k2;
    size_t to_mb;
    uint64_t to_id;
};

static void
chunk_key(uint8_t key[MG_CHUNK_KEY], const char *mb, uint64_t id, uint32_t k)
{
    mg_rec_msg_key(key, mb, id);
    key[MG_MSG_KEY] = (uint8_t)(k >> 24);
    key[MG_MSG_KEY + 1] = (uint8_t)(k >> 16);
    key[MG_MSG_KEY + 2] = (uint8_t)(k >> 8);
    key[MG_MSG_KEY + 3] = (uint8_t)k;
}

static int
flip_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    const char *error = NULL;
    const void *data;
    uint8_t *copy;
    size_t len;
    int rc;

    rc = mg_rec_chunk_get(st, txn, mbox[t->mb], t->id, t->k, &data, &len,
                          &error);
    assert_int_equal(rc, MG_OK);
    copy = malloc(len);
    memcpy(copy, data, len);
    copy[len / 2] ^= 0x01;
    rc = mg_rec_chunk_put(st, txn, mbox[t->mb], t->id, t->k, copy, len, &error);
    free(copy);
    return rc;
}

static int
del_chunk_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    uint8_t key[MG_CHUNK_KEY];
    MDB_val k = {.mv_size = sizeof(key), .mv_data = key};

    chunk_key(key, mbox[t->mb], t->id, t->k);
    return mdb_del(txn, mg_store_dbs(st)->chunk, &k, NULL);
}

/* Also lower the header's chunk count: a clean-looking truncation. */
static int
shorten_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    struct mg_msg_header h;
    const char *error = NULL;
    int rc = del_chunk_fn(txn, arg);

    assert_int_equal(rc, 0);
    assert_int_equal(mg_rec_msg_get(st, txn, mbox[t->mb], t->id, &h, &error),
                     MG_OK);
    h.nchunks--;
    h.size = (uint64_t)(h.nchunks - 1) * CHUNK; /* consistent size too */
    return mg_rec_msg_put(st, txn, mbox[t->mb], t->id, &h, &error);
}

static int
size_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    struct mg_msg_header h;
    const char *error = NULL;

    assert_int_equal(mg_rec_msg_get(st, txn, mbox[t->mb], t->id, &h, &error),
                     MG_OK);
    h.size -= 1;
    return mg_rec_msg_put(st, txn, mbox[t->mb], t->id, &h, &error);
}

static int
swap_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    const char *error = NULL;
    const void *d1, *d2;
    uint8_t *c1, *c2;
    size_t l1, l2;
    int rc;

    assert_int_equal(
        mg_rec_chunk_get(st, txn, mbox[t->mb], t->id, t->k, &d1, &l1, &error),
        MG_OK);
    c1 = malloc(l1);
    memcpy(c1, d1, l1);
    assert_int_equal(
        mg_rec_chunk_get(st, txn, mbox[t->mb], t->id, t->k2, &d2, &l2, &error),
        MG_OK);
    c2 = malloc(l2);
    memcpy(c2, d2, l2);
    rc = mg_rec_chunk_put(st, txn, mbox[t->mb], t->id, t->k, c2, l2, &error);
    if (rc == MG_OK)
        rc = mg_rec_chunk_put(st, txn, mbox[t->mb], t->id, t->k2, c1, l1,
                              &error);
    free(c1);
    free(c2);
    return rc;
}

/* Copy the header and every chunk under (to_mb, to_id), VISIBLE. */
static int
copy_fn(MDB_txn *txn, void *arg)
{
    struct tamper *t = arg;
    struct mg_msg_header h;
    const char *error = NULL;
    const void *d;
    size_t len;
    int rc;

    assert_int_equal(mg_rec_msg_get(st, txn, mbox[t->mb], t->id, &h, &error),
                     MG_OK);
    for (uint32_t k = 0; k < h.nchunks; k++) {
        assert_int_equal(
            mg_rec_chunk_get(st, txn, mbox[t->mb], t->id, k, &d, &len, &error),
            MG_OK);
        uint8_t *c = malloc(len);
        memcpy(c, d, len);
        rc = mg_rec_chunk_put(st, txn, mbox[t->to_mb], t->to_id, k, c, len,
                              &error);
        free(c);
        assert_int_equal(rc, MG_OK);
    }
    return mg_rec_msg_put(st, txn, mbox[t->to_mb], t->to_id, &h, &error);
}

#define TSIZE (3 * CHUNK + 5) /* chunks: 0 envelope, 1..4 body */

static uint64_t
tamper_msg(unsigned seed)
{
    struct mg_store_writer *w = write_msg(1, TSIZE, seed, CHUNK, true);
    uint64_t id = mg_store_writer_ids(w)[0], good;

    mg_store_writer_free(w);
    assert_int_equal(read_msg(0, keys[0], id, TSIZE, seed, &good), MG_DECLINED);
    return id;
}

static void
test_tamper_flip(void **state)
{
    struct tamper t = {.mb = 0};
    uint64_t good;

    (void)state;
    t.id = tamper_msg(21);
    t.k = 2;
    assert_int_equal(run_write(flip_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 21, &good), MG_ERROR);
    assert_int_equal(good, CHUNK); /* chunk 1 only, chunk 2 refused */

    t.id = tamper_msg(22);
    t.k = 0; /* the envelope */
    assert_int_equal(run_write(flip_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 22, &good), MG_ERROR);
    assert_int_equal(good, 0);

    t.id = tamper_msg(23);
    t.k = 4; /* the final chunk */
    assert_int_equal(run_write(flip_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 23, &good), MG_ERROR);
    assert_int_equal(good, 3 * CHUNK);
}

static void
test_tamper_truncate(void **state)
{
    struct tamper t = {.mb = 0};
    uint64_t good;

    (void)state;
    t.id = tamper_msg(31);
    t.k = 4;
    assert_int_equal(run_write(del_chunk_fn, &t), 0);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 31, &good), MG_ERROR);
    assert_int_equal(good, 3 * CHUNK);

    t.id = tamper_msg(32);
    t.k = 4;
    assert_int_equal(run_write(shorten_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, 3 * CHUNK, 32, &good),
                     MG_ERROR);
    assert_true(good < 3 * CHUNK); /* the last chunk is not FINAL */

    t.id = tamper_msg(33);
    t.k = 2; /* a hole in the middle */
    assert_int_equal(run_write(del_chunk_fn, &t), 0);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 33, &good), MG_ERROR);
    assert_int_equal(good, CHUNK);

    t.id = tamper_msg(34);
    assert_int_equal(run_write(size_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE - 1, 34, &good),
                     MG_ERROR);
    assert_int_equal(good, 3 * CHUNK);
}

static void
test_tamper_swap(void **state)
{
    struct tamper t = {.mb = 0};
    uint64_t good;

    (void)state;
    t.id = tamper_msg(41);
    t.k = 1;
    t.k2 = 2;
    assert_int_equal(run_write(swap_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 41, &good), MG_ERROR);
    assert_int_equal(good, 0);

    t.id = tamper_msg(42);
    t.k = 3;
    t.k2 = 4; /* the final chunk moved forward */
    assert_int_equal(run_write(swap_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 42, &good), MG_ERROR);
    assert_int_equal(good, 2 * CHUNK);
}

static void
test_tamper_move(void **state)
{
    struct tamper t = {.mb = 0};
    uint64_t good;

    (void)state;
    /* another id in the same mailbox */
    t.id = tamper_msg(51);
    t.to_mb = 0;
    t.to_id = t.id + 500000;
    assert_int_equal(run_write(copy_fn, &t), MG_OK);
    assert_int_equal(read_msg(0, keys[0], t.to_id, TSIZE, 51, &good), MG_ERROR);
    assert_int_equal(good, 0);
    /* the original still reads */
    assert_int_equal(read_msg(0, keys[0], t.id, TSIZE, 51, &good), MG_DECLINED);

    /* the same id in another mailbox, read with either key */
    t.to_mb = 1;
    t.to_id = t.id;
    assert_int_equal(run_write(copy_fn, &t), MG_OK);
    assert_int_equal(read_msg(1, keys[1], t.id, TSIZE, 51, &good), MG_ERROR);
    assert_int_equal(read_msg(1, keys[0], t.id, TSIZE, 51, &good), MG_ERROR);
    assert_int_equal(good, 0);
}

/* ------------------------------------------------ encryption schemes */

static struct mg_msg_header
header_of(size_t mb, uint64_t id)
{
    struct mg_msg_header h;
    const char *error = NULL;
    MDB_txn *txn;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    assert_int_equal(mg_rec_msg_get(st, txn, mbox[mb], id, &h, &error), MG_OK);
    mg_store_read_end(st, txn);
    return h;
}

struct header_edit {
    size_t mb;
    uint64_t id;
    struct mg_msg_header h;
};

static int
header_put_fn(MDB_txn *txn, void *arg)
{
    struct header_edit *e = arg;
    const char *error = NULL;

    return mg_rec_msg_put(st, txn, mbox[e->mb], e->id, &e->h, &error);
}

/*
 * New messages are scheme 3 (where the CPU has AES instructions) or 2, or
 * what the store was told; two in quick succession to one mailbox share
 * its sender key E (another mailbox has its own), which is a public key,
 * and both read back. The header record holds E and the stream header,
 * no key material.
 */
static void
test_sender_key(void **state)
{
    struct mg_store_writer *w1, *w2, *w3;
    struct mg_msg_header h1, h2, h3;
    uint64_t id1, id2, id3, good;

    (void)state;
    w1 = write_msg(1, 1000, 61, 1000, true);
    w2 = write_msg(1, 2000, 62, 2000, true);
    w3 = write_msg(2, 3000, 63, 3000, true); /* mailboxes 0 and 1 */
    id1 = mg_store_writer_ids(w1)[0];
    id2 = mg_store_writer_ids(w2)[0];
    id3 = mg_store_writer_ids(w3)[1];
    h1 = header_of(0, id1);
    h2 = header_of(0, id2);
    h3 = header_of(1, id3);
    assert_int_equal(mg_store_alg(st),
                     store_alg != 0 ? store_alg : mg_vault_alg_auto());
    assert_int_equal(h1.alg, mg_store_alg(st));
    assert_int_equal(h3.alg, mg_store_alg(st));
    assert_memory_equal(h1.epk, h2.epk, MG_VAULT_PK_BYTES);
    assert_memory_not_equal(h1.epk, h3.epk, MG_VAULT_PK_BYTES);
    assert_memory_not_equal(h1.header, h2.header, MG_VAULT_HEADER);
    assert_int_equal(read_msg(0, keys[0], id1, 1000, 61, &good), MG_DECLINED);
    assert_int_equal(read_msg(0, keys[0], id2, 2000, 62, &good), MG_DECLINED);
    assert_int_equal(read_msg(1, keys[1], id3, 3000, 63, &good), MG_DECLINED);
    assert_int_equal(read_msg(0, keys[1], id2, 2000, 62, &good), MG_ERROR);
    {
        /* the record: version, state, alg, flags, received, size,
         * nchunks, E, stream header; nothing else */
        struct mg_buf b;

        mg_buf_init(&b);
        mg_codec_msg_encode(&h1, &b);
        assert_int_equal(mg_buf_len(&b),
                         4 + 8 + 8 + 4 + MG_VAULT_PK_BYTES + MG_VAULT_HEADER);
        mg_buf_free(&b);
    }
    mg_store_writer_free(w1);
    mg_store_writer_free(w2);
    mg_store_writer_free(w3);
}

/* E or the stream header replaced or flipped in a stored scheme 2 or 3
 * header, or the scheme changed: authentication fails before any byte
 * comes out. */
static void
test_tamper_sender_key(void **state)
{
    struct header_edit e = {.mb = 0};
    struct mg_store_writer *w;
    struct mg_msg_header orig;
    uint64_t good, other;

    (void)state;
    e.id = tamper_msg(71);
    orig = header_of(0, e.id);
    w = write_msg(2, 10, 72, 10, true); /* mailbox 1's E */
    other = mg_store_writer_ids(w)[1];
    mg_store_writer_free(w);

    e.h = orig;
    memcpy(e.h.epk, header_of(1, other).epk, MG_VAULT_PK_BYTES);
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_ERROR);
    assert_int_equal(good, 0);

    e.h = orig;
    e.h.epk[17] ^= 0x08;
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_ERROR);
    assert_int_equal(good, 0);

    e.h = orig;
    e.h.header[3] ^= 0x40;
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_ERROR);
    assert_int_equal(good, 0);

    e.h = orig;
    e.h.alg = 4; /* an unknown scheme */
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_ERROR);

    e.h = orig; /* read with the other scheme of the same sender key */
    e.h.alg = orig.alg == MG_VAULT_ALG_V2 ? MG_VAULT_ALG_V3 : MG_VAULT_ALG_V2;
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_ERROR);
    assert_int_equal(good, 0);

    e.h = orig;
    assert_int_equal(run_write(header_put_fn, &e), MG_OK);
    assert_int_equal(read_msg(0, keys[0], e.id, TSIZE, 71, &good), MG_DECLINED);
}

/* A message as versions before scheme 2 wrote it: the envelope and body
 * through the scheme 1 path (a sealed message key), the records as
 * message.c writes them. */
struct v1_msg {
    uint64_t id;
    uint64_t size;
    unsigned seed;
};

static int
v1_write_fn(MDB_txn *txn, void *arg)
{
    struct v1_msg *v = arg;
    struct mg_msg_header h;
    struct mg_mailbox m;
    struct mg_vault_enc *e;
    const char *error = NULL;
    uint8_t *plain, *c;
    struct mg_buf env;
    uint64_t off = 0;
    uint32_t k = 0;
    int rc;

    memset(&m, 0, sizeof(m));
    assert_int_equal(mg_rec_mailbox_get(st, txn, mbox[0], &m, &error), MG_OK);
    assert_int_equal(mg_rec_msg_ids(st, txn, 1, &v->id, &error), MG_OK);
    memset(&h, 0, sizeof(h));
    h.state = MG_MSG_WRITING;
    h.alg = MG_VAULT_ALG_V1;
    h.received = (uint64_t)time(NULL);
    e = mg_vault_enc_begin_v1(m.pk, mbox[0], v->id, h.sealed_key, h.header);
    mg_mailbox_clear(&m);
    assert_non_null(e);
    plain = malloc(CHUNK);
    c = malloc(CHUNK + MG_VAULT_ABYTES);
    mg_buf_init(&env);
    mg_codec_envelope_encode(&test_env, &env);
    mg_vault_enc_push(e, mg_buf_data(&env), mg_buf_len(&env), false, c);
    rc = mg_rec_chunk_put(st, txn, mbox[0], v->id, k++, c,
                          mg_buf_len(&env) + MG_VAULT_ABYTES, &error);
    mg_buf_free(&env);
    do {
        size_t len = v->size - off < CHUNK ? (size_t)(v->size - off) : CHUNK;

        body_fill(plain, off, len, v->seed);
        mg_vault_enc_push(e, plain, len, off + len == v->size, c);
        if (rc == MG_OK)
            rc = mg_rec_chunk_put(st, txn, mbox[0], v->id, k++, c,
                                  len + MG_VAULT_ABYTES, &error);
        off += len;
    } while (off < v->size);
    mg_vault_enc_free(e);
    free(c);
    free(plain);
    h.size = v->size;
    h.nchunks = k;
    if (rc == MG_OK)
        rc = mg_rec_msg_commit(st, txn, mbox[0], v->id, &h, true, &error);
    return rc;
}

/* Scheme 1 messages (a store made before scheme 2) read as they did,
 * next to scheme 2 ones in the same mailbox, and their records keep the
 * sealed key. */
static void
test_scheme1_readable(void **state)
{
    struct v1_msg v[3] = {{0, 0, 81}, {0, CHUNK + 5, 82}, {0, 1000, 83}};
    struct mg_store_writer *w;
    uint64_t good;

    (void)state;
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(run_write(v1_write_fn, &v[i]), MG_OK);
    w = write_msg(1, 500, 84, 500, true);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(header_of(0, v[i].id).alg, MG_VAULT_ALG_V1);
        assert_true(listed(0, v[i].id, true));
        assert_int_equal(
            read_msg(0, keys[0], v[i].id, v[i].size, v[i].seed, &good),
            MG_DECLINED);
        assert_int_equal(
            read_msg(0, keys[1], v[i].id, v[i].size, v[i].seed, &good),
            MG_ERROR);
    }
    assert_int_equal(
        read_msg(0, keys[0], mg_store_writer_ids(w)[0], 500, 84, &good),
        MG_DECLINED);
    mg_store_writer_free(w);
    /* a scheme 1 message still fails when moved to another id */
    {
        struct tamper t = {.mb = 0, .id = v[2].id, .to_mb = 0};

        t.to_id = v[2].id + 700000;
        assert_int_equal(run_write(copy_fn, &t), MG_OK);
        assert_int_equal(read_msg(0, keys[0], t.to_id, 1000, 83, &good),
                         MG_ERROR);
        assert_int_equal(good, 0);
    }
}

/* Schemes 1, 2 and 3 in one mailbox (a store written by three versions,
 * or store.cipher changed between restarts): one unlocked key reads them
 * all, in either order, and each still fails under another id. */
static void
test_mixed_schemes(void **state)
{
    struct v1_msg v = {0, CHUNK + 7, 91};
    const uint8_t saved = store_alg;
    struct mg_store_writer *w;
    uint64_t id[3], size[3] = {CHUNK + 7, 2 * CHUNK + 3, 3000}, good;
    unsigned seed[3] = {91, 92, 93};

    (void)state;
    assert_int_equal(run_write(v1_write_fn, &v), MG_OK);
    id[0] = v.id;
    for (uint8_t alg = MG_VAULT_ALG_V2; alg <= MG_VAULT_ALG_V3; alg++) {
        mg_store_close(st);
        store_alg = alg;
        store_open();
        assert_int_equal(mg_store_alg(st), alg);
        w = write_msg(1, size[alg - 1], seed[alg - 1], 4096, true);
        id[alg - 1] = mg_store_writer_ids(w)[0];
        mg_store_writer_free(w);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(header_of(0, id[i]).alg, MG_VAULT_ALG_V1 + i);
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k < 3; k++) {
            int i = r == 0 ? k : 2 - k;

            assert_int_equal(
                read_msg(0, keys[0], id[i], size[i], seed[i], &good),
                MG_DECLINED);
            assert_int_equal(good, size[i]);
        }
    }
    /* scheme 3 message records moved to another id fail */
    {
        struct tamper t = {.mb = 0, .id = id[2], .to_mb = 0};

        t.to_id = id[2] + 700000;
        assert_int_equal(run_write(copy_fn, &t), MG_OK);
        assert_int_equal(read_msg(0, keys[0], t.to_id, 3000, 93, &good),
                         MG_ERROR);
        assert_int_equal(good, 0);
    }
    mg_store_close(st);
    store_alg = saved;
    store_open();
}

/* Whether `needle` occurs anywhere in the store's data file. */
static bool
in_data_file(const uint8_t *needle, size_t n)
{
    char path[160];
    FILE *f;
    uint8_t *buf;
    size_t have = 0, got;
    bool found = false;
    enum {
        WIN = 1 << 20
    };

    snprintf(path, sizeof(path), "%s/data.mdb", storedir);
    f = fopen(path, "rb");
    assert_non_null(f);
    buf = malloc(WIN + n);
    assert_non_null(buf);
    while (!found && (got = fread(buf + have, 1, WIN, f)) > 0) {
        have += got;
        found = memmem(buf, have, needle, n) != NULL;
        /* keep the tail: a match may straddle two reads */
        memmove(buf, buf + have - (have < n ? have : n), have < n ? have : n);
        have = have < n ? have : n;
    }
    fclose(f);
    free(buf);
    return found;
}

/* Swap mailbox 2's public key with the one in arg. */
static int
mailbox_pk_fn(MDB_txn *txn, void *arg)
{
    uint8_t *pk = arg, old[MG_VAULT_PK_BYTES];
    struct mg_mailbox m;
    const char *error = NULL;
    int rc;

    memset(&m, 0, sizeof(m));
    assert_int_equal(mg_rec_mailbox_get(st, txn, mbox[2], &m, &error), MG_OK);
    memcpy(old, m.pk, MG_VAULT_PK_BYTES);
    memcpy(m.pk, pk, MG_VAULT_PK_BYTES);
    memcpy(pk, old, MG_VAULT_PK_BYTES);
    rc = mg_rec_mailbox_put(st, txn, &m, &error);
    mg_mailbox_clear(&m);
    return rc;
}

/* Scheme 3's chunk 0 opened by hand: the message key is BLAKE2b keyed
 * with the stream key over the label and the header, the chunk
 * flags || AES-256-GCM(nonce 0) || tag with the flags byte after the AD. */
static void
v3_open_chunk0(uint8_t mkey[32], const uint8_t skey[32],
               const uint8_t header[MG_VAULT_HEADER], uint8_t *ad, size_t adlen,
               const uint8_t *c, size_t len, uint8_t *plain)
{
    static const char label[] = "mailgate vault v3 message key";
    uint8_t iv[12] = {0};
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;

    crypto_generichash_state g;
    crypto_generichash_init(&g, skey, 32, 32);
    crypto_generichash_update(&g, (const uint8_t *)label, sizeof(label) - 1);
    crypto_generichash_update(&g, header, MG_VAULT_HEADER);
    crypto_generichash_final(&g, mkey, 32);
    assert_true(len >= 17);
    assert_int_equal(c[0], 0); /* the envelope is not the last chunk */
    ad[adlen] = c[0];
    assert_int_equal(EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, mkey, iv),
                     1);
    assert_int_equal(EVP_DecryptUpdate(x, NULL, &n, ad, (int)adlen + 1), 1);
    assert_int_equal(EVP_DecryptUpdate(x, plain, &n, c + 1, (int)(len - 17)),
                     1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, 16,
                                         (void *)(c + len - 16)),
                     1);
    assert_int_equal(EVP_DecryptFinal_ex(x, plain + n, &m), 1);
    EVP_CIPHER_CTX_free(x);
}

/*
 * What the writer caches (the stream key of the mailbox's sender key)
 * and the X25519 output it comes from never reach the data file, while
 * E and the ciphertext do. The test owns the mailbox's private key here
 * (mailbox 2's public key is replaced by one of the test's own pairs) to
 * compute them with bare libsodium; the stream key opens the stored
 * envelope chunk, so the bytes searched for are the real ones.
 */
static void
test_sender_key_not_on_disk(void **state)
{
    static const char label[] = "mailgate vault v2 stream key";
    uint8_t pk[MG_VAULT_PK_BYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t swap[MG_VAULT_PK_BYTES];
    uint8_t shared[crypto_scalarmult_BYTES];
    uint8_t skey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    uint8_t plain[MG_VAULT_CHUNK], mkey[2][32];
    crypto_secretstream_xchacha20poly1305_state ss;
    crypto_generichash_state g;
    struct mg_store_writer *w[2];
    struct mg_msg_header h[2];
    const char *ids[] = {mbox[2]}, *error = NULL;
    const void *data;
    MDB_txn *txn;
    size_t len;

    (void)state;
    crypto_box_keypair(pk, sk);
    memcpy(swap, pk, sizeof(swap));
    assert_int_equal(run_write(mailbox_pk_fn, swap), MG_OK);
    for (int i = 0; i < 2; i++) {
        struct sync s;

        sync_init(&s);
        w[i] = mg_store_writer_begin(st, ids, 1, &test_env, &error);
        assert_non_null(w[i]);
        assert_int_equal(mg_store_writer_write(w[i], "hello", 5), MG_OK);
        mg_store_writer_commit(w[i], true, sync_done, &s);
        assert_int_equal(sync_wait(&s), MG_OK);
        sync_destroy(&s);
        h[i] = header_of(2, mg_store_writer_ids(w[i])[0]);
    }
    /* one sender key for both */
    assert_memory_equal(h[0].epk, h[1].epk, MG_VAULT_PK_BYTES);

    assert_int_equal(crypto_scalarmult(shared, sk, h[0].epk), 0);
    crypto_generichash_init(&g, NULL, 0, sizeof(skey));
    crypto_generichash_update(&g, (const uint8_t *)label, sizeof(label) - 1);
    crypto_generichash_update(&g, shared, sizeof(shared));
    crypto_generichash_update(&g, h[0].epk, MG_VAULT_PK_BYTES);
    crypto_generichash_update(&g, pk, MG_VAULT_PK_BYTES);
    crypto_generichash_final(&g, skey, sizeof(skey));
    for (int i = 0; i < 2; i++) {
        uint8_t ad[MG_MAILBOX_ID_MAX + 10]; /* + scheme 3's flags */
        uint64_t id = mg_store_writer_ids(w[i])[0];
        size_t adlen = strlen(mbox[2]) + 1;

        memset(ad, 0, sizeof(ad));
        memcpy(ad, mbox[2], adlen - 1);
        for (int b = 7; b >= 0; b--)
            ad[adlen++] = (uint8_t)(id >> (b * 8));
        assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
        assert_int_equal(
            mg_rec_chunk_get(st, txn, mbox[2], id, 0, &data, &len, &error),
            MG_OK);
        memset(mkey[i], 0, sizeof(mkey[i]));
        if (h[i].alg == MG_VAULT_ALG_V2) {
            assert_int_equal(crypto_secretstream_xchacha20poly1305_init_pull(
                                 &ss, h[i].header, skey),
                             0);
            assert_int_equal(crypto_secretstream_xchacha20poly1305_pull(
                                 &ss, plain, NULL, NULL, data, len, ad, adlen),
                             0);
        } else {
            assert_int_equal(h[i].alg, MG_VAULT_ALG_V3);
            v3_open_chunk0(mkey[i], skey, h[i].header, ad, adlen, data, len,
                           plain);
        }
        mg_store_read_end(st, txn);
        mg_store_writer_free(w[i]);
    }
    assert_true(in_data_file(h[0].epk, MG_VAULT_PK_BYTES));
    assert_false(in_data_file(skey, sizeof(skey)));
    for (int i = 0; i < 2; i++)
        if (h[i].alg == MG_VAULT_ALG_V3)
            assert_false(in_data_file(mkey[i], sizeof(mkey[i])));
    assert_false(in_data_file(shared, sizeof(shared)));
    assert_false(in_data_file(sk, sizeof(sk)));
    sodium_memzero(sk, sizeof(sk));
    assert_int_equal(run_write(mailbox_pk_fn, swap), MG_OK); /* restored */
    assert_memory_equal(swap, pk, sizeof(pk));
}

/* ------------------------------------------------ held, discard, free */

static void
test_held_publish_discard(void **state)
{
    struct mg_store_writer *w;
    struct sync s;
    uint64_t id, good;

    (void)state;
    sync_init(&s);
    w = write_msg(2, 2 * CHUNK + 9, 61, 5000, false);
    id = mg_store_writer_ids(w)[0];
    assert_int_equal(msg_state(0, id), MG_MSG_HELD);
    assert_false(listed(0, id, true));
    assert_true(listed(0, id, false));
    mg_store_writer_publish(w, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_OK);
    assert_int_equal(msg_state(0, id), MG_MSG_VISIBLE);
    assert_int_equal(msg_state(1, mg_store_writer_ids(w)[1]), MG_MSG_VISIBLE);
    assert_true(listed(0, id, true));
    assert_int_equal(read_msg(1, keys[1], mg_store_writer_ids(w)[1],
                              2 * CHUNK + 9, 61, &good),
                     MG_DECLINED);
    /* no second publish, no discard of a visible message */
    mg_store_writer_discard(w, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_ERROR);
    mg_store_writer_free(w);

    w = write_msg(2, 3 * CHUNK, 62, 5000, false);
    id = mg_store_writer_ids(w)[0];
    assert_int_equal(msg_state(0, id), MG_MSG_HELD);
    mg_store_writer_discard(w, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_OK);
    for (size_t c = 0; c < 2; c++) {
        uint64_t cid = mg_store_writer_ids(w)[c];

        assert_int_equal(msg_state(c, cid), 0);
        assert_false(listed(c, cid, false));
        for (uint32_t k = 0; k < 5; k++)
            assert_false(chunk_exists(c, cid, k));
    }
    mg_store_writer_free(w);
    sync_destroy(&s);
}

static void
test_free_uncommitted(void **state)
{
    const char *ids[] = {mbox[0], mbox[1]};
    const char *error = NULL;
    struct mg_store_writer *w;
    uint8_t *buf = malloc(6 * CHUNK);
    uint64_t id0, id1;

    (void)state;
    body_fill(buf, 0, 6 * CHUNK, 71);
    w = mg_store_writer_begin(st, ids, 2, &test_env, &error);
    assert_non_null(w);
    /* more than a writer holds back: the first chunks are queued */
    assert_int_equal(mg_store_writer_write(w, buf, 6 * CHUNK), MG_OK);
    assert_int_equal(mg_store_writer_write(w, buf, 10), MG_OK);
    id0 = mg_store_writer_ids(w)[0];
    id1 = mg_store_writer_ids(w)[1];
    assert_int_equal(run_write(noop_fn, NULL), MG_OK); /* data is stored */
    assert_int_equal(msg_state(0, id0), MG_MSG_WRITING);
    assert_true(chunk_exists(0, id0, 2));
    assert_false(listed(0, id0, true));
    mg_store_writer_free(w);
    assert_int_equal(run_write(noop_fn, NULL), MG_OK); /* after the delete */
    assert_int_equal(msg_state(0, id0), 0);
    assert_false(chunk_exists(0, id0, 0));
    assert_false(chunk_exists(1, id1, 1));

    /* a writer abandoned without free (a crash): gone after reopen; its
     * memory is deliberately lost */
#if defined(__SANITIZE_ADDRESS__)
    __lsan_disable();
#endif
    w = mg_store_writer_begin(st, ids, 2, &test_env, &error);
#if defined(__SANITIZE_ADDRESS__)
    __lsan_enable();
#endif
    assert_non_null(w);
    assert_int_equal(mg_store_writer_write(w, buf, 6 * CHUNK), MG_OK);
    assert_int_equal(mg_store_writer_write(w, buf, 10), MG_OK);
    id0 = mg_store_writer_ids(w)[0];
    id1 = mg_store_writer_ids(w)[1];
    assert_int_equal(run_write(noop_fn, NULL), MG_OK);
    assert_int_equal(msg_state(1, id1), MG_MSG_WRITING);
    mg_store_close(st);
    store_open();
    assert_int_equal(msg_state(0, id0), 0);
    assert_int_equal(msg_state(1, id1), 0);
    assert_false(chunk_exists(0, id0, 0));
    assert_false(chunk_exists(1, id1, 3));
    free(buf);
}

/* --------------------------------------------------------- back-pressure */

struct blocker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool entered, release;
};

static int
block_fn(MDB_txn *txn, void *arg)
{
    struct blocker *b = arg;

    (void)txn;
    pthread_mutex_lock(&b->lock);
    b->entered = true;
    pthread_cond_broadcast(&b->cond);
    while (!b->release)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    return MG_OK;
}

static void *
block_thread(void *arg)
{
    run_write(block_fn, arg);
    return NULL;
}

static void
test_back_pressure(void **state)
{
    const char *ids[] = {mbox[0]};
    const char *error = NULL;
    struct blocker b = {.entered = false};
    struct mg_store_writer *w;
    struct sync s;
    pthread_t t;
    uint8_t *buf = malloc(CHUNK);
    uint64_t off = 0, good;
    int rc = MG_OK, writes = 0;

    (void)state;
    sync_init(&s);
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    w = mg_store_writer_begin(st, ids, 1, &test_env, &error);
    assert_non_null(w);
    mg_store_writer_on_drained(w, sync_drained, &s);
    /* hold the store's writer thread inside an op */
    assert_int_equal(pthread_create(&t, NULL, block_thread, &b), 0);
    pthread_mutex_lock(&b.lock);
    while (!b.entered)
        pthread_cond_wait(&b.cond, &b.lock);
    pthread_mutex_unlock(&b.lock);

    while (writes < 1000) {
        body_fill(buf, off, CHUNK, 81);
        rc = mg_store_writer_write(w, buf, CHUNK);
        if (rc != MG_OK)
            break;
        off += CHUNK;
        writes++;
    }
    assert_int_equal(rc, MG_AGAIN);
    assert_true(off >= 4u * 1024 * 1024 && off <= 5u * 1024 * 1024);
    assert_int_equal(mg_store_writer_write(w, buf, CHUNK), MG_AGAIN);
    assert_int_equal(s.drained, 0);

    pthread_mutex_lock(&b.lock);
    b.release = true;
    pthread_cond_broadcast(&b.cond);
    pthread_mutex_unlock(&b.lock);
    sync_wait_drained(&s, 0);
    assert_int_equal(mg_store_writer_write(w, buf, CHUNK), MG_OK);
    off += CHUNK;
    mg_store_writer_commit(w, true, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_OK);
    pthread_join(t, NULL);
    assert_int_equal(
        read_msg(0, keys[0], mg_store_writer_ids(w)[0], off, 81, &good),
        MG_DECLINED);
    mg_store_writer_free(w);
    pthread_mutex_destroy(&b.lock);
    pthread_cond_destroy(&b.cond);
    sync_destroy(&s);
    free(buf);
}

/* ------------------------------------------------------ big, flat memory */

/* Resident anonymous memory (heap, stacks) in KiB. ru_maxrss would also
 * count the store's file pages mapped while reading, which are page
 * cache, not our memory: so sample RssAnon instead. */
static long
rss_anon_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

struct big {
    long base, peak;
};

static void
big_sample(struct big *b)
{
    long kb = rss_anon_kb();

    if (kb > b->peak)
        b->peak = kb;
}

static void
test_big_flat_memory(void **state)
{
    const char *ids[] = {mbox[2]};
    const char *error = NULL;
    struct mg_store_writer *w;
    struct mg_store_reader *r;
    struct big b;
    struct sync s;
    struct rusage ru0, ru1;
    uint8_t *buf = malloc(CHUNK);
    const void *data;
    uint64_t off = 0, id, total = 0;
    uint64_t sum = 0, sum2 = 0;
    size_t len, piece = 32 * 1024;
    unsigned n = 0;
    int rc;

    (void)state;
    sync_init(&s);
    getrusage(RUSAGE_SELF, &ru0);
    b.base = b.peak = rss_anon_kb();
    w = mg_store_writer_begin(st, ids, 1, &test_env, &error);
    assert_non_null(w);
    mg_store_writer_on_drained(w, sync_drained, &s);
    while (off < BIG_SIZE) {
        int seen;

        /* a cheap pattern; the sum checks it on the way back */
        for (size_t i = 0; i < piece; i++)
            buf[i] = (uint8_t)((off + i) * 7 + ((off + i) >> 16));
        pthread_mutex_lock(&s.lock);
        seen = s.drained;
        pthread_mutex_unlock(&s.lock);
        rc = mg_store_writer_write(w, buf, piece);
        if (rc == MG_AGAIN) {
            sync_wait_drained(&s, seen);
            continue;
        }
        assert_int_equal(rc, MG_OK);
        for (size_t i = 0; i < piece; i++)
            sum = sum * 31 + buf[i];
        off += piece;
        if (++n % 64 == 0)
            big_sample(&b);
    }
    mg_store_writer_commit(w, true, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_OK);
    id = mg_store_writer_ids(w)[0];
    mg_store_writer_free(w);
    big_sample(&b);

    assert_int_equal(mg_store_reader_open(st, keys[2], mbox[2], id, &r, &error),
                     MG_OK);
    assert_int_equal(mg_store_reader_size(r), BIG_SIZE);
    n = 0;
    while ((rc = mg_store_reader_next(r, &data, &len, &error)) == MG_OK) {
        const uint8_t *p = data;

        for (size_t i = 0; i < len; i++) {
            if (p[i] != (uint8_t)((total + i) * 7 + ((total + i) >> 16)))
                fail_msg("byte %llu differs", (unsigned long long)(total + i));
            sum2 = sum2 * 31 + p[i];
        }
        total += len;
        if (++n % 32 == 0)
            big_sample(&b);
    }
    assert_int_equal(rc, MG_DECLINED);
    mg_store_reader_close(r);
    big_sample(&b);
    getrusage(RUSAGE_SELF, &ru1);
    assert_int_equal(total, BIG_SIZE);
    assert_true(sum == sum2);
    print_message("big message: %u MiB, anonymous memory peak +%ld KiB, "
                  "ru_maxrss +%ld KiB (includes mapped store pages)\n",
                  BIG_SIZE >> 20, b.peak - b.base,
                  ru1.ru_maxrss - ru0.ru_maxrss);
    assert_true(b.peak - b.base < 64 * 1024);
    sync_destroy(&s);
    free(buf);
}

/* ------------------------------------------------- de-duplication entry */

static int
dedup_lookup(const char *mb, const char *uidl, uint64_t *id_r)
{
    const char *error = NULL;
    MDB_txn *txn;
    int rc;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    rc = mg_rec_dedup_get(st, txn, mb, "pop.example.org:995", "bob", uidl, id_r,
                          &error);
    mg_store_read_end(st, txn);
    return rc;
}

/* The proxy's index entry is written by the message's own commit (one
 * transaction: never a copy without its entry), for copy 0 only, and
 * not at all when the commit does not happen. */
static void
test_dedup_with_commit(void **state)
{
    const char *ids[] = {mbox[0], mbox[1]};
    const char *error = NULL;
    struct mg_store_writer *w;
    struct sync s;
    uint64_t id = 0;

    (void)state;
    sync_init(&s);
    w = mg_store_writer_begin(st, ids, 2, &test_env, &error);
    assert_non_null(w);
    assert_int_equal(
        mg_store_writer_dedup(w, "pop.example.org:995", "bob", "uidl-1"),
        MG_OK);
    /* one entry per message; no empty UIDL */
    assert_int_equal(
        mg_store_writer_dedup(w, "pop.example.org:995", "bob", "uidl-2"),
        MG_ERROR);
    assert_int_equal(mg_store_writer_write(w, "Subject: x\r\n\r\nbody\r\n", 20),
                     MG_OK);
    assert_int_equal(dedup_lookup(mbox[0], "uidl-1", &id), MG_DECLINED);
    mg_store_writer_commit(w, true, sync_done, &s);
    assert_int_equal(sync_wait(&s), MG_OK);
    assert_int_equal(dedup_lookup(mbox[0], "uidl-1", &id), MG_OK);
    assert_int_equal(id, mg_store_writer_ids(w)[0]);
    assert_int_equal(dedup_lookup(mbox[1], "uidl-1", &id), MG_DECLINED);
    assert_int_equal(dedup_lookup(mbox[0], "uidl-2", &id), MG_DECLINED);
    /* too late once committed */
    assert_int_equal(
        mg_store_writer_dedup(w, "pop.example.org:995", "bob", "uidl-3"),
        MG_ERROR);
    mg_store_writer_free(w);

    /* a message that is never committed leaves no entry */
    w = mg_store_writer_begin(st, ids, 1, &test_env, &error);
    assert_non_null(w);
    assert_int_equal(mg_store_writer_dedup(w, "pop.example.org:995", "bob", ""),
                     MG_ERROR);
    assert_int_equal(
        mg_store_writer_dedup(w, "pop.example.org:995", "bob", "uidl-4"),
        MG_OK);
    assert_int_equal(mg_store_writer_write(w, "x\r\n", 3), MG_OK);
    mg_store_writer_free(w);
    assert_int_equal(run_write(noop_fn, NULL), MG_OK); /* the free's delete */
    assert_int_equal(dedup_lookup(mbox[0], "uidl-4", &id), MG_DECLINED);
    sync_destroy(&s);
}

/* ------------------------------------------------------------ store full */

static int
msg_get_state(const char *mb, uint64_t id)
{
    struct mg_msg_header h;
    const char *error = NULL;
    MDB_txn *txn;
    int rc;

    assert_int_equal(mg_store_read_begin(st, &txn, &error), MG_OK);
    rc = mg_rec_msg_get(st, txn, mb, id, &h, &error);
    mg_store_read_end(st, txn);
    return rc == MG_OK ? h.state : 0;
}

/* Write size bytes to mailbox mb; the commit's status. */
static int
write_to(const char *mb, uint64_t size, bool *temporary_r, uint64_t *id_r,
         bool *write_failed_r)
{
    const char *ids[] = {mb};
    const char *error = NULL;
    struct mg_store_writer *w;
    uint8_t *buf = calloc(1, CHUNK);
    struct sync s;
    uint64_t off = 0;
    int rc;

    sync_init(&s);
    w = mg_store_writer_begin(st, ids, 1, &test_env, &error);
    assert_non_null(w);
    mg_store_writer_on_drained(w, sync_drained, &s);
    *write_failed_r = false;
    while (off < size) {
        size_t len = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        int seen;

        pthread_mutex_lock(&s.lock);
        seen = s.drained;
        pthread_mutex_unlock(&s.lock);
        rc = mg_store_writer_write(w, buf, len);
        if (rc == MG_AGAIN) {
            sync_wait_drained(&s, seen);
            continue;
        }
        if (rc == MG_ERROR) {
            *write_failed_r = true;
            break;
        }
        off += len;
    }
    mg_store_writer_commit(w, true, sync_done, &s);
    rc = sync_wait(&s);
    *temporary_r = s.temporary;
    if (rc != MG_OK)
        assert_true(s.error[0] != '\0');
    *id_r = mg_store_writer_ids(w)[0];
    mg_store_writer_free(w);
    assert_int_equal(run_write(noop_fn, NULL), MG_OK); /* the free's delete */
    sync_destroy(&s);
    free(buf);
    return rc;
}

static void
test_store_full(void **state)
{
    struct mg_store_config cfg = {
        .map_size = 8u << 20,
        .reserve = 1u << 20,
        .recover = true,
    };
    struct mg_store *main_st = st;
    char dir[128], id[MG_MAILBOX_ID_MAX + 1];
    struct mg_vault_key *key;
    const char *error = NULL;
    uint64_t msg;
    bool temporary, write_failed;

    (void)state;
    snprintf(dir, sizeof(dir), "%s/small", tmpdir);
    cfg.dir = dir;
    if (mg_store_open(&cfg, &st, &error) != MG_OK)
        fail_msg("small store: %s", error);
    mailbox_create(id, &key);

    /* far more than fits: a temporary failure, nothing visible */
    assert_int_equal(write_to(id, 20u << 20, &temporary, &msg, &write_failed),
                     MG_ERROR);
    assert_true(temporary);
    assert_true(write_failed);
    assert_int_equal(msg_get_state(id, msg), 0);

    /* the space came back: a message fits again */
    assert_int_equal(write_to(id, 3 * CHUNK, &temporary, &msg, &write_failed),
                     MG_OK);
    assert_int_equal(msg_get_state(id, msg), MG_MSG_VISIBLE);

    mg_vault_key_free(key);
    mg_store_close(st);
    st = main_st;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uidl),
        cmocka_unit_test(test_round_trip_one),
        cmocka_unit_test(test_round_trip_three),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_begin_errors),
        cmocka_unit_test(test_tamper_flip),
        cmocka_unit_test(test_tamper_truncate),
        cmocka_unit_test(test_tamper_swap),
        cmocka_unit_test(test_tamper_move),
        cmocka_unit_test(test_sender_key),
        cmocka_unit_test(test_tamper_sender_key),
        cmocka_unit_test(test_scheme1_readable),
        cmocka_unit_test(test_mixed_schemes),
        cmocka_unit_test(test_sender_key_not_on_disk),
        cmocka_unit_test(test_held_publish_discard),
        cmocka_unit_test(test_free_uncommitted),
        cmocka_unit_test(test_back_pressure),
        cmocka_unit_test(test_dedup_with_commit),
        cmocka_unit_test(test_store_full),
        cmocka_unit_test(test_big_flat_memory),
    };

    /* the scheme-specific ones again with store.cipher = xchacha20poly1305
     * (scheme 2), which the first group gets only where the CPU has no
     * AES instructions */
    const struct CMUnitTest tests_v2[] = {
        cmocka_unit_test(test_round_trip_one),
        cmocka_unit_test(test_round_trip_three),
        cmocka_unit_test(test_tamper_flip),
        cmocka_unit_test(test_tamper_truncate),
        cmocka_unit_test(test_tamper_swap),
        cmocka_unit_test(test_tamper_move),
        cmocka_unit_test(test_sender_key),
        cmocka_unit_test(test_tamper_sender_key),
        cmocka_unit_test(test_scheme1_readable),
        cmocka_unit_test(test_sender_key_not_on_disk),
    };
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);

    return failed + cmocka_run_group_tests_name("scheme 2", tests_v2,
                                                group_setup_v2, group_teardown);
}
