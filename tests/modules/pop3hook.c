/*
 * tests/modules/pop3hook.c -- a module that takes part in the pop3
 * engine's hooks, used only by tests/integration/test_pop3_hooks.py.
 *
 * Built out of tree against the installed headers only (Makefile.ext),
 * like hooktest.c, which has the generic suspend_hooks and refuse_hooks.
 * It reports through api->log (the core prefixes "pop3hook: ").
 *
 *   login = true     pop3.login: user "takeover" + password "secret" ->
 *                    MG_ACCEPT, "+OK taken over", then every line is
 *                    answered "+OK echo <line>" (QUIT: "+OK pop3hook bye");
 *                    "refuse" -> MG_PERMFAIL "-ERR [AUTH] pop3hook: no";
 *                    "later" -> MG_TEMPFAIL without a reply; others pass
 *   tee = true       pop3.retr.tee: count bytes and FNV-1a 64 over them,
 *                    check offsets; log the totals at `last`
 *   tee_refuse = N   pop3.retr.tee: MG_PERMFAIL at the piece at offset ≥ N
 *                    (0 = never)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

struct p3_state {
    struct mg_modctx *m;
    bool login, tee;
    uint64_t tee_refuse;
    /* the message being tee'd (one at a time in these tests) */
    uint64_t bytes, fnv;
    unsigned pieces;
    bool bad_offset;
};

static const struct mg_core_api *p3_api;

static const char *const p3_takeover_lines[] = {"taken over"};
static const char *const p3_refuse_lines[] = {"pop3hook: no"};

static void
p3_clean(char *dst, size_t size, const char *src)
{
    size_t i;

    for (i = 0; src[i] != '\0' && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}

/* the taken-over session: an echo protocol */
static void
p3_echo(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    const char *line;
    size_t len;
    enum mg_eol eol;

    (void)arg;
    if (ev != MG_CONN_READABLE) {
        return;
    }
    for (;;) {
        const char *in;
        size_t n;

        p3_api->conn->peek(c, &in, &n);
        if (n == 0 || p3_api->conn->getline(c, &line, &len, &eol) != MG_OK) {
            return;
        }
        if (len == 4 && strncmp(line, "QUIT", 4) == 0) {
            p3_api->conn->printf(c, "+OK pop3hook bye\r\n");
            p3_api->conn->close(c);
            return;
        }
        p3_api->conn->printf(c, "+OK echo %.*s\r\n", (int)len, line);
    }
}

static void
p3_echo_shutdown(struct mg_conn *c, void *arg)
{
    (void)arg;
    p3_api->conn->printf(c, "-ERR pop3hook shutting down\r\n");
    p3_api->conn->close(c);
}

static enum mg_verdict
p3_login(struct mg_hook_call *call, void *arg)
{
    struct p3_state *st = arg;
    struct mg_hook_pop3_login *h = call->data;
    bool secret = strcmp(h->password, "secret") == 0;
    char user[128], authzid[128], caps[512];
    size_t n = 0;

    caps[0] = '\0';
    for (size_t i = 0; h->caps != NULL && h->caps[i] != NULL; i++) {
        int w = snprintf(caps + n, sizeof(caps) - n, "%s%s", i ? "," : "",
                         h->caps[i]);

        if (w < 0 || (size_t)w >= sizeof(caps) - n) {
            break;
        }
        n += (size_t)w;
    }
    p3_clean(user, sizeof(user), h->user);
    p3_clean(authzid, sizeof(authzid), h->authzid);
    p3_api->log(st->m, MG_LOG_INFO,
                "login conn %" PRIu64 " mech=%s user=%s authzid=%s tls=%d "
                "secret=%d caps=%s",
                call->conn_id, h->mechanism, user, authzid,
                h->s->peer != NULL && h->s->peer->tls, secret, caps);
    if (secret && strcmp(h->user, "takeover") == 0) {
        h->handler = p3_echo;
        h->handler_arg = st;
        h->on_shutdown = p3_echo_shutdown;
        call->reply.nlines = 1;
        call->reply.lines = p3_takeover_lines;
        return MG_ACCEPT;
    }
    if (strcmp(h->user, "refuse") == 0) {
        call->reply.ecode = "AUTH";
        call->reply.nlines = 1;
        call->reply.lines = p3_refuse_lines;
        return MG_PERMFAIL;
    }
    if (strcmp(h->user, "later") == 0) {
        return MG_TEMPFAIL;
    }
    return MG_PASS;
}

static enum mg_verdict
p3_tee(struct mg_hook_call *call, void *arg)
{
    struct p3_state *st = arg;
    const struct mg_hook_pop3_retr_tee *t = call->data;
    const unsigned char *p = t->data;

    if (t->offset == 0 && st->pieces == 0) {
        st->bytes = 0;
        st->fnv = 0xcbf29ce484222325ULL;
    }
    if (t->offset != st->bytes) {
        st->bad_offset = true;
    }
    if (st->tee_refuse > 0 && t->offset + t->len >= st->tee_refuse) {
        p3_api->log(st->m, MG_LOG_INFO, "tee refused at %" PRIu64, t->offset);
        st->pieces = 0;
        return MG_PERMFAIL;
    }
    for (size_t i = 0; i < t->len; i++) {
        st->fnv = (st->fnv ^ p[i]) * 0x100000001b3ULL;
    }
    st->bytes += t->len;
    st->pieces++;
    if (t->last) {
        p3_api->log(st->m, MG_LOG_INFO,
                    "tee msg=%u bytes=%" PRIu64 " fnv=%016" PRIx64
                    " pieces=%u offsets=%s relayed=%d user=%s",
                    t->msgno, st->bytes, st->fnv, st->pieces,
                    st->bad_offset ? "bad" : "ok", t->relayed,
                    t->s->user != NULL ? t->s->user : "-");
        st->pieces = 0;
        st->bad_offset = false;
    }
    return MG_PASS;
}

static const struct mg_setting p3_settings[] = {
    {.name = "login", .type = MG_SET_BOOL},
    {.name = "tee", .type = MG_SET_BOOL},
    {.name = "tee_refuse", .type = MG_SET_INT, .min = 0, .max = 1 << 30},
    {.name = NULL},
};

static void
p3_release(void *state)
{
    free(state);
}

static int
p3_configure(struct mg_modctx *m, const struct mg_core_api *api,
             const struct config_setting_t *sect, void **state_r,
             const char **error_r)
{
    struct p3_state *st;
    bool ok = true;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api)) {
        *error_r = "pop3hook: core API too old";
        return MG_ERROR;
    }
    p3_api = api;
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        abort();
    }
    st->m = m;
    st->login = api->setting_bool(sect, "login", false);
    st->tee = api->setting_bool(sect, "tee", false);
    st->tee_refuse = (uint64_t)api->setting_int(sect, "tee_refuse", 0);
    if (st->login) {
        ok =
            api->hook_add(m, "pop3.login", 100, p3_login, st, error_r) == MG_OK;
    }
    if (ok && (st->tee || st->tee_refuse > 0)) {
        ok = api->hook_add(m, "pop3.retr.tee", 100, p3_tee, st, error_r) ==
             MG_OK;
    }
    if (!ok) {
        free(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;
}

static int
p3_start(void *state, const char **error_r)
{
    (void)state;
    (void)error_r;
    return MG_OK;
}

static void
p3_stop(void *state)
{
    (void)state;
}

MG_MODULE_EXPORT(pop3hook) = {
    MG_MODULE_V1,
    .name = "pop3hook",
    .description = "pop3 hook handlers for the integration tests",
    .settings = p3_settings,
    .configure = p3_configure,
    .start = p3_start,
    .stop = p3_stop,
    .release = p3_release,
};
