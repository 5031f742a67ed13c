/* tests/fuzz/fuzz_session.c -- libFuzzer target for whole SMTP and POP3
 * sessions through the real core, store and modules (catalog item 24a)
 *
 * Once per process the core starts as mailgated does, from a generated
 * configuration in a temporary directory (on /dev/shm when there is one:
 * the store's fsyncs cost nothing there): the store with one mailbox
 * (FS_MAILBOX, password FS_PASSWORD, Argon2id at its minimum) holding two
 * messages, one worker thread, and the real smtp.so and pop3.so
 * (dlopen'd from the build tree) with a plaintext listener each. The
 * listeners are bound but never accept: every input is one session over
 * a socketpair whose server end goes to mg_conn_accepted(), as if the
 * listener had accepted it.
 *
 * Input: byte 0 chooses the module (odd: smtp, even: pop3; "S" and "P"
 * read well), byte 1 how the rest is written: byte 1 % 32 = 0 (" "): line
 * by line, each after the replies to the one before, as a client that
 * waits; 31 ("?"): all at once; n: in pieces of n bytes (a client that
 * pipelines, or a slow link). After every piece that ends a line the
 * loop runs until the session is quiet: the loop has nothing pending, a
 * no-op job went through the (single) worker thread and a no-op commit
 * through the store's writer, so every completion queued before has been
 * delivered. Then the write side is shut, the session must end, and
 * everything the server sent is checked: CRLF line ends only, reply lines
 * of at most 512 octets with a valid SMTP code or POP3 status, multi-line
 * SMTP replies with one code, nothing after "221" or POP3's QUIT reply.
 * A violated invariant abort()s. Messages a session added or deleted are
 * put back, so every input starts from the same mailbox.
 *
 * The store is compiled into this program with MG_FUZZ_KDF_MIN (the
 * dummy key of an unknown mailbox costs the minimum Argon2id too).
 * Built with -DMG_LIBFUZZER by `make fuzz-session`; without it (make
 * check) main() replays the files named on the command line, then stops
 * everything, so that LeakSanitizer sees what a session left behind.
 */
#include "config.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "mg.h"
#include "store.h"
#include "fuzz_replay.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);

struct ev_loop *mg_loop;

#define FS_MAILBOX   "fuzzbox1"
#define FS_PASSWORD  "fuzz-pass-word-k7mq"
#define FS_BASELINE  2
#define FS_ROUNDS    64 /* settle rounds at most (a round: loop + barriers) */
#define FS_REPLY_MAX 512

static char fs_dir[256];
static struct mg_generation *fs_gen;
static struct mg_listener *fs_smtp, *fs_pop3;
static struct mg_store *fs_store;
static uint64_t fs_base[FS_BASELINE]; /* the mailbox's messages */
static int fs_client = -1;            /* our end of the session */
static bool fs_eof;                   /* the server closed its end */
static char *fs_out;                  /* what the server sent */
static size_t fs_outlen, fs_outcap;

static _Noreturn void
fs_die(const char *what, const char *err)
{
    (void)fprintf(stderr, "fuzz_session: %s: %s\n", what,
                  err != NULL ? err : "failed");
    abort();
}

/* ------------------------------------------------------------ store */

static int
fs_noop_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    (void)st;
    (void)txn;
    (void)op;
    return MG_OK;
}

struct fs_mbox_op {
    struct mg_store_op op;
    struct mg_mailbox *m;
};

static int
fs_mbox_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct fs_mbox_op *o = (struct fs_mbox_op *)op;
    const char *err = NULL;
    int r = mg_rec_mailbox_put(st, txn, o->m, &err);

    if (r != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s", err ? err : "?");
    return r;
}

static void
fs_mailbox_create(void)
{
    struct mg_mailbox m;
    struct fs_mbox_op o;
    const char *err = NULL;

    memset(&m, 0, sizeof(m));
    snprintf(m.id, sizeof(m.id), "%s", FS_MAILBOX);
    m.name = mg_xstrdup("fuzz");
    m.description = mg_xstrdup("");
    m.active = true;
    m.created = (uint64_t)time(NULL);
    m.accept_journal = true;
    m.accept_proxy = true;
    if (mg_vault_keys_new(FS_PASSWORD, crypto_pwhash_OPSLIMIT_MIN,
                          crypto_pwhash_MEMLIMIT_MIN, m.pk, &m.wraps[0],
                          &err) != MG_OK)
        fs_die("keys", err);
    m.nwraps = 1;
    memset(&o, 0, sizeof(o));
    o.op.apply = fs_mbox_apply;
    o.m = &m;
    if (mg_store_run(fs_store, &o.op) != MG_OK)
        fs_die("mailbox", o.op.error);
    mg_mailbox_clear(&m);
}

struct fs_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int status;
};

static void
fs_commit_done(struct mg_store_writer *w, int status, bool temporary,
               const char *error, void *arg)
{
    struct fs_wait *fw = arg;

    (void)w;
    (void)temporary;
    (void)error;
    pthread_mutex_lock(&fw->lock);
    fw->done = true;
    fw->status = status;
    pthread_cond_signal(&fw->cond);
    pthread_mutex_unlock(&fw->lock);
}

/* One small message (lines that look like no POP3 status); its id. */
static uint64_t
fs_message_store(unsigned n)
{
    static const char *rcpts[] = {FS_MAILBOX "@example.org"};
    const struct mg_envelope env = {
        .source = "test",
        .sender = "sender@example.com",
        .rcpts = (char **)rcpts,
        .nrcpts = 1,
    };
    const char *ids[1] = {FS_MAILBOX}, *err = NULL;
    struct fs_wait fw = {.lock = PTHREAD_MUTEX_INITIALIZER,
                         .cond = PTHREAD_COND_INITIALIZER};
    struct mg_store_writer *w;
    char body[512];
    int len;
    uint64_t id;

    len = snprintf(body, sizeof(body),
                   "From: sender@example.com\r\nTo: %s@example.org\r\n"
                   "Subject: fuzz %u\r\n\r\nline one\r\n..dot line\r\n"
                   "line three\r\n",
                   FS_MAILBOX, n);
    w = mg_store_writer_begin(fs_store, ids, 1, &env, &err);
    if (w == NULL)
        fs_die("writer", err);
    if (mg_store_writer_write(w, body, (size_t)len) != MG_OK)
        fs_die("writer", "write");
    mg_store_writer_commit(w, true, fs_commit_done, &fw);
    pthread_mutex_lock(&fw.lock);
    while (!fw.done)
        pthread_cond_wait(&fw.cond, &fw.lock);
    pthread_mutex_unlock(&fw.lock);
    if (fw.status != MG_OK)
        fs_die("commit", "failed");
    id = mg_store_writer_ids(w)[0];
    mg_store_writer_free(w);
    return id;
}

static bool
fs_is_base(uint64_t id)
{
    for (size_t i = 0; i < FS_BASELINE; i++) {
        if (fs_base[i] == id)
            return true;
    }
    return false;
}

struct fs_reset_op {
    struct mg_store_op op;
    bool present[FS_BASELINE];
};

/* Delete what a session added; note which of the baseline are left. */
static int
fs_reset_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct fs_reset_op *o = (struct fs_reset_op *)op;
    struct mg_msg_ref *v = NULL;
    const char *err = NULL;
    size_t n = 0;
    int r = mg_rec_msg_list(st, txn, FS_MAILBOX, false, &v, &n, &err);

    for (size_t i = 0; r == MG_OK && i < n; i++) {
        bool base = false;

        for (size_t k = 0; k < FS_BASELINE; k++) {
            if (fs_base[k] == v[i].id && v[i].state == MG_MSG_VISIBLE) {
                o->present[k] = true;
                base = true;
            }
        }
        if (!base)
            r = mg_rec_msg_delete(st, txn, FS_MAILBOX, v[i].id, &err);
    }
    free(v);
    if (r != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s", err ? err : "?");
    return r;
}

/* Back to the baseline mailbox if the session changed it. */
static void
fs_mailbox_reset(void)
{
    struct mg_msg_ref *v = NULL;
    const char *err = NULL;
    MDB_txn *txn;
    size_t n = 0;
    bool same;
    struct fs_reset_op o;

    if (mg_store_read_begin(fs_store, &txn, &err) != MG_OK)
        fs_die("read", err);
    if (mg_rec_msg_list(fs_store, txn, FS_MAILBOX, false, &v, &n, &err) !=
        MG_OK)
        fs_die("list", err);
    mg_store_read_end(fs_store, txn);
    same = n == FS_BASELINE;
    for (size_t i = 0; same && i < n; i++)
        same = fs_is_base(v[i].id) && v[i].state == MG_MSG_VISIBLE;
    free(v);
    if (same)
        return;
    memset(&o, 0, sizeof(o));
    o.op.apply = fs_reset_apply;
    if (mg_store_run(fs_store, &o.op) != MG_OK)
        fs_die("reset", o.op.error);
    for (size_t k = 0; k < FS_BASELINE; k++) {
        if (!o.present[k])
            fs_base[k] = fs_message_store((unsigned)k);
    }
}

/* ------------------------------------------------------------ start */

static int
fs_free_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
        fs_die("port", strerror(errno));
    close(fd);
    return ntohs(sin.sin_port);
}

static int
fs_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void
fs_cleanup_dir(void)
{
    if (fs_dir[0] != '\0')
        (void)nftw(fs_dir, fs_rm, 16, FTW_DEPTH | FTW_PHYS);
    fs_dir[0] = '\0';
}

static void
fs_write_config(const char *path)
{
    FILE *f = fopen(path, "w");
    const char *smtp = getenv("MG_FUZZ_SMTP_SO");
    const char *pop3 = getenv("MG_FUZZ_POP3_SO");

    if (smtp == NULL)
        smtp = MG_FUZZ_SMTP_SO;
    if (pop3 == NULL)
        pop3 = MG_FUZZ_POP3_SO;
    if (f == NULL)
        fs_die(path, strerror(errno));
    fprintf(f,
            "data_dir = \"%s/data\";\n"
            "email_domain = \"example.org\";\n"
            "log_level = \"%s\";\n"
            "worker_threads = 1;\n"
            "kdf_concurrency = 1;\n"
            "modules = (\n"
            "  { name = \"smtp\"; path = \"%s\";\n"
            "    listen = ( { address = \"127.0.0.1\"; port = %d; } ); },\n"
            "  { name = \"pop3\"; path = \"%s\";\n"
            "    auth_failure_delay = 0;\n"
            "    auth_throttle_exempt = [ \"127.0.0.0/8\" ];\n"
            "    listen = ( { address = \"127.0.0.1\"; port = %d;\n"
            "                 allow_plaintext_auth = true; } ); }\n"
            ");\n",
            fs_dir, getenv("MG_FUZZ_DEBUG") != NULL ? "debug" : "error", smtp,
            fs_free_port(), pop3, fs_free_port());
    if (fclose(f) != 0)
        fs_die(path, strerror(errno));
}

static void
fs_start(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    struct mg_config *cfg;
    const char *err = NULL;
    char path[300];

    signal(SIGPIPE, SIG_IGN);
    mg_log_setup("fuzz_session", MG_LOG_ERROR, MG_LOGT_STDERR);
    mg_loop = ev_default_loop(EVFLAG_AUTO);
    snprintf(fs_dir, sizeof(fs_dir), "%s/mg-fuzz-session.XXXXXX", base);
    if (mkdtemp(fs_dir) == NULL)
        fs_die(fs_dir, strerror(errno));
    atexit(fs_cleanup_dir);
    snprintf(path, sizeof(path), "%s/data", fs_dir);
    if (mkdir(path, 0700) != 0)
        fs_die(path, strerror(errno));
    snprintf(path, sizeof(path), "%s/mailgate.conf", fs_dir);
    fs_write_config(path);

    /* as main.c's main_start(): the store before the modules configure */
    if (mg_config_load(path, NULL, &cfg, &err) != MG_OK)
        fs_die("config", err);
    mg_log_setup("fuzz_session", cfg->s.log_level, MG_LOGT_STDERR);
    if (mg_store_api_open(&cfg->s, &err) != MG_OK)
        fs_die("store", err);
    mg_config_free(cfg);
    fs_store = mg_store_api_store();
    fs_mailbox_create();
    for (unsigned k = 0; k < FS_BASELINE; k++)
        fs_base[k] = fs_message_store(k);
    if (mg_generation_build(path, NULL, &fs_gen, &err) != MG_OK)
        fs_die("generation", err);
    if (mg_generation_start(fs_gen, NULL, "start", &err) != MG_OK)
        fs_die("start", err);
    /* bound, but nothing is accepted: the sessions come from socketpairs */
    mg_listeners_stop(fs_gen);
    for (struct mg_listener *l = fs_gen->listeners; l != NULL; l = l->next) {
        if (strcmp(l->ops->protocol, "smtp") == 0)
            fs_smtp = l;
        else if (strcmp(l->ops->protocol, "pop3") == 0)
            fs_pop3 = l;
    }
    if (fs_smtp == NULL || fs_pop3 == NULL)
        fs_die("listeners", "smtp or pop3 missing");
    if (mg_workers_start(mg_loop, fs_gen->config->s.worker_threads, &err) !=
        MG_OK)
        fs_die("workers", err);
}

#ifndef MG_LIBFUZZER
/* As main.c at exit: whatever a session left is a leak at this point. */
static void
fs_stop(void)
{
    mg_conns_close_all();
    mg_generation_stop(fs_gen);
    mg_store_api_close();
    mg_workers_stop();
    mg_api_timers_free();
    mg_module_cache_reset();
    ev_loop_destroy(mg_loop);
    free(fs_out);
    fs_cleanup_dir();
}
#endif

/* ------------------------------------------------------------ session */

static void
fs_read(void)
{
    while (fs_client >= 0 && !fs_eof) {
        ssize_t n;

        if (fs_outcap - fs_outlen < 4096) {
            fs_outcap = fs_outcap ? 2 * fs_outcap : 65536;
            fs_out = mg_xrealloc(fs_out, fs_outcap);
        }
        n = recv(fs_client, fs_out + fs_outlen, fs_outcap - fs_outlen, 0);
        if (n > 0) {
            fs_outlen += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            fs_eof = true; /* closed (or reset: the same to the checks) */
        return;
    }
}

/* Run what is ready now, reading replies as they come. */
static void
fs_drain(void)
{
    for (int i = 0; i < 3; i++) {
        ev_run(mg_loop, EVRUN_NOWAIT);
        fs_read();
    }
}

static void
fs_flag_done(void *arg)
{
    *(bool *)arg = true;
}

static void
fs_noop_work(void *arg)
{
    (void)arg;
}

/* Every job queued before has completed on the loop (one worker, FIFO);
 * every store op queued before is durable and its completion posted. */
static void
fs_barrier(void)
{
    struct mg_store_op op;
    bool done = false;

    if (mg_workers_submit(fs_noop_work, fs_flag_done, &done) == MG_OK) {
        while (!done)
            ev_run(mg_loop, EVRUN_ONCE);
    }
    memset(&op, 0, sizeof(op));
    op.apply = fs_noop_apply;
    if (mg_store_run(fs_store, &op) != MG_OK)
        fs_die("barrier", op.error);
}

/* Until a round changes nothing the client can see. */
static void
fs_settle(void)
{
    for (int round = 0; round < FS_ROUNDS; round++) {
        size_t before = fs_outlen;
        unsigned conns = mg_conns_count();
        bool eof = fs_eof;

        fs_drain();
        fs_barrier();
        fs_drain();
        if (fs_outlen == before && mg_conns_count() == conns && fs_eof == eof)
            return;
    }
}

/* ------------------------------------------------------------ checks */

static bool
fs_digits(const char *p)
{
    return p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' &&
           p[2] >= '0' && p[2] <= '9';
}

static void
fs_check_smtp(const char *out, size_t len)
{
    const char *p = out, *end = out + len;
    char cont[3] = {0}; /* code of an unfinished multi-line reply */
    bool in_multi = false;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n;

        FUZZ_CHECK(nl != NULL); /* the last line is complete */
        FUZZ_CHECK(nl > p && nl[-1] == '\r');
        n = (size_t)(nl + 1 - p); /* with CRLF */
        FUZZ_CHECK(n <= FS_REPLY_MAX);
        FUZZ_CHECK(memchr(p, '\r', n - 2) == NULL);
        FUZZ_CHECK(n >= 6 && fs_digits(p) && (p[3] == ' ' || p[3] == '-'));
        if (in_multi)
            FUZZ_CHECK(memcmp(cont, p, 3) == 0);
        in_multi = p[3] == '-';
        memcpy(cont, p, 3);
        if (memcmp(p, "221 ", 4) == 0)
            FUZZ_CHECK(nl + 1 == end); /* nothing after the goodbye */
        p = nl + 1;
    }
    FUZZ_CHECK(!in_multi);
}

static bool
fs_pop3_status(const char *p, size_t n)
{
    /* n without CRLF */
    return (n >= 3 && memcmp(p, "+OK", 3) == 0 && (n == 3 || p[3] == ' ')) ||
           (n >= 4 && memcmp(p, "-ERR", 4) == 0 && (n == 4 || p[4] == ' ')) ||
           (n >= 1 && p[0] == '+' && (n == 1 || p[1] == ' '));
}

/* Status lines, and the data of multi-line replies up to ".": the
 * mailbox's messages have no line that looks like a status. */
static void
fs_check_pop3(const char *out, size_t len)
{
    const char *p = out, *end = out + len;
    bool data = false, after_ok = false;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n;

        FUZZ_CHECK(nl != NULL);
        FUZZ_CHECK(nl > p && nl[-1] == '\r');
        n = (size_t)(nl - 1 - p); /* without CRLF */
        FUZZ_CHECK(memchr(p, '\r', n) == NULL);
        if (!data && after_ok && !fs_pop3_status(p, n))
            data = true; /* the first line of a multi-line reply */
        if (data) {
            if (n == 1 && p[0] == '.')
                data = false;
            after_ok = false;
        } else {
            FUZZ_CHECK(n + 2 <= FS_REPLY_MAX);
            FUZZ_CHECK(fs_pop3_status(p, n));
            after_ok = memcmp(p, "+OK", 3) == 0;
            if (n >= 15 && memcmp(p, "+OK Logging out", 15) == 0)
                FUZZ_CHECK(nl + 1 == end);
        }
        p = nl + 1;
    }
    FUZZ_CHECK(!data);
}

/* ------------------------------------------------------------ input */

static void
fs_send(const uint8_t *p, size_t n)
{
    while (n > 0 && !fs_eof) {
        ssize_t w = send(fs_client, p, n, MSG_NOSIGNAL);

        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return; /* the server closed: the rest is not read */
        fs_drain(); /* full: let the server read */
        fs_barrier();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(40000),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct mg_listener *l;
    size_t piece, off = 0;
    bool lines;
    bool exempt = false;
    int sv[2];

    if (size < 2)
        return 0;
    if (fs_gen == NULL)
        fs_start();
    l = (data[0] & 1) ? fs_smtp : fs_pop3;
    piece = data[1] % 32;
    lines = piece == 0;
    if (piece == 31)
        piece = 0;
    data += 2;
    size -= 2;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   sv) != 0)
        fs_die("socketpair", strerror(errno));
    fs_client = sv[1];
    fs_eof = false;
    fs_outlen = 0;
    FUZZ_CHECK(mg_conns_count() == 0);
    if (mg_limits_enter((struct sockaddr *)&sin, &fs_gen->config->s, l,
                        &exempt) != MG_OK)
        fs_die("limits", "refused");
    mg_conn_accepted(sv[0], (struct sockaddr *)&sin, sizeof(sin), l, exempt);
    fs_settle(); /* the greeting */

    while (off < size && !fs_eof) {
        size_t n = piece == 0 || size - off < piece ? size - off : piece;

        if (lines) {
            const uint8_t *nl = memchr(data + off, '\n', size - off);

            n = nl != NULL ? (size_t)(nl + 1 - (data + off)) : size - off;
        }

        fs_send(data + off, n);
        off += n;
        if (data[off - 1] == '\n' || off == size)
            fs_settle();
        else
            fs_drain();
    }
    /* the client is done: the session must end */
    shutdown(fs_client, SHUT_WR);
    fs_settle();
    FUZZ_CHECK(mg_conns_count() == 0);
    FUZZ_CHECK(fs_eof);
    close(fs_client);
    fs_client = -1;
    if (getenv("MG_FUZZ_DEBUG") != NULL)
        (void)fwrite(fs_out, 1, fs_outlen, stderr);

    if (l == fs_smtp)
        fs_check_smtp(fs_out, fs_outlen);
    else
        fs_check_pop3(fs_out, fs_outlen);
    fs_mailbox_reset();
    return 0;
}

/* libFuzzer: the modules are loaded before fuzzing starts, so that their
 * coverage counters are known from the first input */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fs_start();
    return 0;
}

#ifndef MG_LIBFUZZER
int
main(int argc, char **argv)
{
    int r = fuzz_replay_files(argc, argv);

    if (fs_gen != NULL)
        fs_stop();
    return r;
}
#endif
