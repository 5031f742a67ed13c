/*
 * tests/modules/hooktest.c -- a module that takes part in the smtp
 * engine's hooks, used only by tests/integration/test_smtp_hooks.py.
 *
 * Built out of tree against the installed headers only (Makefile.ext), like
 * testline.c: it is what a third-party module sees of doc/hooks.md. It has
 * no listeners; its settings choose what it does, and it reports through
 * api->log (the core prefixes "hooktest: ") for the tests to read back.
 *
 *   auth = true             smtp.auth: user "takeover" + password "secret"
 *                           -> MG_ACCEPT and a takeover: "235 2.7.0 taken
 *                           over", then every line is answered "250 echo
 *                           <line>" (QUIT: "221 2.0.0 hooktest bye");
 *                           "keep" + "secret" -> MG_ACCEPT, keep_engine;
 *                           "nohandler" -> MG_ACCEPT without a handler (a
 *                           handler bug); "later" -> MG_TEMPFAIL, no reply;
 *                           "misfit" -> MG_ACCEPT, keep_engine, with a 535
 *                           reply that does not fit the verdict;
 *                           anything else -> MG_PERMFAIL "535 5.7.8 ..."
 *   mail_tempfail_sender    smtp.mail from this address -> MG_TEMPFAIL with
 *                           a two-line "451 4.7.1" reply
 *   suspend_hooks, suspend_ms
 *                           a handler on each of these hooks that runs
 *                           first, suspends for suspend_ms and resumes
 *                           MG_PASS from a timer: the run goes on with the
 *                           handlers below
 *   rcpt_accept_domain      smtp.rcpt to this domain -> MG_ACCEPT with
 *                           "250 2.1.5 hooktest: recipient is mine"
 *   data_end_accept = true  smtp.data.end: MG_ACCEPT "250 2.0.0 hooktest:
 *                           accepted" when a recipient is a handler's
 *   refuse_hooks            a handler on each of these hooks that answers
 *                           MG_PERMFAIL with a two-line "554 5.7.1" reply
 *   refuse_lines, refuse_width
 *                           instead, refuse_lines lines "hooktest: refusal
 *                           line N of M" padded with '.' to refuse_width
 *                           octets
 *   refuse_text             instead, this one line (as given: a test of
 *                           control characters in a handler's reply)
 *   tee = true              smtp.data.tee: count bytes, FNV-1a 64 over them,
 *                           check offsets; log the total at `last`
 *   stored = true           message.stored: log mailbox, msg id, size
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mailgate/module.h>

/** A taken-over session: an echo protocol. */
struct ht_takeover {
    struct ht_takeover *next, *prev;
    struct ht_state *st;
    uint64_t conn_id;
    unsigned lines;
};

/** A suspended run waiting for its timer. */
struct ht_suspend {
    struct ht_suspend *next;
    struct ht_state *st;
    uint64_t call_id;
    uint64_t conn_id;
    uint64_t timer;
    uint64_t since_ms;
    const char *hook;
};

/** The data of one message seen through smtp.data.tee. */
struct ht_tee {
    struct ht_tee *next;
    uint64_t conn_id;
    uint64_t bytes;
    uint64_t fnv;
    unsigned pieces;
    bool bad_offset;
    bool bdat;
};

/** The module's state in one generation. */
struct ht_state {
    struct mg_modctx *m;
    bool auth, tee, stored, data_end_accept;
    char *tempfail_sender;
    char *accept_domain;
    uint64_t suspend_ms;
    struct ht_takeover *taken;
    struct ht_suspend *suspended;
    struct ht_tee *tees;
    char **refuse_lines; /* NULL: ht_refuse_lines */
    size_t nrefuse;
};

static const struct mg_core_api *ht_api;

/* Reply texts live in static storage: the engine writes them later. */
static const char *const ht_tempfail_lines[] = {
    "hooktest: sender temporarily refused",
    "hooktest: try again later",
};
static const char *const ht_takeover_lines[] = {"taken over"};
static const char *const ht_badauth_lines[] = {"hooktest: bad credentials"};
static const char *const ht_rcpt_lines[] = {"hooktest: recipient is mine"};
static const char *const ht_end_lines[] = {"hooktest: accepted"};
static const char *const ht_refuse_lines[] = {
    "hooktest: refused",
    "hooktest: by refuse_hooks",
};

static void *
ht_alloc(size_t n)
{
    void *p = calloc(1, n);

    if (p == NULL) {
        abort();
    }
    return p;
}

static char *
ht_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ht_alloc(n);

    memcpy(p, s, n);
    return p;
}

/* Copy text for a log or reply line: printable ASCII only. */
static void
ht_clean(char *dst, size_t size, const char *src, size_t len)
{
    size_t i;

    for (i = 0; i < len && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}

static void
ht_set_reply(struct mg_hook_call *call, int code, const char *ecode,
             size_t nlines, const char *const *lines)
{
    call->reply.code = code;
    call->reply.ecode = ecode;
    call->reply.nlines = nlines;
    call->reply.lines = lines;
}

/* ------------------------------------------------------------ takeover */

static void
ht_takeover_free(struct ht_takeover *t)
{
    if (t->prev != NULL) {
        t->prev->next = t->next;
    } else {
        t->st->taken = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    free(t);
}

/* The new owner's protocol: echo each line. */
static void
ht_takeover_read(struct ht_takeover *t, struct mg_conn *c)
{
    const struct mg_conn_api *ca = ht_api->conn;

    for (;;) {
        const char *line;
        size_t len;
        enum mg_eol eol;
        char text[1024];
        int r = ca->getline(c, &line, &len, &eol);

        if (r == MG_AGAIN) {
            return;
        }
        if (r == MG_DECLINED) {
            ca->printf(c, "500 5.5.2 line too long\r\n");
            continue;
        }
        if (r != MG_OK) {
            ht_takeover_free(t);
            ca->close(c);
            return;
        }
        t->lines++;
        ht_clean(text, sizeof(text), line, len);
        if (strcasecmp(text, "QUIT") == 0) {
            ca->printf(c, "221 2.0.0 hooktest bye\r\n");
            ht_api->log(t->st->m, MG_LOG_INFO,
                        "takeover of conn %" PRIu64 " ends after %u lines",
                        t->conn_id, t->lines);
            ht_takeover_free(t);
            ca->close(c);
            return;
        }
        ca->printf(c, "250 echo %s\r\n", text);
    }
}

static void
ht_takeover_handler(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    struct ht_takeover *t = arg;

    switch (ev) {
    case MG_CONN_READABLE:
        ht_takeover_read(t, c);
        break;
    case MG_CONN_DRAINED:
    case MG_CONN_TLS_READY:
        break;
    case MG_CONN_TIMEOUT:
        ht_api->conn->printf(c, "421 4.4.2 hooktest timeout\r\n");
        ht_takeover_free(t);
        break;
    case MG_CONN_EOF:
    case MG_CONN_ERROR:
        /* final: the conn closes when this returns */
        ht_takeover_free(t);
        break;
    }
}

static void
ht_takeover_shutdown(struct mg_conn *c, void *arg)
{
    struct ht_takeover *t = arg;

    ht_api->log(t->st->m, MG_LOG_INFO, "takeover of conn %" PRIu64 " shut down",
                t->conn_id);
    ht_api->conn->printf(c, "421 4.3.2 hooktest shutting down\r\n");
    ht_takeover_free(t);
    ht_api->conn->close(c);
}

/* ---------------------------------------------------------------- hooks */

static enum mg_verdict
ht_auth(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    struct mg_hook_smtp_auth *a = call->data;
    bool secret = strcmp(a->password, "secret") == 0;
    char user[128], authzid[128], caps[512];
    size_t n = 0;

    caps[0] = '\0';
    for (size_t i = 0; a->caps != NULL && a->caps[i] != NULL; i++) {
        int w = snprintf(caps + n, sizeof(caps) - n, "%s%s", i ? "," : "",
                         a->caps[i]);

        if (w < 0 || (size_t)w >= sizeof(caps) - n) {
            break;
        }
        n += (size_t)w;
    }
    ht_clean(user, sizeof(user), a->user, strlen(a->user));
    ht_clean(authzid, sizeof(authzid), a->authzid, strlen(a->authzid));
    ht_api->log(st->m, MG_LOG_INFO,
                "auth conn %" PRIu64
                " mech=%s user=%s authzid=%s tls=%d caps=%s",
                call->conn_id, a->mechanism, user, authzid,
                a->s->peer != NULL && a->s->peer->tls, caps);
    if (secret && strcmp(a->user, "takeover") == 0) {
        struct ht_takeover *t = ht_alloc(sizeof(*t));

        t->st = st;
        t->conn_id = call->conn_id;
        t->next = st->taken;
        if (t->next != NULL) {
            t->next->prev = t;
        }
        st->taken = t;
        a->handler = ht_takeover_handler;
        a->handler_arg = t;
        a->on_shutdown = ht_takeover_shutdown;
        ht_set_reply(call, 235, "2.7.0", 1, ht_takeover_lines);
        return MG_ACCEPT;
    }
    if (secret && strcmp(a->user, "keep") == 0) {
        a->keep_engine = true;
        return MG_ACCEPT;
    }
    if (strcmp(a->user, "nohandler") == 0) {
        return MG_ACCEPT;
    }
    if (strcmp(a->user, "later") == 0) {
        return MG_TEMPFAIL;
    }
    if (strcmp(a->user, "misfit") == 0) {
        a->keep_engine = true;
        ht_set_reply(call, 535, "5.7.8", 1, ht_badauth_lines);
        return MG_ACCEPT;
    }
    ht_set_reply(call, 535, "5.7.8", 1, ht_badauth_lines);
    return MG_PERMFAIL;
}

static enum mg_verdict
ht_mail(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    const struct mg_hook_smtp_mail *h = call->data;

    if (strcasecmp(h->sender, st->tempfail_sender) != 0) {
        return MG_PASS;
    }
    ht_api->log(st->m, MG_LOG_INFO, "mail tempfail conn %" PRIu64,
                call->conn_id);
    ht_set_reply(call, 451, "4.7.1", 2, ht_tempfail_lines);
    return MG_TEMPFAIL;
}

static void
ht_suspend_fired(void *arg)
{
    struct ht_suspend *p = arg, **pp;
    struct ht_state *st = p->st;
    uint64_t waited = ht_api->now_ms() - p->since_ms;
    int r;

    for (pp = &st->suspended; *pp != NULL && *pp != p; pp = &(*pp)->next) {
    }
    if (*pp != NULL) {
        *pp = p->next;
    }
    /* logged first: the resumed run may suspend the next call at once */
    ht_api->log(st->m, MG_LOG_INFO,
                "resuming %s conn %" PRIu64 " after %" PRIu64 " ms", p->hook,
                p->conn_id, waited);
    r = ht_api->hook_resume(p->call_id, MG_PASS, NULL);
    ht_api->log(st->m, MG_LOG_INFO, "resumed %s conn %" PRIu64 ": %s", p->hook,
                p->conn_id, r == MG_OK ? "ok" : "declined");
    free(p);
}

static enum mg_verdict
ht_suspend(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    struct ht_suspend *p = ht_alloc(sizeof(*p));

    p->st = st;
    p->call_id = call->id;
    p->conn_id = call->conn_id;
    p->since_ms = ht_api->now_ms();
    p->hook = call->hook;
    p->timer = ht_api->timer_add(st->m, st->suspend_ms, ht_suspend_fired, p);
    p->next = st->suspended;
    st->suspended = p;
    ht_api->log(st->m, MG_LOG_INFO,
                "suspended %s conn %" PRIu64 " for %" PRIu64 " ms", call->hook,
                call->conn_id, st->suspend_ms);
    return MG_SUSPEND;
}

static enum mg_verdict
ht_rcpt_accept(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    const struct mg_hook_smtp_rcpt *h = call->data;
    const char *at = strrchr(h->rcpt, '@');

    if (at == NULL || strcasecmp(at + 1, st->accept_domain) != 0) {
        return MG_PASS;
    }
    ht_api->log(st->m, MG_LOG_INFO, "rcpt accepted conn %" PRIu64 " mailbox=%s",
                call->conn_id, h->mailbox_id != NULL ? h->mailbox_id : "-");
    ht_set_reply(call, 250, "2.1.5", 1, ht_rcpt_lines);
    return MG_ACCEPT;
}

static enum mg_verdict
ht_refuse(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;

    ht_api->log(st->m, MG_LOG_INFO, "refused %s conn %" PRIu64, call->hook,
                call->conn_id);
    if (st->refuse_lines != NULL) {
        ht_set_reply(call, 554, "5.7.1", st->nrefuse,
                     (const char *const *)st->refuse_lines);
    } else {
        ht_set_reply(call, 554, "5.7.1", 2, ht_refuse_lines);
    }
    return MG_PERMFAIL;
}

static struct ht_tee *
ht_tee_find(struct ht_state *st, uint64_t conn_id, bool unlink)
{
    struct ht_tee **pp, *t;

    for (pp = &st->tees; (t = *pp) != NULL; pp = &t->next) {
        if (t->conn_id == conn_id) {
            if (unlink) {
                *pp = t->next;
            }
            return t;
        }
    }
    return NULL;
}

static enum mg_verdict
ht_tee(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    const struct mg_hook_smtp_data_tee *h = call->data;
    struct ht_tee *t = ht_tee_find(st, call->conn_id, false);
    const unsigned char *p = h->data;

    if (t == NULL) {
        t = ht_alloc(sizeof(*t));
        t->conn_id = call->conn_id;
        t->fnv = 0xcbf29ce484222325u;
        t->next = st->tees;
        st->tees = t;
    }
    if (h->offset != t->bytes) {
        t->bad_offset = true;
    }
    for (size_t i = 0; i < h->len; i++) {
        t->fnv ^= p[i];
        t->fnv *= 0x100000001b3u;
    }
    t->bytes += h->len;
    t->pieces++;
    t->bdat = h->bdat;
    if (h->last) {
        ht_tee_find(st, call->conn_id, true);
        ht_api->log(st->m, MG_LOG_INFO,
                    "tee conn %" PRIu64 " total %" PRIu64 " fnv %016" PRIx64
                    " pieces %u bdat %d offsets %s",
                    t->conn_id, t->bytes, t->fnv, t->pieces, t->bdat,
                    t->bad_offset ? "bad" : "ok");
        free(t);
    }
    return MG_PASS;
}

static enum mg_verdict
ht_data_end(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    const struct mg_hook_smtp_data_end *h = call->data;
    struct ht_tee *t = ht_tee_find(st, call->conn_id, true);
    size_t remote = 0;
    char sender[600] = "-";

    for (size_t i = 0; i < h->s->nrcpts; i++) {
        if (h->s->rcpt_mailboxes[i] == NULL) {
            remote++;
        }
    }
    if (h->s->sender != NULL) {
        ht_clean(sender, sizeof(sender), h->s->sender, strlen(h->s->sender));
    }
    ht_api->log(st->m, MG_LOG_INFO,
                "data.end conn %" PRIu64 " status=%s size=%" PRIu64
                " local=%s remote=%zu tee=%s txn=%" PRIu64
                " auth_user=%s sender=%s",
                call->conn_id, h->status == MG_OK ? "ok" : "error", h->size,
                h->local == NULL            ? "none"
                : h->local->status == MG_OK ? "stored"
                                            : "failed",
                remote, t != NULL ? "unfinished" : "-", h->s->transaction,
                h->s->auth_user != NULL ? h->s->auth_user : "-", sender);
    free(t);
    if (h->status == MG_OK && st->data_end_accept && remote > 0) {
        ht_set_reply(call, 250, "2.0.0", 1, ht_end_lines);
        return MG_ACCEPT;
    }
    return MG_PASS;
}

static enum mg_verdict
ht_stored(struct mg_hook_call *call, void *arg)
{
    struct ht_state *st = arg;
    const struct mg_hook_message_stored *h = call->data;

    ht_api->log(st->m, MG_LOG_INFO,
                "stored %s %" PRIu64 " %" PRIu64 " source=%s conn %" PRIu64,
                h->mailbox_id, h->msg_id, h->size, h->source, call->conn_id);
    return MG_PASS;
}

/* ---------------------------------------------------------- life cycle */

static const struct mg_setting ht_settings[] = {
    {.name = "auth", .type = MG_SET_BOOL},
    {.name = "mail_tempfail_sender", .type = MG_SET_STRING},
    {.name = "suspend_hooks", .type = MG_SET_STRINGS},
    {.name = "refuse_hooks", .type = MG_SET_STRINGS},
    {.name = "refuse_lines", .type = MG_SET_INT, .min = 1, .max = 1000},
    {.name = "refuse_width", .type = MG_SET_INT, .min = 40, .max = 4000},
    {.name = "refuse_text", .type = MG_SET_STRING},
    {.name = "suspend_ms", .type = MG_SET_INT, .min = 0, .max = 60000},
    {.name = "rcpt_accept_domain", .type = MG_SET_STRING},
    {.name = "data_end_accept", .type = MG_SET_BOOL},
    {.name = "tee", .type = MG_SET_BOOL},
    {.name = "stored", .type = MG_SET_BOOL},
    {.name = NULL},
};

static void
ht_release(void *state)
{
    struct ht_state *st = state;

    while (st->taken != NULL) {
        ht_takeover_free(st->taken);
    }
    while (st->suspended != NULL) {
        struct ht_suspend *p = st->suspended;

        st->suspended = p->next;
        ht_api->timer_cancel(p->timer);
        free(p);
    }
    while (st->tees != NULL) {
        struct ht_tee *t = st->tees;

        st->tees = t->next;
        free(t);
    }
    for (size_t i = 0; i < st->nrefuse; i++) {
        free(st->refuse_lines[i]);
    }
    free(st->refuse_lines);
    free(st->tempfail_sender);
    free(st->accept_domain);
    free(st);
}

/* Register a handler; false (error set) when the core refuses it. */
static bool
ht_add(struct ht_state *st, const char *hook, int prio, mg_hook_fn fn,
       const char **error_r)
{
    return ht_api->hook_add(st->m, hook, prio, fn, st, error_r) == MG_OK;
}

static int
ht_configure(struct mg_modctx *m, const struct mg_core_api *api,
             const struct config_setting_t *sect, void **state_r,
             const char **error_r)
{
    struct ht_state *st;
    bool ok = true;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api) ||
        api->conn->size < sizeof(struct mg_conn_api)) {
        *error_r = "hooktest: core API too old";
        return MG_ERROR;
    }
    ht_api = api;
    st = ht_alloc(sizeof(*st));
    st->m = m;
    st->auth = api->setting_bool(sect, "auth", false);
    st->tee = api->setting_bool(sect, "tee", false);
    st->stored = api->setting_bool(sect, "stored", false);
    st->data_end_accept = api->setting_bool(sect, "data_end_accept", false);
    st->tempfail_sender =
        ht_strdup(api->setting_string(sect, "mail_tempfail_sender", ""));
    st->accept_domain =
        ht_strdup(api->setting_string(sect, "rcpt_accept_domain", ""));
    st->suspend_ms = (uint64_t)api->setting_int(sect, "suspend_ms", 300);
    st->nrefuse = (size_t)api->setting_int(sect, "refuse_lines", 0);
    if (api->setting_string(sect, "refuse_text", NULL) != NULL) {
        st->nrefuse = 1;
        st->refuse_lines = ht_alloc(sizeof(char *));
        st->refuse_lines[0] =
            ht_strdup(api->setting_string(sect, "refuse_text", NULL));
    } else if (st->nrefuse > 0) {
        size_t width = (size_t)api->setting_int(sect, "refuse_width", 100);

        st->refuse_lines = ht_alloc(st->nrefuse * sizeof(char *));
        for (size_t i = 0; i < st->nrefuse; i++) {
            char *l = ht_alloc(width + 1);
            int n = snprintf(l, width + 1, "hooktest: refusal line %zu of %zu",
                             i + 1, st->nrefuse);

            memset(l + n, '.', width - (size_t)n);
            st->refuse_lines[i] = l;
        }
    }

    if (st->auth) {
        ok = ok && ht_add(st, "smtp.auth", 100, ht_auth, error_r);
    }
    if (st->tempfail_sender[0] != '\0') {
        ok = ok && ht_add(st, "smtp.mail", 100, ht_mail, error_r);
    }
    /* the suspending handlers run first: after the resume (MG_PASS) the
     * run goes on with the next handler */
    for (unsigned i = 0; ok; i++) {
        const char *hook = api->setting_strings(sect, "suspend_hooks", i);

        if (hook == NULL) {
            break;
        }
        ok = ht_add(st, hook, 10, ht_suspend, error_r);
    }
    for (unsigned i = 0; ok; i++) {
        const char *hook = api->setting_strings(sect, "refuse_hooks", i);

        if (hook == NULL) {
            break;
        }
        ok = ht_add(st, hook, 50, ht_refuse, error_r);
    }
    if (st->accept_domain[0] != '\0') {
        ok = ok && ht_add(st, "smtp.rcpt", 20, ht_rcpt_accept, error_r);
    }
    if (st->tee) {
        ok = ok && ht_add(st, "smtp.data.tee", 100, ht_tee, error_r);
    }
    if (st->tee || st->data_end_accept) {
        ok = ok && ht_add(st, "smtp.data.end", 100, ht_data_end, error_r);
    }
    if (st->stored) {
        ok = ok && ht_add(st, "message.stored", 100, ht_stored, error_r);
    }
    if (!ok) {
        ht_release(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;
}

static int
ht_start(void *state, const char **error_r)
{
    struct ht_state *st = state;

    (void)error_r;
    ht_api->log(st->m, MG_LOG_INFO, "started");
    return MG_OK;
}

static void
ht_stop(void *state)
{
    (void)state;
}

MG_MODULE_EXPORT(hooktest) = {
    MG_MODULE_V1,
    .name = "hooktest",
    .description = "smtp hook handlers for the integration tests",
    .settings = ht_settings,
    .configure = ht_configure,
    .start = ht_start,
    .stop = ht_stop,
    .release = ht_release,
};
