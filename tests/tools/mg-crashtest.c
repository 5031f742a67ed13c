/*
 * tests/tools/mg-crashtest.c -- durability under SIGKILL (test-only).
 *
 *   mg-crashtest DATA_DIR init
 *       create DATA_DIR/store and a mailbox (once); prints
 *       "MAILBOX <id>" and "PASSWORD <password>"
 *   mg-crashtest DATA_DIR write N_THREADS
 *       N threads store messages until killed; each committed (durable)
 *       message is printed as "ACK <msg_id> <sha256 hex>" (flushed)
 *   mg-crashtest DATA_DIR store MARKER ADDRESS
 *       store three messages whose body holds MARKER and whose envelope
 *       sender and recipient are ADDRESS; prints their ACK lines
 *   mg-crashtest DATA_DIR verify ACKFILE
 *       reopen the store (which removes unfinished data) and check: every
 *       ACKed message is visible and decrypts to its hash; nothing WRITING
 *       or HELD is left, no chunk without its message; every visible
 *       message decrypts and matches the content its seed generates
 *
 * The mailbox id is kept in DATA_DIR/crashtest.mailbox; the password is a
 * constant of this program (never written to the data directory). A
 * message body is "MGCRASH seed=<16 hex> len=<n>\n" followed by n bytes
 * derived from the seed, so any visible message can be checked.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "store.h"

#define CT_PASSWORD   "crashtest-k7mq-x2pd-9wfh-c4rt-b8ny"
#define CT_MAX_FILLER (300 * 1024)
#define CT_PIECE      (16 * 1024)
#define CT_HEAD_MAX   64

static struct mg_store *ct_st;
static char ct_mailbox[MG_MAILBOX_ID_MAX + 1];
static pthread_mutex_t ct_out_lock = PTHREAD_MUTEX_INITIALIZER;

static _Noreturn void
ct_die(const char *what, const char *error)
{
    fprintf(stderr, "mg-crashtest: %s: %s\n", what, error);
    exit(1);
}

/* ------------------------------------------------------------ content */

/* The body of seed: its head line and `filler` bytes from the seed. */
static size_t
ct_head(uint64_t seed, size_t filler, char head[CT_HEAD_MAX])
{
    return (size_t)snprintf(head, CT_HEAD_MAX,
                            "MGCRASH seed=%016" PRIx64 " len=%zu\n", seed,
                            filler);
}

/* Filler bytes [off, off+len) of seed: a keyed stream (64-byte blocks). */
static void
ct_filler(uint64_t seed, uint64_t off, uint8_t *out, size_t len)
{
    uint8_t key[crypto_stream_chacha20_KEYBYTES] = {0};
    uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    size_t skip = (size_t)(off % 64);
    uint8_t *tmp = mg_xcalloc(1, len + skip);

    memcpy(key, &seed, sizeof(seed));
    crypto_stream_chacha20_xor_ic(tmp, tmp, len + skip, nonce, off / 64, key);
    memcpy(out, tmp + skip, len);
    free(tmp);
}

static void
ct_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* ------------------------------------------------------------ mailbox */

struct ct_op {
    struct mg_store_op op;
    struct mg_mailbox *m;
};

static int
ct_put_mailbox(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct ct_op *c = (struct ct_op *)op;
    const char *error = NULL;
    int rc = mg_rec_mailbox_put(st, txn, c->m, &error);

    if (rc != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s", error);
    return rc;
}

static void
ct_idfile(const char *datadir, char *path, size_t size)
{
    snprintf(path, size, "%s/crashtest.mailbox", datadir);
}

static int
ct_load_mailbox(const char *datadir)
{
    char path[4096];
    FILE *f;

    ct_idfile(datadir, path, sizeof(path));
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    if (fgets(ct_mailbox, sizeof(ct_mailbox), f) == NULL) {
        fclose(f);
        return -1;
    }
    fclose(f);
    ct_mailbox[strcspn(ct_mailbox, "\n")] = '\0';
    return mg_mailbox_id_valid(ct_mailbox) ? 0 : -1;
}

/* Create the mailbox once; the id file appears only after it is stored. */
static void
ct_init_mailbox(const char *datadir)
{
    struct mg_mailbox m;
    struct ct_op c;
    const char *error = NULL;
    char path[4096], tmp[4200];
    FILE *f;

    if (ct_load_mailbox(datadir) == 0)
        return;
    memset(&m, 0, sizeof(m));
    mg_mailbox_id_new(m.id);
    m.name = mg_xstrdup("crashtest");
    m.description = mg_xstrdup("");
    m.active = true;
    m.created = (uint64_t)time(NULL);
    m.accept_journal = true;
    m.accept_proxy = true;
    /* small Argon2 limits: many verify runs unlock this key */
    if (mg_vault_keys_new(CT_PASSWORD, crypto_pwhash_OPSLIMIT_MIN,
                          crypto_pwhash_MEMLIMIT_MIN, m.pk, &m.wraps[0],
                          &error) != MG_OK)
        ct_die("keys", error);
    m.nwraps = 1;
    memset(&c, 0, sizeof(c));
    c.op.apply = ct_put_mailbox;
    c.m = &m;
    if (mg_store_run(ct_st, &c.op) != MG_OK)
        ct_die("mailbox", c.op.error);
    ct_idfile(datadir, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%s\n", m.id) < 0 || fflush(f) != 0 ||
        fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) != 0)
        ct_die(path, strerror(errno));
    memcpy(ct_mailbox, m.id, sizeof(ct_mailbox));
    mg_mailbox_clear(&m);
}

static void
ct_open(const char *datadir)
{
    /* the only process on this store: it recovers, as the daemon does,
     * and drops the written pages as the daemon does by default (the
     * power-cut and crash tests cover it) */
    struct mg_store_config cfg = {.map_size = 4ull << 30,
                                  .reserve = 16u << 20,
                                  .recover = true,
                                  .drop_written_pages = true};
    const char *error = NULL;
    char dir[4096];

    if (mg_vault_init(2, &error) != MG_OK)
        ct_die("vault", error);
    snprintf(dir, sizeof(dir), "%s/store", datadir);
    cfg.dir = dir;
    if (mg_store_open(&cfg, &ct_st, &error) != MG_OK)
        ct_die(dir, error);
}

/* ------------------------------------------------------------ writing */

struct ct_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int status;
    char error[200];
    unsigned drained;
};

static void
ct_done(struct mg_store_writer *w, int status, bool temporary,
        const char *error, void *arg)
{
    struct ct_wait *cw = arg;

    (void)w;
    (void)temporary;
    pthread_mutex_lock(&cw->lock);
    cw->done = true;
    cw->status = status;
    snprintf(cw->error, sizeof(cw->error), "%s", error ? error : "");
    pthread_cond_signal(&cw->cond);
    pthread_mutex_unlock(&cw->lock);
}

static void
ct_drained(void *arg)
{
    struct ct_wait *cw = arg;

    pthread_mutex_lock(&cw->lock);
    cw->drained++;
    pthread_cond_signal(&cw->cond);
    pthread_mutex_unlock(&cw->lock);
}

/* Write, waiting out back-pressure. */
static int
ct_write(struct mg_store_writer *w, struct ct_wait *cw, const void *p,
         size_t len)
{
    for (;;) {
        unsigned seen;
        int rc;

        pthread_mutex_lock(&cw->lock);
        seen = cw->drained;
        pthread_mutex_unlock(&cw->lock);
        rc = mg_store_writer_write(w, p, len);
        if (rc != MG_AGAIN)
            return rc;
        pthread_mutex_lock(&cw->lock);
        while (cw->drained == seen)
            pthread_cond_wait(&cw->cond, &cw->lock);
        pthread_mutex_unlock(&cw->lock);
    }
}

/* Store one message; print its ACK once the commit is durable. */
static int
ct_store_one(uint64_t seed, size_t filler, const char *marker,
             const struct mg_envelope *env)
{
    const char *ids[1] = {ct_mailbox};
    const char *error = NULL;
    crypto_hash_sha256_state hs;
    struct mg_store_writer *w;
    struct ct_wait cw;
    uint8_t hash[32], *buf = malloc(CT_PIECE);
    char head[CT_HEAD_MAX], hex[65];
    size_t hlen = ct_head(seed, filler, head);
    uint64_t id;
    int rc = MG_OK;

    if (buf == NULL)
        return MG_ERROR;
    memset(&cw, 0, sizeof(cw));
    pthread_mutex_init(&cw.lock, NULL);
    pthread_cond_init(&cw.cond, NULL);
    w = mg_store_writer_begin(ct_st, ids, 1, env, &error);
    if (w == NULL) {
        fprintf(stderr, "mg-crashtest: begin: %s\n", error);
        free(buf);
        return MG_ERROR;
    }
    mg_store_writer_on_drained(w, ct_drained, &cw);
    crypto_hash_sha256_init(&hs);
    crypto_hash_sha256_update(&hs, (const uint8_t *)head, hlen);
    rc = ct_write(w, &cw, head, hlen);
    if (marker != NULL && rc == MG_OK) {
        crypto_hash_sha256_update(&hs, (const uint8_t *)marker, strlen(marker));
        rc = ct_write(w, &cw, marker, strlen(marker));
    }
    for (uint64_t off = 0; off < filler && rc == MG_OK;) {
        size_t len = filler - off < CT_PIECE ? filler - off : CT_PIECE;

        ct_filler(seed, off, buf, len);
        crypto_hash_sha256_update(&hs, buf, len);
        rc = ct_write(w, &cw, buf, len);
        off += len;
    }
    crypto_hash_sha256_final(&hs, hash);
    if (rc == MG_OK) {
        mg_store_writer_commit(w, true, ct_done, &cw);
        pthread_mutex_lock(&cw.lock);
        while (!cw.done)
            pthread_cond_wait(&cw.cond, &cw.lock);
        pthread_mutex_unlock(&cw.lock);
        rc = cw.status;
        if (rc != MG_OK)
            fprintf(stderr, "mg-crashtest: commit: %s\n", cw.error);
    }
    id = mg_store_writer_ids(w)[0];
    mg_store_writer_free(w);
    if (rc == MG_OK) {
        ct_hex(hash, sizeof(hash), hex);
        pthread_mutex_lock(&ct_out_lock);
        printf("ACK %" PRIu64 " %s\n", id, hex);
        fflush(stdout);
        pthread_mutex_unlock(&ct_out_lock);
    }
    pthread_mutex_destroy(&cw.lock);
    pthread_cond_destroy(&cw.cond);
    free(buf);
    return rc;
}

static struct mg_envelope ct_env = {
    .source = "test",
    .sender = "crashtest@example.org",
    .rcpts = (char *[]){"archive@example.net"},
    .nrcpts = 1,
};

static void *
ct_writer_thread(void *arg)
{
    (void)arg;
    for (;;) {
        uint64_t seed;

        randombytes_buf(&seed, sizeof(seed));
        /* sizes 0..300 KiB, some exactly at chunk borders */
        size_t filler = randombytes_uniform(CT_MAX_FILLER + 1);
        if (randombytes_uniform(8) == 0)
            filler = MG_VAULT_CHUNK * randombytes_uniform(5);
        ct_store_one(seed, filler, NULL, &ct_env);
    }
    return NULL;
}

/* ------------------------------------------------------------ verify */

struct ct_ack {
    uint64_t id;
    char hash[65];
};

/* Decrypt a message; check its hash (when given) and that its content is
 * what its head line's seed generates. */
static int
ct_check(const struct mg_vault_key *key, uint64_t id, const char *want_hash)
{
    struct mg_store_reader *r;
    crypto_hash_sha256_state hs;
    const char *error = NULL;
    const void *data;
    uint8_t hash[32], *gen = malloc(MG_VAULT_CHUNK);
    char hex[65], head[CT_HEAD_MAX + 1];
    uint64_t seed = 0, total = 0, foff = 0;
    size_t len, hlen = 0, filler = 0;
    bool parsed = false;
    int rc;

    rc = mg_store_reader_open(ct_st, key, ct_mailbox, id, &r, &error);
    if (rc != MG_OK) {
        fprintf(stderr, "verify: message %" PRIu64 ": open: %s\n", id, error);
        free(gen);
        return -1;
    }
    crypto_hash_sha256_init(&hs);
    while ((rc = mg_store_reader_next(r, &data, &len, &error)) == MG_OK) {
        const uint8_t *p = data;
        size_t i = 0;

        crypto_hash_sha256_update(&hs, p, len);
        while (!parsed && i < len && hlen < CT_HEAD_MAX) {
            head[hlen++] = (char)p[i++];
            if (head[hlen - 1] == '\n') {
                head[hlen] = '\0';
                if (sscanf(head, "MGCRASH seed=%" SCNx64 " len=%zu", &seed,
                           &filler) != 2)
                    break;
                parsed = true;
            }
        }
        /* without a marker the filler follows the head line directly */
        if (parsed && i < len && want_hash == NULL) {
            size_t n = len - i;

            ct_filler(seed, foff, gen, n);
            if (memcmp(gen, p + i, n) != 0) {
                fprintf(stderr, "verify: message %" PRIu64 ": content\n", id);
                rc = MG_ERROR;
                break;
            }
            foff += n;
        }
        total += len;
    }
    mg_store_reader_close(r);
    free(gen);
    if (rc != MG_DECLINED) {
        fprintf(stderr, "verify: message %" PRIu64 ": %s\n", id,
                error != NULL ? error : "bad");
        return -1;
    }
    crypto_hash_sha256_final(&hs, hash);
    ct_hex(hash, sizeof(hash), hex);
    if (want_hash != NULL && strcmp(hex, want_hash) != 0) {
        fprintf(stderr, "verify: message %" PRIu64 ": hash differs\n", id);
        return -1;
    }
    if (want_hash == NULL && (!parsed || foff != filler)) {
        fprintf(stderr, "verify: message %" PRIu64 ": not a test message\n",
                id);
        return -1;
    }
    (void)total;
    return 0;
}

/* No chunk without its message header. */
static int
ct_check_orphans(void)
{
    const struct mg_store_dbs *dbs = mg_store_dbs(ct_st);
    const char *error = NULL;
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v, hv;
    uint8_t last[MG_MSG_KEY];
    bool have_last = false;
    int rc, bad = 0;

    if (mg_store_read_begin(ct_st, &txn, &error) != MG_OK)
        ct_die("read", error);
    if (mdb_cursor_open(txn, dbs->chunk, &cur) != 0)
        ct_die("cursor", "chunk");
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != MG_CHUNK_KEY) {
            bad++;
            continue;
        }
        if (have_last && memcmp(last, k.mv_data, MG_MSG_KEY) == 0)
            continue;
        memcpy(last, k.mv_data, MG_MSG_KEY);
        have_last = true;
        MDB_val mk = {.mv_size = MG_MSG_KEY, .mv_data = last};
        if (mdb_get(txn, dbs->message, &mk, &hv) != 0) {
            fprintf(stderr, "verify: chunks without a message\n");
            bad++;
        }
    }
    mdb_cursor_close(cur);
    mg_store_read_end(ct_st, txn);
    return bad == 0 ? 0 : -1;
}

static int
ct_verify(const char *ackfile)
{
    struct mg_mailbox m;
    struct mg_vault_key *key = NULL;
    struct mg_msg_ref *v = NULL;
    struct ct_ack *acks = NULL;
    const char *error = NULL;
    char line[256];
    size_t nacks = 0, n = 0, nvisible = 0;
    MDB_txn *txn;
    FILE *f;
    int bad = 0;

    memset(&m, 0, sizeof(m));
    f = fopen(ackfile, "r");
    if (f == NULL)
        ct_die(ackfile, strerror(errno));
    while (fgets(line, sizeof(line), f) != NULL) {
        struct ct_ack a;

        /* a line cut by the kill has no newline: never acknowledged */
        if (strchr(line, '\n') == NULL)
            break;
        if (sscanf(line, "ACK %" SCNu64 " %64s", &a.id, a.hash) != 2)
            continue;
        acks = mg_xrealloc(acks, (nacks + 1) * sizeof(*acks));
        acks[nacks++] = a;
    }
    fclose(f);

    if (mg_store_read_begin(ct_st, &txn, &error) != MG_OK)
        ct_die("read", error);
    if (mg_rec_mailbox_get(ct_st, txn, ct_mailbox, &m, &error) != MG_OK)
        ct_die("mailbox", error != NULL ? error : "missing");
    if (mg_rec_msg_list(ct_st, txn, ct_mailbox, false, &v, &n, &error) != MG_OK)
        ct_die("list", error);
    mg_store_read_end(ct_st, txn);
    if (mg_vault_unlock(&m.wraps[0], m.pk, CT_PASSWORD, &key, &error) != MG_OK)
        ct_die("unlock", error != NULL ? error : "wrong password");

    for (size_t i = 0; i < n; i++) {
        if (v[i].state != MG_MSG_VISIBLE) {
            fprintf(stderr, "verify: message %" PRIu64 " left in state %u\n",
                    v[i].id, v[i].state);
            bad++;
            continue;
        }
        nvisible++;
    }
    if (m.messages != nvisible) {
        fprintf(stderr,
                "verify: mailbox counts %" PRIu64 " messages, %zu "
                "visible\n",
                m.messages, nvisible);
        bad++;
    }
    for (size_t i = 0; i < nacks; i++) {
        if (ct_check(key, acks[i].id, acks[i].hash) != 0)
            bad++;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].state == MG_MSG_VISIBLE && ct_check(key, v[i].id, NULL) != 0)
            bad++;
    }
    if (ct_check_orphans() != 0)
        bad++;
    printf("verified %zu acknowledged, %zu visible, %zu records: %s\n", nacks,
           nvisible, n, bad == 0 ? "ok" : "FAILED");
    free(v);
    free(acks);
    mg_vault_key_free(key);
    mg_mailbox_clear(&m);
    return bad == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ main */

static _Noreturn void
ct_usage(void)
{
    fprintf(stderr, "usage: mg-crashtest DATA_DIR init\n"
                    "       mg-crashtest DATA_DIR write N_THREADS\n"
                    "       mg-crashtest DATA_DIR store MARKER ADDRESS\n"
                    "       mg-crashtest DATA_DIR verify ACKFILE\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int status = 0;

    if (argc < 3)
        ct_usage();
    if (mkdir(argv[1], 0700) != 0 && errno != EEXIST)
        ct_die(argv[1], strerror(errno));
    ct_open(argv[1]);
    if (strcmp(argv[2], "init") == 0 && argc == 3) {
        ct_init_mailbox(argv[1]);
        printf("MAILBOX %s\nPASSWORD %s\n", ct_mailbox, CT_PASSWORD);
    } else if (strcmp(argv[2], "write") == 0 && argc == 4) {
        int nthreads = atoi(argv[3]);
        pthread_t t;

        if (nthreads < 1 || nthreads > 64)
            ct_usage();
        ct_init_mailbox(argv[1]);
        for (int i = 0; i < nthreads; i++) {
            if (pthread_create(&t, NULL, ct_writer_thread, NULL) != 0)
                ct_die("thread", strerror(errno));
        }
        for (;;)
            pause(); /* until killed */
    } else if (strcmp(argv[2], "store") == 0 && argc == 5) {
        struct mg_envelope env = {
            .source = "test",
            .sender = argv[4],
            .rcpts = &argv[4],
            .nrcpts = 1,
        };

        ct_init_mailbox(argv[1]);
        for (uint64_t i = 0; i < 3 && status == 0; i++) {
            if (ct_store_one(i + 1, (size_t)i * 70000, argv[3], &env) != MG_OK)
                status = 1;
        }
    } else if (strcmp(argv[2], "verify") == 0 && argc == 4) {
        if (ct_load_mailbox(argv[1]) != 0)
            ct_die("mailbox", "no crashtest.mailbox (run init first)");
        status = ct_verify(argv[3]);
    } else {
        ct_usage();
    }
    mg_store_close(ct_st);
    return status;
}
