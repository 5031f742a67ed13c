/*
 * tests/modules/testline.c -- a line protocol used only by the integration
 * tests (tests/integration). It drives every part of the connection API a
 * protocol module needs: greeting, command lines with a length limit,
 * STARTTLS, multi-line replies, timers, the worker pool, timeouts and
 * graceful shutdown.
 *
 * Built out of tree against the installed <mailgate/module.h> only (see
 * Makefile.ext), so it has no config.h: it is the model of a third-party
 * module and must not depend on anything from core/.
 *
 * Protocol (commands case-insensitive, replies end with CRLF):
 *   greeting  "220 <greeting>" (+ " (tls)" on an implicit-TLS listener)
 *   PING → "250 PONG"         ECHO <text> → "250 <text>"   NOOP → "250 ok"
 *   STARTTLS → "220 ready to start TLS", then the handshake
 *   INFO → multi-line reply: addr, port, proxied, tls, sni, id, listener
 *   SLEEP <ms> → "250 slept <ms>" after <ms> (commands wait meanwhile)
 *   WORK <n> → "250 worked <hash>" computed on the worker pool
 *   QUIT → "221 bye"          anything else → "500 unknown command"
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

/* Input buffered while a command is pending before reading is paused. */
#define TL_PENDING_INPUT_MAX 65536
/* Errors before the session is closed. */
#define TL_MAX_ERRORS 10
#define TL_SLEEP_MAX  600000
#define TL_WORK_MAX   100000000

/** What a session waits for before it reads its next command. */
enum tl_pending {
    TL_IDLE = 0,
    TL_SLEEP,
    TL_WORK,
};

struct tl_state;

/** One connection. Freed exactly when the module closes the conn. */
struct tl_session {
    struct tl_session *next, *prev;
    struct tl_state *st;
    struct mg_conn *c;
    uint64_t id;
    bool starttls_offered; /* accepted on a starttls listener */
    bool paused;
    bool blocked; /* output backlog: wait for MG_CONN_DRAINED */
    bool closing; /* shutdown asked while busy: close after the reply */
    enum tl_pending pending;
    uint64_t timer;
    uint64_t sleep_ms;
    unsigned errors;
};

/** The module's state in one generation. */
struct tl_state {
    struct mg_modctx *m;
    char *greeting;
    uint32_t idle_ms;
    uint64_t session_ms; /* whole-session limit, 0 = none */
    size_t line_max;
    struct tl_session *sessions;
    bool stopped;
};

/** A WORK job: carries the conn id, never a pointer into the session. */
struct tl_job {
    struct tl_state *st;
    uint64_t conn_id;
    uint64_t n;
    uint64_t result;
};

/* One API table per process: the same for every generation. */
static const struct mg_core_api *tl_api;

static void tl_process(struct tl_session *s);

static char *
tl_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p == NULL) {
        abort();
    }
    memcpy(p, s, n);
    return p;
}

/* Case-insensitive compare of a counted word with a C string. */
static bool
tl_word_is(const char *w, size_t len, const char *s)
{
    size_t i;

    for (i = 0; i < len; i++) {
        char a = w[i], b = s[i];

        if (b == '\0') {
            return false;
        }
        if (a >= 'a' && a <= 'z') {
            a = (char)(a - 'a' + 'A');
        }
        if (b >= 'a' && b <= 'z') {
            b = (char)(b - 'a' + 'A');
        }
        if (a != b) {
            return false;
        }
    }
    return s[len] == '\0';
}

/* A decimal number in [0, max]; false for anything else. */
static bool
tl_parse_uint(const char *p, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (len == 0 || len > 12) {
        return false;
    }
    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* Copy text for a reply line, replacing control bytes (replies must not
 * carry CR, LF or NUL). */
static void
tl_clean(char *dst, size_t size, const char *src)
{
    size_t i;

    for (i = 0; src != NULL && src[i] != '\0' && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}

static struct tl_session *
tl_session_find(struct tl_state *st, uint64_t id)
{
    struct tl_session *s;

    for (s = st->sessions; s != NULL; s = s->next) {
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

static void
tl_session_free(struct tl_session *s)
{
    if (s->timer != 0) {
        tl_api->timer_cancel(s->timer);
        s->timer = 0;
    }
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        s->st->sessions = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    free(s);
}

/* Close the conn and free the session: close() delivers no more events. */
static void
tl_close(struct tl_session *s)
{
    struct mg_conn *c = s->c;

    tl_session_free(s);
    tl_api->conn->close(c);
}

/* The pending command answered: honour a shutdown that came meanwhile,
 * otherwise go on with the lines that arrived. */
static void
tl_pending_done(struct tl_session *s)
{
    s->pending = TL_IDLE;
    if (s->closing || tl_api->conn->shutting_down(s->c)) {
        tl_api->conn->printf(s->c, "421 shutting down\r\n");
        tl_close(s);
        return;
    }
    if (s->paused) {
        s->paused = false;
        if (!s->blocked) {
            tl_api->conn->pause_read(s->c, false);
        }
    }
    tl_process(s);
}

static void
tl_sleep_fired(void *arg)
{
    struct tl_session *s = arg;

    s->timer = 0;
    tl_api->conn->printf(s->c, "250 slept %" PRIu64 "\r\n", s->sleep_ms);
    tl_pending_done(s);
}

/* Worker thread: something CPU-ish (FNV-1a over a counter). */
static void
tl_work_run(void *arg)
{
    struct tl_job *job = arg;
    uint64_t h = 0xcbf29ce484222325u, i;

    for (i = 0; i < job->n; i++) {
        h ^= i & 0xff;
        h *= 0x100000001b3u;
    }
    job->result = h;
}

/* Loop: the conn may be gone, so look the session up by id. */
static void
tl_work_done(void *arg)
{
    struct tl_job *job = arg;
    struct tl_session *s = NULL;

    if (tl_api->conn->find(job->conn_id) != NULL) {
        s = tl_session_find(job->st, job->conn_id);
    }
    if (s != NULL && s->pending == TL_WORK) {
        tl_api->conn->printf(s->c, "250 worked %016" PRIx64 "\r\n",
                             job->result);
        free(job);
        tl_pending_done(s);
        return;
    }
    free(job);
}

static void
tl_info(struct tl_session *s)
{
    const struct mg_peer *p = tl_api->conn->peer(s->c);
    char buf[7][320], a[128], b[128];
    const char *lines[7];
    struct mg_reply r;
    size_t i;

    tl_clean(a, sizeof(a), p->addr);
    snprintf(buf[0], sizeof(buf[0]), "addr %s", a);
    snprintf(buf[1], sizeof(buf[1]), "port %d", p->port);
    snprintf(buf[2], sizeof(buf[2]), "proxied %s", p->proxied ? "yes" : "no");
    if (p->tls) {
        tl_clean(a, sizeof(a), p->tls_version ? p->tls_version : "?");
        tl_clean(b, sizeof(b), p->tls_cipher ? p->tls_cipher : "?");
        snprintf(buf[3], sizeof(buf[3]), "tls %s %s", a, b);
    } else {
        snprintf(buf[3], sizeof(buf[3]), "tls none");
    }
    tl_clean(a, sizeof(a), p->sni != NULL ? p->sni : "-");
    snprintf(buf[4], sizeof(buf[4]), "sni %s", a);
    snprintf(buf[5], sizeof(buf[5]), "id %" PRIu64, p->id);
    tl_clean(a, sizeof(a), p->listener);
    snprintf(buf[6], sizeof(buf[6]), "listener %s", a);

    for (i = 0; i < 7; i++) {
        lines[i] = buf[i];
    }
    r.code = 250;
    r.ecode = NULL;
    r.nlines = 7;
    r.lines = lines;
    tl_api->conn->write_reply(s->c, &r);
}

/* An error reply; false when the session was closed for too many. */
static bool
tl_error(struct tl_session *s, const char *reply)
{
    tl_api->conn->printf(s->c, "%s\r\n", reply);
    if (++s->errors >= TL_MAX_ERRORS) {
        tl_api->conn->printf(s->c, "421 too many errors\r\n");
        tl_close(s);
        return false;
    }
    return true;
}

/* One command line. Returns false when the session must stop reading:
 * it was closed, is waiting for a timer or job, or starts TLS. */
static bool
tl_command(struct tl_session *s, const char *line, size_t len)
{
    const struct mg_conn_api *ca = tl_api->conn;
    const char *arg = NULL;
    size_t vlen, alen = 0, i;
    char vlog[17];

    if (memchr(line, '\0', len) != NULL) {
        return tl_error(s, "500 NUL byte in command");
    }
    for (vlen = 0; vlen < len && line[vlen] != ' '; vlen++) {
    }
    if (vlen < len) {
        arg = line + vlen + 1;
        alen = len - vlen - 1;
    }
    for (i = 0; i < vlen && i < sizeof(vlog) - 1; i++) {
        unsigned char ch = (unsigned char)line[i];

        vlog[i] = (ch < 0x21 || ch > 0x7e) ? '?' : (char)ch;
    }
    vlog[i] = '\0';
    ca->log(s->c, MG_LOG_DEBUG, "command %s", vlog);

    if (tl_word_is(line, vlen, "PING") && arg == NULL) {
        ca->printf(s->c, "250 PONG\r\n");
    } else if (tl_word_is(line, vlen, "NOOP")) {
        ca->printf(s->c, "250 ok\r\n");
    } else if (tl_word_is(line, vlen, "ECHO")) {
        ca->printf(s->c, "250 %.*s\r\n", (int)alen, arg != NULL ? arg : "");
    } else if (tl_word_is(line, vlen, "INFO") && arg == NULL) {
        tl_info(s);
    } else if (tl_word_is(line, vlen, "QUIT") && arg == NULL) {
        ca->printf(s->c, "221 bye\r\n");
        tl_close(s);
        return false;
    } else if (tl_word_is(line, vlen, "STARTTLS") && arg == NULL) {
        if (ca->peer(s->c)->tls) {
            return tl_error(s, "503 already in TLS");
        }
        if (!s->starttls_offered) {
            return tl_error(s, "502 STARTTLS not offered");
        }
        ca->printf(s->c, "220 ready to start TLS\r\n");
        if (ca->starttls(s->c) != MG_OK) {
            tl_close(s);
        }
        /* the rest of the input came before the handshake: never read */
        return false;
    } else if (tl_word_is(line, vlen, "SLEEP")) {
        if (arg == NULL ||
            !tl_parse_uint(arg, alen, TL_SLEEP_MAX, &s->sleep_ms)) {
            return tl_error(s, "501 SLEEP needs milliseconds 0..600000");
        }
        s->pending = TL_SLEEP;
        s->timer = tl_api->timer_add(s->st->m, s->sleep_ms, tl_sleep_fired, s);
        return false;
    } else if (tl_word_is(line, vlen, "WORK")) {
        struct tl_job *job;
        uint64_t n;

        if (arg == NULL || !tl_parse_uint(arg, alen, TL_WORK_MAX, &n)) {
            return tl_error(s, "501 WORK needs a count 0..100000000");
        }
        job = calloc(1, sizeof(*job));
        if (job == NULL) {
            abort();
        }
        job->st = s->st;
        job->conn_id = s->id;
        job->n = n;
        if (tl_api->work_submit(s->st->m, tl_work_run, tl_work_done, job) !=
            MG_OK) {
            free(job);
            ca->printf(s->c, "451 worker pool refused the job\r\n");
            return true;
        }
        s->pending = TL_WORK;
        return false;
    } else {
        return tl_error(s, "500 unknown command");
    }
    return true;
}

/* Replies queued beyond this make the session wait (the core's high-water
 * mark: past it write() says MG_AGAIN and MG_CONN_DRAINED follows). */
#define TL_OUTPUT_MAX (256 * 1024)

/* Handle the buffered lines until none is left or the session waits. */
static void
tl_process(struct tl_session *s)
{
    const char *line;
    size_t len, queued;
    enum mg_eol eol;

    for (;;) {
        int rc;

        if (s->pending != TL_IDLE) {
            /* keep reading for EOF, but bound what piles up meanwhile */
            tl_api->conn->peek(s->c, &line, &queued);
            if (!s->paused && queued > TL_PENDING_INPUT_MAX) {
                s->paused = true;
                tl_api->conn->pause_read(s->c, true);
            }
            return;
        }
        if (tl_api->conn->write_queued(s->c) > TL_OUTPUT_MAX) {
            /* the client does not read: stop taking commands until the
             * core says the backlog drained (back-pressure) */
            s->blocked = true;
            tl_api->conn->pause_read(s->c, true);
            return;
        }
        rc = tl_api->conn->getline(s->c, &line, &len, &eol);
        if (rc == MG_AGAIN) {
            return;
        }
        if (rc == MG_DECLINED) {
            if (!tl_error(s, "500 line too long")) {
                return;
            }
            continue;
        }
        if (rc != MG_OK) {
            tl_close(s);
            return;
        }
        if (!tl_command(s, line, len)) {
            return;
        }
    }
}

static void
tl_handler(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    struct tl_session *s = arg;

    (void)c;
    switch (ev) {
    case MG_CONN_READABLE:
        tl_process(s);
        break;
    case MG_CONN_TLS_READY:
        /* the client speaks first after the handshake */
        tl_api->conn->log(s->c, MG_LOG_DEBUG, "TLS ready");
        break;
    case MG_CONN_TIMEOUT:
        tl_api->conn->printf(s->c, "421 idle timeout\r\n");
        tl_close(s);
        break;
    case MG_CONN_EOF:
    case MG_CONN_ERROR:
        tl_close(s);
        break;
    case MG_CONN_DRAINED:
        if (s->blocked) {
            s->blocked = false;
            if (!s->paused) {
                tl_api->conn->pause_read(s->c, false);
            }
            tl_process(s);
        }
        break;
    }
}

static void
tl_on_accept(struct mg_conn *c, const struct config_setting_t *entry, void *arg)
{
    struct tl_state *st = arg;
    const struct mg_peer *p = tl_api->conn->peer(c);
    struct tl_session *s = calloc(1, sizeof(*s));
    const char *tls = "none";

    if (s == NULL) {
        abort();
    }
    if (entry != NULL) {
        tls = tl_api->setting_string(entry, "tls", "none");
    }
    s->st = st;
    s->c = c;
    s->id = p->id;
    s->starttls_offered = strcmp(tls, "starttls") == 0;
    s->next = st->sessions;
    if (s->next != NULL) {
        s->next->prev = s;
    }
    st->sessions = s;

    tl_api->conn->set_handler(c, tl_handler, s);
    tl_api->conn->set_line_max(c, st->line_max);
    tl_api->conn->set_timeouts(c, st->idle_ms, st->session_ms);
    tl_api->conn->printf(c, "220 %s%s\r\n", st->greeting,
                         p->tls ? " (tls)" : "");
}

static void
tl_on_shutdown(struct mg_conn *c, void *arg)
{
    struct tl_state *st = arg;
    struct tl_session *s = tl_session_find(st, tl_api->conn->peer(c)->id);

    if (s == NULL) {
        tl_api->conn->close(c);
        return;
    }
    if (s->pending != TL_IDLE) {
        s->closing = true;
        return;
    }
    tl_api->conn->printf(c, "421 shutting down\r\n");
    tl_close(s);
}

static const char *const tl_alpn[] = {"testline", NULL};

static const struct mg_listener_ops tl_ops = {
    .protocol = "testline",
    .alpn = tl_alpn,
    .refuse_line = "421 too many connections",
    .settings = NULL,
    .on_accept = tl_on_accept,
    .on_shutdown = tl_on_shutdown,
};

static const struct mg_listen_default tl_defaults[] = {
    {"127.0.0.1", 2600, MG_TLS_NONE},
    {NULL, 0, 0},
};

static const struct mg_setting tl_settings[] = {
    {.name = "greeting", .type = MG_SET_STRING},
    {.name = "idle_timeout", .type = MG_SET_INT, .min = 1, .max = 3600000},
    {.name = "session_timeout", .type = MG_SET_INT, .min = 0, .max = 86400000},
    {.name = "line_max", .type = MG_SET_INT, .min = 16, .max = 65536},
    {.name = NULL},
};

static void
tl_release(void *state)
{
    struct tl_state *st = state;

    /* conns are gone by now; drop anything the core never told us about */
    while (st->sessions != NULL) {
        tl_session_free(st->sessions);
    }
    free(st->greeting);
    free(st);
}

static int
tl_configure(struct mg_modctx *m, const struct mg_core_api *api,
             const struct config_setting_t *sect, void **state_r,
             const char **error_r)
{
    struct tl_state *st;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api) ||
        api->conn->size < sizeof(struct mg_conn_api)) {
        *error_r = "testline: core API too old";
        return MG_ERROR;
    }
    tl_api = api;
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        abort();
    }
    st->m = m;
    st->greeting =
        tl_strdup(api->setting_string(sect, "greeting", "testline ready"));
    st->idle_ms = (uint32_t)api->setting_int(sect, "idle_timeout", 300000);
    st->session_ms = (uint64_t)api->setting_int(sect, "session_timeout", 0);
    st->line_max = (size_t)api->setting_int(sect, "line_max", 1002);
    if (api->listen(m, sect, tl_defaults, &tl_ops, st, error_r) != MG_OK) {
        tl_release(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;
}

static int
tl_start(void *state, const char **error_r)
{
    struct tl_state *st = state;

    (void)error_r;
    tl_api->log(st->m, MG_LOG_DEBUG, "started");
    return MG_OK;
}

static void
tl_stop(void *state)
{
    struct tl_state *st = state;

    st->stopped = true;
    tl_api->log(st->m, MG_LOG_DEBUG, "stopped");
}

MG_MODULE_EXPORT(testline) = {
    MG_MODULE_V1,
    .name = "testline",
    .description = "line protocol for the integration tests",
    .settings = tl_settings,
    .configure = tl_configure,
    .start = tl_start,
    .stop = tl_stop,
    .release = tl_release,
};
