/*
 * bench/store/store_bench.c -- stored messages per second through the
 * real store, next to its baselines, in one process and one run.
 *
 *   mg-store-bench DIR MODE SIZE WRITERS COUNT [PREFILL [keep]]
 *
 *   store   the daemon's path: per message a writer (vault encryption in
 *           the calling thread, chunks of MG_VAULT_CHUNK) and a publishing
 *           commit, through the writer thread's group commit
 *   raw     the same writer thread and batching, one op per message that
 *           puts SIZE unencrypted bytes (LMDB's ceiling with our batching)
 *   commit  like raw, but every message is a commit of its own (the writer
 *           thread without group commit: one durable LMDB commit per
 *           message, unencrypted)
 *   fsync   one new file per message in the store's own directory (same
 *           file system, next to data.mdb), written and fsync'd, then the
 *           directory fsync'd (a queue file per message, Postfix style)
 *   stream  bare crypto_secretstream_xchacha20poly1305 over SIZE bytes in
 *           chunks of MG_VAULT_CHUNK, in memory, WRITERS threads (scheme
 *           2's ceiling)
 *   gcm     bare OpenSSL EVP AES-256-GCM the same way: a random key and a
 *           context per message, a nonce per chunk (scheme 3's ceiling)
 *   vault   the store's encryption path alone, in memory, with the scheme
 *           the store writes here (store.cipher = auto: 3 where the CPU
 *           has AES instructions, else 2) and the store's default
 *           sender-key cache (mg_vault_enc_begin: the mailbox's cached
 *           stream key, a new one with its two X25519 operations once a
 *           minute; then the chunks); vault2 and vault3 force a scheme
 *   seal    crypto_box_seal of a 32-byte key (SIZE ignored)
 *   cipher  stream, gcm, vault2, vault3 and seal (5000) taking turns in
 *           ten rounds, so that all see the same load; a line for each
 *   pair    store and raw taking turns the same way (COUNT each)
 *
 * WRITERS threads each store COUNT/WRITERS messages and wait for each
 * one's durable completion before the next, like SMTP sessions. With
 * PREFILL > 0 the store first takes and deletes that many messages
 * (steady state: freed pages being reused), or with "keep" takes and
 * keeps them (a grown store). Prints one line:
 *   mode=store size=65536 writers=32 msgs=2000 secs=1.234 msgs/s=... MB/s=...
 * (modes that encrypt through the vault add alg=N, the scheme).
 * DIR is emptied first. Not a test: run it from bench/store/run.sh.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "store.h"

static const char *bench_dir;
static const char *bench_mode;
static size_t bench_size;
static unsigned bench_writers;
static unsigned bench_count;
static struct mg_store *bench_store;
static uint64_t bench_next_id;
static pthread_mutex_t bench_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *bench_body;
static const char *bench_mailbox = "benchmailbox0001";

static double
bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
bench_die(const char *what, const char *err)
{
    fprintf(stderr, "mg-store-bench: %s: %s\n", what, err ? err : "failed");
    exit(1);
}

static void
bench_rmtree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        char *p;
        struct stat st;

        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        p = mg_xasprintf("%s/%s", path, e->d_name);
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            bench_rmtree(p);
        else
            unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(path);
}

/* ------------------------------------------------------------ a waiter */

struct bench_wait {
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
    int status;
    char error[200];
};

static void
bench_wait_init(struct bench_wait *w)
{
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->c, NULL);
    w->done = false;
}

static int
bench_wait_for(struct bench_wait *w)
{
    pthread_mutex_lock(&w->m);
    while (!w->done)
        pthread_cond_wait(&w->c, &w->m);
    pthread_mutex_unlock(&w->m);
    pthread_mutex_destroy(&w->m);
    pthread_cond_destroy(&w->c);
    return w->status;
}

static void
bench_signal(struct bench_wait *w, int status, const char *error)
{
    pthread_mutex_lock(&w->m);
    w->status = status;
    snprintf(w->error, sizeof(w->error), "%s", error ? error : "");
    w->done = true;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

/* -------------------------------------------------------- store modes */

static uint64_t
bench_take_id(void)
{
    uint64_t id;

    pthread_mutex_lock(&bench_lock);
    id = bench_next_id++;
    pthread_mutex_unlock(&bench_lock);
    return id;
}

static void
bench_commit_done(struct mg_store_writer *w, int status, bool temporary,
                  const char *error, void *arg)
{
    (void)w;
    (void)temporary;
    bench_signal(arg, status, error);
}

static void
bench_drained(void *arg)
{
    bench_signal(arg, MG_OK, NULL);
}

static void
bench_store_one(void)
{
    static const char *const rcpt[] = {"benchmailbox0001@bench.test"};
    struct mg_envelope env = {
        .source = "bench",
        .sender = "sender@bench.test",
        .rcpts = (char **)rcpt,
        .nrcpts = 1,
    };
    const char *ids[] = {bench_mailbox};
    uint64_t id = bench_take_id();
    const char *err = NULL;
    struct mg_store_writer *w =
        mg_store_writer_begin_ids(bench_store, ids, 1, &id, &env, &err);
    struct bench_wait wait;
    size_t off = 0;

    if (w == NULL)
        bench_die("writer", err);
    while (off < bench_size) {
        size_t n = bench_size - off < 65536 ? bench_size - off : 65536;
        int r = mg_store_writer_write(w, bench_body + off, n);

        if (r == MG_AGAIN) {
            bench_wait_init(&wait);
            mg_store_writer_on_drained(w, bench_drained, &wait);
            bench_wait_for(&wait);
            continue; /* not taken: the same piece again */
        }
        if (r != MG_OK)
            bench_die("write", "the writer failed");
        off += n;
    }
    bench_wait_init(&wait);
    mg_store_writer_commit(w, true, bench_commit_done, &wait);
    if (bench_wait_for(&wait) != MG_OK)
        bench_die("commit", wait.error);
    mg_store_writer_free(w);
}

struct bench_raw {
    struct mg_store_op op;
    uint64_t id;
};

static int
bench_raw_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct bench_raw *r = (struct bench_raw *)op;
    const char *err = NULL;

    return mg_rec_chunk_put(st, txn, bench_mailbox, r->id, 0, bench_body,
                            bench_size, &err);
}

static void
bench_raw_one(void)
{
    struct bench_raw r;

    memset(&r, 0, sizeof(r));
    r.id = bench_take_id();
    r.op.apply = bench_raw_apply;
    r.op.bytes = bench_size;
    if (mg_store_run(bench_store, &r.op) != MG_OK)
        bench_die("raw put", r.op.error);
}

static void
bench_fsync_one(void)
{
    uint64_t id = bench_take_id();
    char *p =
        mg_xasprintf("%s/store/msg.%llu", bench_dir, (unsigned long long)id);
    char *dir = mg_xasprintf("%s/store", bench_dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t off = 0;

    if (fd < 0)
        bench_die("open", strerror(errno));
    while (off < bench_size) {
        ssize_t n = write(fd, bench_body + off, bench_size - off);

        if (n <= 0)
            bench_die("write", strerror(errno));
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        bench_die("fsync", strerror(errno));
    close(fd);
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        bench_die("fsync dir", strerror(errno));
    close(fd);
    free(p);
    free(dir);
}

static void
bench_stream_one(void)
{
    static _Thread_local unsigned char out[MG_VAULT_CHUNK + MG_VAULT_ABYTES];
    unsigned char key[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    unsigned char header[crypto_secretstream_xchacha20poly1305_HEADERBYTES];
    crypto_secretstream_xchacha20poly1305_state st;
    size_t off = 0;

    crypto_secretstream_xchacha20poly1305_keygen(key);
    crypto_secretstream_xchacha20poly1305_init_push(&st, header, key);
    do {
        size_t n = bench_size - off < MG_VAULT_CHUNK ? bench_size - off
                                                     : MG_VAULT_CHUNK;
        unsigned char tag =
            off + n >= bench_size
                ? crypto_secretstream_xchacha20poly1305_TAG_FINAL
                : 0;

        crypto_secretstream_xchacha20poly1305_push(
            &st, out, NULL, bench_body + off, n, NULL, 0, tag);
        off += n;
    } while (off < bench_size);
    sodium_memzero(key, sizeof(key));
}

/* bare AES-256-GCM as scheme 3 uses it, without the vault around it (the
 * cipher fetched once, as the vault does) */
static EVP_CIPHER *bench_aes;

static void
bench_gcm_one(void)
{
    static _Thread_local unsigned char out[MG_VAULT_CHUNK + MG_VAULT_ABYTES];
    unsigned char key[32], iv[12] = {0};
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint64_t i = 0;
    size_t off = 0;
    int n, m;

    randombytes_buf(key, sizeof(key));
    if (c == NULL || EVP_EncryptInit_ex2(c, bench_aes, key, NULL, NULL) != 1)
        bench_die("gcm", "EVP_EncryptInit_ex2");
    do {
        size_t len = bench_size - off < MG_VAULT_CHUNK ? bench_size - off
                                                       : MG_VAULT_CHUNK;

        memcpy(iv + 4, &i, sizeof(i));
        i++;
        if (EVP_EncryptInit_ex2(c, NULL, NULL, iv, NULL) != 1 ||
            EVP_EncryptUpdate(c, out + 1, &n, bench_body + off, (int)len) !=
                1 ||
            EVP_EncryptFinal_ex(c, out + 1 + n, &m) != 1 ||
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + 1 + len) !=
                1)
            bench_die("gcm", "encryption");
        off += len;
    } while (off < bench_size);
    EVP_CIPHER_CTX_free(c);
    sodium_memzero(key, sizeof(key));
}

static uint8_t bench_pk[MG_VAULT_PK_BYTES];
static struct mg_vault_senders *bench_senders;

/* the scheme of mode vault, vault2 or vault3 */
static uint8_t
bench_mode_alg(void)
{
    return strcmp(bench_mode, "vault2") == 0   ? MG_VAULT_ALG_V2
           : strcmp(bench_mode, "vault3") == 0 ? MG_VAULT_ALG_V3
                                               : mg_vault_alg_auto();
}

static void
bench_vault_one(void)
{
    static _Thread_local uint8_t out[MG_VAULT_CHUNK + MG_VAULT_ABYTES];
    uint8_t epk[MG_VAULT_PK_BYTES], header[MG_VAULT_HEADER];
    struct mg_vault_enc *e =
        mg_vault_enc_begin(bench_senders, bench_pk, bench_mode_alg(),
                           bench_mailbox, bench_take_id(), epk, header);
    size_t off = 0;

    do {
        size_t n = bench_size - off < MG_VAULT_CHUNK ? bench_size - off
                                                     : MG_VAULT_CHUNK;

        mg_vault_enc_push(e, bench_body + off, n, off + n >= bench_size, out);
        off += n;
    } while (off < bench_size);
    mg_vault_enc_free(e);
}

static void
bench_seal_one(void)
{
    uint8_t key[32], out[32 + crypto_box_SEALBYTES];

    randombytes_buf(key, sizeof(key));
    crypto_box_seal(out, key, sizeof(key), bench_pk);
    sodium_memzero(key, sizeof(key));
}

static void *
bench_thread(void *arg)
{
    unsigned n = (unsigned)(uintptr_t)arg;
    void (*one)(void) = strcmp(bench_mode, "store") == 0       ? bench_store_one
                        : strcmp(bench_mode, "raw") == 0       ? bench_raw_one
                        : strcmp(bench_mode, "commit") == 0    ? bench_raw_one
                        : strcmp(bench_mode, "fsync") == 0     ? bench_fsync_one
                        : strncmp(bench_mode, "vault", 5) == 0 ? bench_vault_one
                        : strcmp(bench_mode, "seal") == 0      ? bench_seal_one
                        : strcmp(bench_mode, "gcm") == 0       ? bench_gcm_one
                                                         : bench_stream_one;

    for (unsigned i = 0; i < n; i++)
        one();
    return NULL;
}

/* `total` messages of the current mode from bench_writers threads. */
static void
bench_run_threads(unsigned total)
{
    pthread_t *th = mg_xcalloc(bench_writers, sizeof(*th));

    for (unsigned i = 0; i < bench_writers; i++) {
        unsigned n =
            total / bench_writers + (i < total % bench_writers ? 1 : 0);

        pthread_create(&th[i], NULL, bench_thread, (void *)(uintptr_t)n);
    }
    for (unsigned i = 0; i < bench_writers; i++)
        pthread_join(th[i], NULL);
    free(th);
}

/* " alg=N" for the modes that encrypt through the vault */
static const char *
bench_alg_tag(void)
{
    static char tag[16];

    if (strncmp(bench_mode, "vault", 5) == 0)
        snprintf(tag, sizeof(tag), " alg=%u", bench_mode_alg());
    else if (strcmp(bench_mode, "store") == 0 && bench_store != NULL)
        snprintf(tag, sizeof(tag), " alg=%u", mg_store_alg(bench_store));
    else
        tag[0] = '\0';
    return tag;
}

/* Modes taking turns, ten rounds of a tenth of `counts[k]` each, so that
 * they see the same load (this machine's neighbours come and go within
 * seconds); one line for each. */
static void
bench_turns(const char *const *kinds, size_t nk, const unsigned *counts,
            const char *tag)
{
    double secs[8] = {0};
    unsigned n[8] = {0};

    for (int r = 0; r < 10; r++) {
        for (size_t k = 0; k < nk; k++) {
            unsigned count = counts[k] / 10;
            double t0 = bench_now();

            bench_mode = kinds[k];
            bench_run_threads(count);
            secs[k] += bench_now() - t0;
            n[k] += count;
        }
    }
    for (size_t k = 0; k < nk; k++) {
        size_t size = strcmp(kinds[k], "seal") == 0 ? 0 : bench_size;

        bench_mode = kinds[k];
        printf("mode=%s size=%zu writers=%u msgs=%u%s%s secs=%.3f "
               "msgs/s=%.1f MB/s=%.1f\n",
               kinds[k], size, bench_writers, n[k], tag, bench_alg_tag(),
               secs[k], n[k] / secs[k],
               (double)n[k] * (double)size / secs[k] / 1e6);
    }
}

/* ----------------------------------------------------------- set-up */

static void
bench_open_store(void)
{
    struct mg_store_config cfg = {.map_size = 64ULL << 30, .recover = true};

    if (strcmp(bench_mode, "commit") == 0)
        cfg.batch_ops = 1;
    const char *err = NULL;
    char *dir = mg_xasprintf("%s/store", bench_dir);

    cfg.dir = dir;
    if (mg_store_open(&cfg, &bench_store, &err) != MG_OK)
        bench_die("open store", err);
    free(dir);
}

struct bench_setup {
    struct mg_store_op op;
    const struct mg_mailbox *m;
    uint64_t nids;
    uint64_t first;
};

static int
bench_setup_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct bench_setup *s = (struct bench_setup *)op;
    const char *err = NULL;
    int r = mg_rec_mailbox_put(st, txn, s->m, &err);

    if (r == MG_OK)
        r = mg_rec_msg_ids(st, txn, s->nids, &s->first, &err);
    if (r != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s", err ? err : "?");
    return r;
}

static void
bench_prepare(uint64_t prefill_delete)
{
    struct mg_mailbox m;
    struct bench_setup setup;
    const char *err = NULL;

    bench_open_store();
    memset(&m, 0, sizeof(m));
    snprintf(m.id, sizeof(m.id), "%s", bench_mailbox);
    m.name = (char *)"bench";
    m.description = (char *)"";
    m.active = true;
    m.accept_journal = true;
    m.accept_proxy = true;
    if (mg_vault_keys_new("bench-password", crypto_pwhash_OPSLIMIT_MIN,
                          crypto_pwhash_MEMLIMIT_MIN, m.pk, &m.wraps[0],
                          &err) != MG_OK)
        bench_die("keys", err);
    m.nwraps = 1;
    memset(&setup, 0, sizeof(setup));
    setup.m = &m;
    setup.nids =
        2 * (uint64_t)bench_count + prefill_delete + 16; /* pair: two modes */
    setup.op.apply = bench_setup_apply;
    if (mg_store_run(bench_store, &setup.op) != MG_OK)
        bench_die("set-up", setup.op.error);
    bench_next_id = setup.first;
}

struct bench_del {
    struct mg_store_op op;
    uint64_t first, n;
};

static int
bench_del_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct bench_del *d = (struct bench_del *)op;

    for (uint64_t i = 0; i < d->n; i++) {
        const char *err = NULL;
        int r = mg_rec_msg_delete(st, txn, bench_mailbox, d->first + i, &err);

        if (r != MG_OK && r != MG_DECLINED) {
            snprintf(op->error, sizeof(op->error), "%s", err ? err : "?");
            return r;
        }
    }
    return MG_OK;
}

/* Fill with `n` messages and delete them all: the run that follows
 * reuses freed pages, as a gateway does once archivers drain it. */
static void
bench_churn(uint64_t n, bool keep)
{
    uint64_t first = bench_next_id;
    const char *mode = bench_mode;
    unsigned count = bench_count;
    struct bench_del del;

    bench_mode = "store";
    bench_count = (unsigned)n;
    bench_run_threads((unsigned)n);
    memset(&del, 0, sizeof(del));
    del.first = first;
    del.n = n;
    del.op.apply = bench_del_apply;
    if (keep)
        del.n = 0;
    if (mg_store_run(bench_store, &del.op) != MG_OK)
        bench_die("delete", del.op.error);
    bench_mode = mode;
    bench_count = count;
}

int
main(int argc, char **argv)
{
    uint64_t prefill = 0;
    bool keep = false;
    const char *err = NULL;
    double t0, secs;

    if (argc < 6) {
        fprintf(
            stderr,
            "usage: %s DIR store|raw|pair|commit|fsync|stream|gcm|vault|"
            "vault2|vault3|seal|cipher SIZE WRITERS COUNT [PREFILL [keep]]\n",
            argv[0]);
        return 2;
    }
    bench_dir = argv[1];
    bench_mode = argv[2];
    bench_size = strtoull(argv[3], NULL, 10);
    bench_writers = (unsigned)strtoul(argv[4], NULL, 10);
    bench_count = (unsigned)strtoul(argv[5], NULL, 10);
    if (argc > 6)
        prefill = strtoull(argv[6], NULL, 10);
    if (argc > 7)
        keep = strcmp(argv[7], "keep") == 0;
    if (bench_writers == 0 || bench_count < bench_writers)
        bench_die("arguments", "need WRITERS >= 1 and COUNT >= WRITERS");
    mg_log_setup("mg-store-bench", MG_LOG_WARNING, MG_LOGT_STDERR);
    if (mg_vault_init(4, &err) != MG_OK)
        bench_die("vault", err);
    bench_rmtree(bench_dir);
    if (mkdir(bench_dir, 0700) != 0)
        bench_die(bench_dir, strerror(errno));
    bench_aes = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (bench_aes == NULL)
        bench_die("gcm", "OpenSSL has no AES-256-GCM");
    bench_body = mg_xmalloc(bench_size ? bench_size : 1);
    randombytes_buf(bench_body, bench_size);
    if (strcmp(bench_mode, "store") == 0 || strcmp(bench_mode, "raw") == 0 ||
        strcmp(bench_mode, "commit") == 0 || strcmp(bench_mode, "pair") == 0) {
        bench_prepare(prefill);
        if (prefill > 0)
            bench_churn(prefill, keep);
    } else if (strcmp(bench_mode, "fsync") == 0) {
        char *q = mg_xasprintf("%s/store", bench_dir);

        mkdir(q, 0700);
        free(q);
    } else if (strncmp(bench_mode, "vault", 5) == 0 ||
               strcmp(bench_mode, "seal") == 0 ||
               strcmp(bench_mode, "cipher") == 0) {
        uint8_t sk[32];

        crypto_box_keypair(bench_pk, sk);
        sodium_memzero(sk, sizeof(sk));
        bench_senders = mg_vault_senders_new(MG_VAULT_SENDER_LIFETIME,
                                             MG_VAULT_SENDER_MESSAGES,
                                             MG_VAULT_SENDER_MAILBOXES);
    } else if (strcmp(bench_mode, "stream") != 0 &&
               strcmp(bench_mode, "gcm") != 0) {
        bench_die("mode", "store, raw, commit, fsync, stream, gcm, vault, "
                          "vault2, vault3, seal, cipher or pair");
    }
    if (strcmp(bench_mode, "cipher") == 0 || strcmp(bench_mode, "pair") == 0) {
        static const char *const cipher[] = {"stream", "gcm", "vault2",
                                             "vault3", "seal"};
        static const char *const pair[] = {"store", "raw"};
        unsigned counts[] = {bench_count, bench_count, bench_count, bench_count,
                             5000};
        bool is_pair = strcmp(bench_mode, "pair") == 0;

        if (bench_count < 10 * bench_writers)
            bench_die("arguments", "turns need COUNT >= 10 x WRITERS");
        bench_turns(is_pair ? pair : cipher, is_pair ? 2 : 5, counts,
                    prefill == 0 ? ""
                    : keep       ? " grown=1"
                                 : " steady=1");
        if (bench_store != NULL)
            mg_store_close(bench_store);
        mg_vault_senders_free(bench_senders);
        bench_rmtree(bench_dir);
        free(bench_body);
        return 0;
    }

    t0 = bench_now();
    bench_run_threads(bench_count);
    secs = bench_now() - t0;
    printf("mode=%s size=%zu writers=%u msgs=%u%s%s secs=%.3f msgs/s=%.1f "
           "MB/s=%.1f\n",
           bench_mode, bench_size, bench_writers, bench_count,
           prefill == 0 ? ""
           : keep       ? " grown=1"
                        : " steady=1",
           bench_alg_tag(), secs, bench_count / secs,
           (double)bench_count * (double)bench_size / secs / 1e6);
    if (bench_store != NULL)
        mg_store_close(bench_store);
    mg_vault_senders_free(bench_senders);
    bench_rmtree(bench_dir);
    free(bench_body);
    EVP_CIPHER_free(bench_aes);
    return 0;
}
