/*
 * modules/proxy/proxy_pop3.c -- the recording POP3 proxy: the pop3.login
 * handler that takes over `user%server%mailbox` logins, and the relay of
 * the client's commands to the upstream, one at a time.
 *
 * The client's commands are parsed and written anew (never forwarded as
 * sent), upstream status lines are bounded and checked, data lines of any
 * length pass in bounded pieces, and a RETR the mailbox has no copy of is
 * recorded: its terminating "." reaches the client only once the copy is
 * durable. A DELE of a message without a copy retrieves and records it
 * first.
 *
 * Record-ahead (prefetch_max_size): once the upstream has sent message n
 * for the client's RETR, the proxy retrieves n + 1 itself (when it is in
 * the listing, not deleted in this session, not yet recorded and within
 * the limit), keeps it in memory and records it at once, so its commit
 * runs while the client is still busy with n. The client's RETR n + 1 is
 * then answered from memory, its "." once that copy is durable. Only one
 * upstream command is ever outstanding: a client command waits until the
 * upstream has sent all of the message being read ahead. A message read
 * ahead that the client never asks for stays recorded: it is in the
 * user's mailbox at the upstream, and archiving it early loses nothing.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy.h"

static struct proxy_session *proxy_sessions;

void
proxy_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0)
        *v++ = 0;
}

struct proxy_session *
proxy_session_find(uint64_t id)
{
    for (struct proxy_session *s = proxy_sessions; s != NULL; s = s->next) {
        if (s->id == id && !s->dead)
            return s;
    }
    return NULL;
}

void
proxy_session_log(struct proxy_session *s, enum mg_log_level level,
                  const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    proxy_vlog(s->st, s->id, level, fmt, ap);
    va_end(ap);
}

static void
session_free(struct proxy_session *s)
{
    for (struct proxy_session **pp = &proxy_sessions; *pp != NULL;
         pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (s->pass != NULL) {
        proxy_wipe(s->pass, s->passlen);
        free(s->pass);
    }
    for (uint32_t i = 0; i < s->nuidls; i++)
        free(s->uidls[i]);
    free(s->uidls);
    free(s->sizes);
    free(s->gone);
    proxy_policy_free(&s->policy);
    proxy_record_free(&s->rec);
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        proxy_record_free(&s->pf[i].rec);
        free(s->pf[i].data);
    }
    free(s->obuf);
    free(s);
}

void
proxy_enter(struct proxy_session *s)
{
    s->depth++;
}

void
proxy_leave(struct proxy_session *s)
{
    if (--s->depth == 0 && s->dead && !s->connecting)
        session_free(s);
}

/* End the session: the upstream without QUIT (nothing is deleted there),
 * the client after what is queued. */
static void
session_kill(struct proxy_session *s, const char *why)
{
    const struct mg_conn_api *ca = s->st->api->conn;

    if (s->dead)
        return;
    s->dead = true;
    if (s->pass != NULL)
        proxy_wipe(s->pass, s->passlen);
    proxy_record_abort(s, &s->rec);
    for (size_t i = 0; i < PROXY_AHEAD; i++)
        proxy_record_abort(s, &s->pf[i].rec);
    if (s->up != NULL) {
        ca->close(s->up);
        s->up = NULL;
    }
    if (s->c != NULL) {
        ca->close(s->c);
        s->c = NULL;
    }
    if (s->phase == PX_RELAY) {
        proxy_session_log(
            s, s->failures > 0 ? MG_LOG_WARNING : MG_LOG_INFO,
            "proxy session to %s for mailbox %s ended (%s): %u retrieved, "
            "%u recorded, %u already stored, %u deleted, %u failures; %u "
            "recorded ahead of the client",
            s->login.upstream, s->login.mailbox, why, s->retrieved, s->recorded,
            s->deduped, s->deleted, s->failures, s->ahead);
    }
}

/* ---------------------------------------------------------- output */

static const struct mg_conn_api *
cl(const struct proxy_session *s)
{
    return s->st->api->conn;
}

static void
out_flush(struct proxy_session *s)
{
    if (s->olen == 0 || s->c == NULL)
        return;
    if (cl(s)->write(s->c, s->obuf, s->olen) == MG_AGAIN)
        s->blocked = true;
    s->olen = 0;
}

static void
out_add(struct proxy_session *s, const char *data, size_t len)
{
    if (s->obuf == NULL) {
        s->obuf = malloc(PROXY_FLUSH + PROXY_DATA_LINE + 2);
        if (s->obuf == NULL)
            abort();
    }
    memcpy(s->obuf + s->olen, data, len);
    s->olen += len;
    if (s->olen >= PROXY_FLUSH)
        out_flush(s);
}

static void
out_line(struct proxy_session *s, const char *line, size_t len)
{
    out_add(s, line, len);
    out_add(s, "\r\n", 2);
}

static void
out_reply(struct proxy_session *s, const char *fmt, ...)
{
    char buf[PROXY_STATUS_MAX];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    out_line(s, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    out_flush(s);
}

/* ----------------------------------------------------------- login */

static const char *const proxy_caps_fixed[] = {"RESP-CODES", "PIPELINING"};

void
proxy_login_done(struct proxy_session *s, enum mg_verdict v, const char *ecode,
                 const char *fmt, ...)
{
    const struct mg_core_api *api = s->st->api;
    struct mg_reply reply = {.ecode = ecode, .nlines = 1};
    va_list ap;
    int r = MG_DECLINED;

    if (s->phase == PX_RELAY)
        return;
    if (s->pass != NULL)
        proxy_wipe(s->pass, s->passlen);
    va_start(ap, fmt);
    (void)vsnprintf(s->reply, sizeof(s->reply), fmt, ap);
    va_end(ap);
    for (char *p = s->reply; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    }
    s->reply_lines[0] = s->reply;
    reply.lines = s->reply_lines;
    if (v == MG_ACCEPT && !s->dead) {
        /* the relay runs before the engine hands the conn over: pipelined
         * input reaches our handler from inside hook_resume */
        s->phase = PX_RELAY;
        s->c = api->conn->find(s->id);
        proxy_session_log(s, MG_LOG_INFO,
                          "proxy login to %s for mailbox %s (%s, %u messages "
                          "upstream)",
                          s->login.upstream, s->login.mailbox,
                          s->up != NULL && api->conn->peer(s->up)->tls_version
                              ? api->conn->peer(s->up)->tls_version
                              : "TLS",
                          s->nuidls);
        r = api->hook_resume(s->call_id, MG_ACCEPT, &reply);
        if (r == MG_OK) {
            if (s->c != NULL)
                api->conn->set_timeouts(s->c, s->st->idle_ms,
                                        s->st->session_ms);
            return;
        }
        s->c = NULL;
        session_kill(s, "the client left");
        return;
    }
    if (!s->dead) {
        proxy_session_log(s, MG_LOG_INFO,
                          "proxy login to %s for mailbox %s "
                          "refused: %s",
                          s->login.upstream, s->login.mailbox, s->reply);
        (void)api->hook_resume(s->call_id, v, &reply);
    }
    session_kill(s, "login failed");
}

static void proxy_client_cb(struct mg_conn *c, enum mg_conn_event ev,
                            void *arg);

static void
proxy_client_shutdown(struct mg_conn *c, void *arg)
{
    struct proxy_session *s = arg;

    (void)c;
    proxy_enter(s);
    if (!s->dead) {
        if (s->cmd == PC_NONE) {
            out_reply(s, "-ERR [SYS/TEMP] The gateway is shutting down");
            session_kill(s, "shutdown");
        } else {
            s->closing = true; /* after the command in flight */
        }
    }
    proxy_leave(s);
}

/* A static reply for the answers given before any session exists. */
static enum mg_verdict
login_refuse(struct mg_hook_call *call, enum mg_verdict v, const char *ecode,
             const char *text)
{
    static const char *lines[1];

    lines[0] = text;
    call->reply.ecode = ecode;
    call->reply.nlines = 1;
    call->reply.lines = lines;
    return v;
}

enum mg_verdict
proxy_pop3_login(struct mg_hook_call *call, void *arg)
{
    struct proxy_state *st = arg;
    struct mg_hook_pop3_login *h = call->data;
    struct proxy_login login;
    struct proxy_policy policy;
    struct proxy_session *s;
    const struct mg_peer *peer;
    const char *why = NULL;
    static char text[480];
    enum mg_verdict v;

    v = proxy_admit(st, call->conn_id, h->user, 995, &login, &policy, &why);
    if (v == MG_PASS)
        return MG_PASS; /* not a proxy login: the engine's own */
    if (v != MG_ACCEPT)
        return login_refuse(call, v, v == MG_TEMPFAIL ? "SYS/TEMP" : "AUTH",
                            why);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->st = st;
    s->id = call->conn_id;
    s->call_id = call->id;
    s->login = login;
    s->policy = policy;
    s->policy.login = &s->login;
    s->passlen = strlen(h->password);
    s->pass = malloc(s->passlen + 1);
    if (s->pass == NULL)
        abort();
    memcpy(s->pass, h->password, s->passlen + 1);
    snprintf(s->authzid, sizeof(s->authzid), "%s", h->authzid);
    peer = h->s->peer;
    if (peer != NULL) {
        snprintf(s->peer, sizeof(s->peer), "%s", peer->addr);
        if (peer->tls)
            snprintf(s->peer_tls, sizeof(s->peer_tls), "%s %s",
                     peer->tls_version ? peer->tls_version : "",
                     peer->tls_cipher ? peer->tls_cipher : "");
    }
    s->next = proxy_sessions;
    proxy_sessions = s;

    if (proxy_policy_precheck(&s->policy) != 0) {
        snprintf(text, sizeof(text), "Proxy target refused: %s", s->policy.why);
        proxy_session_log(s, MG_LOG_INFO, "%s", text);
        s->dead = true;
        session_free(s);
        return login_refuse(call, MG_PERMFAIL, NULL, text);
    }
    h->handler = proxy_client_cb;
    h->handler_arg = s;
    h->on_shutdown = proxy_client_shutdown;
    proxy_enter(s);
    if (proxy_upstream_start(s, &why) != MG_OK) {
        snprintf(text, sizeof(text), "Cannot connect to the upstream: %s", why);
        s->dead = true;
        proxy_leave(s);
        return login_refuse(call, MG_TEMPFAIL, "SYS/TEMP", text);
    }
    proxy_leave(s);
    return MG_SUSPEND;
}

/* ----------------------------------------------------------- relay */

static bool
parse_num(const char *p, size_t len, bool zero_ok, uint32_t *n_r)
{
    uint64_t n = 0;

    if (len == 0 || len > 10)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(p[i] - '0');
    }
    if (n > UINT32_MAX || (n == 0 && !zero_ok))
        return false;
    *n_r = (uint32_t)n;
    return true;
}

static void
relay_capa(struct proxy_session *s)
{
    out_add(s, "+OK Capability list follows\r\n", 30);
    if (s->caps.top)
        out_line(s, "TOP", 3);
    if (s->caps.uidl)
        out_line(s, "UIDL", 4);
    if (s->caps.expire)
        out_line(s, "EXPIRE NEVER", 12);
    for (size_t i = 0; i < 2; i++)
        out_line(s, proxy_caps_fixed[i], strlen(proxy_caps_fixed[i]));
    out_line(s, ".", 1);
    out_flush(s);
}

/* A command of the client's that the upstream answers. */
static void
up_cmd(struct proxy_session *s, enum proxy_cmd cmd, const char *verb, int nargs,
       uint32_t a, uint32_t b)
{
    s->cmd = cmd;
    if (s->up == NULL) {
        s->failures++;
        out_reply(s, "-ERR [SYS/TEMP] The upstream %s",
                  s->up_gone != NULL ? s->up_gone : "closed the connection");
        session_kill(s, "upstream closed");
        return;
    }
    s->up_busy = true;
    if (nargs == 0)
        proxy_upstream_send(s, "%s", verb);
    else if (nargs == 1)
        proxy_upstream_send(s, "%s %u", verb, (unsigned)a);
    else
        proxy_upstream_send(s, "%s %u %u", verb, (unsigned)a, (unsigned)b);
}

static struct proxy_prefetch *pf_reading(struct proxy_session *s);
static void pf_continue(struct proxy_session *s);

static void
relay_finish(struct proxy_session *s)
{
    s->cmd = PC_NONE;
    s->in_data = false;
    s->mid_line = false;
    s->record = false;
    s->up_busy = false;
    s->top_whole = false;
    if (s->up != NULL && pf_reading(s) == NULL)
        cl(s)->set_timeouts(s->up, 0, 0); /* the client's idle time rules */
    pf_continue(s);
}

/* ------------------------------------------------------ record-ahead */

/* The slot whose message the upstream is sending, or NULL. */
static struct proxy_prefetch *
pf_reading(struct proxy_session *s)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READING)
            return &s->pf[i];
    }
    return NULL;
}

/* The message n read ahead completely, or NULL. */
static struct proxy_prefetch *
pf_ready(struct proxy_session *s, uint32_t n)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && s->pf[i].msgno == n)
            return &s->pf[i];
    }
    return NULL;
}

/* A copy read ahead still being committed (any message when n is 0). */
static bool
pf_committing(struct proxy_session *s, uint32_t n)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && !s->pf[i].done &&
            (n == 0 || s->pf[i].msgno == n))
            return true;
    }
    return false;
}

/* Forget a message read ahead; a copy already committed stays. */
static void
pf_drop(struct proxy_session *s, struct proxy_prefetch *pf)
{
    proxy_record_abort(s, &pf->rec);
    pf->state = PF_IDLE;
    pf->in_data = pf->mid_line = pf->unusable = pf->done = false;
    pf->len = 0;
    if (pf->cap > 4 * PROXY_DATA_LINE) { /* keep only a small buffer */
        free(pf->data);
        pf->data = NULL;
        pf->cap = 0;
    }
}

/* What one message read ahead may take in memory: the limit plus the
 * stuffing and line ends a LIST size may not count. */
static size_t
pf_cap_max(const struct proxy_session *s)
{
    return (size_t)s->st->prefetch_max + PROXY_DATA_LINE;
}

/* Read ahead from message n on, if the upstream is idle, a slot is free
 * and n qualifies (else n + 1 … while they are merely recorded already). */
static void
pf_start(struct proxy_session *s, uint32_t n)
{
    struct proxy_prefetch *pf = NULL;

    if (s->st->prefetch_max == 0 || s->up == NULL || s->dead || s->closing ||
        s->up_busy || !s->have_uidls || s->sizes == NULL ||
        pf_reading(s) != NULL)
        return;
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_IDLE)
            pf = &s->pf[i];
        else if (s->pf[i].msgno >= n)
            return; /* already ahead of n */
    }
    if (pf == NULL || n == 0 || n > s->nuidls || s->uidls[n - 1] == NULL ||
        s->sizes[n - 1] > s->st->prefetch_max ||
        (s->gone != NULL && s->gone[n - 1]) || proxy_record_have(s, n))
        return;
    if (proxy_record_begin(s, &pf->rec, n) != MG_OK)
        return; /* the store refuses now: the client's RETR tries again */
    pf->rec.ahead = true;
    s->pf_last = n;
    pf->state = PF_READING;
    pf->msgno = n;
    pf->in_data = pf->mid_line = pf->unusable = pf->done = false;
    pf->len = pf->slen = 0;
    proxy_upstream_send(s, "RETR %u", (unsigned)n);
}

/* Keep a piece of the message read ahead; false (and nothing kept) when
 * it would pass the limit. */
static bool
pf_keep(struct proxy_session *s, struct proxy_prefetch *pf, const char *data,
        size_t len, bool eol)
{
    size_t need = pf->len + len + 2;

    if (need > pf_cap_max(s))
        return false;
    if (need > pf->cap) {
        size_t cap = pf->cap > 0 ? pf->cap : 2 * PROXY_DATA_LINE;
        char *p;

        while (cap < need)
            cap *= 2;
        if (cap > pf_cap_max(s))
            cap = pf_cap_max(s);
        p = realloc(pf->data, cap);
        if (p == NULL)
            abort();
        pf->data = p;
        pf->cap = cap;
    }
    memcpy(pf->data + pf->len, data, len);
    pf->len += len;
    if (eol) {
        memcpy(pf->data + pf->len, "\r\n", 2);
        pf->len += 2;
    }
    return true;
}

/* The upstream broke off (or broke the protocol) while a message was
 * being read ahead: nothing of it is kept. */
static void
pf_lost(struct proxy_session *s, struct proxy_prefetch *pf)
{
    s->failures++;
    proxy_session_log(s, MG_LOG_WARNING,
                      "upstream %s: %s while message %u was read ahead (not "
                      "recorded)",
                      s->login.upstream,
                      s->up_gone != NULL ? s->up_gone : "lost",
                      (unsigned)pf->msgno);
    pf_drop(s, pf);
}

static bool client_next_local(struct proxy_session *s);

/* The client has sent a command that needs the upstream: it goes first,
 * reading further ahead resumes once it is answered (relay_finish). */
static bool
client_waits(struct proxy_session *s)
{
    const char *in;
    size_t n;

    if (s->c == NULL)
        return false;
    cl(s)->peek(s->c, &in, &n);
    return n > 0 && !client_next_local(s);
}

/* Read further ahead after the last message read ahead, if any. */
static void
pf_continue(struct proxy_session *s)
{
    if (s->pf_last > 0 && s->cmd == PC_NONE && !client_waits(s))
        pf_start(s, s->pf_last + 1);
}

/* The upstream has sent all of a message read ahead: the next one. */
static void
pf_upstream_idle(struct proxy_session *s, uint32_t n)
{
    if (s->up != NULL && !s->up_busy)
        cl(s)->set_timeouts(s->up, 0, 0);
    if (!client_waits(s))
        pf_start(s, n + 1);
}

/* One step of reading ahead; false to stop for now. */
static bool
pf_step(struct proxy_session *s, struct proxy_prefetch *pf)
{
    const char *p;
    size_t len;
    bool eol, stuffed;
    int r;

    if (s->up == NULL || pf->rec.wait)
        return false;
    if (!pf->in_data) {
        r = proxy_upstream_line(s, &p, &len, true);
        if (r == MG_AGAIN)
            return false;
        if (r != MG_OK) {
            s->up_gone = s->why;
            pf_lost(s, pf);
            session_kill(s, "upstream protocol violation");
            return false;
        }
        if (p[0] != '+') { /* the client's own RETR will hear why */
            pf_drop(s, pf);
            if (s->up != NULL)
                cl(s)->set_timeouts(s->up, 0, 0);
            return true;
        }
        memcpy(pf->status, p, len);
        pf->slen = len;
        pf->in_data = true;
        return true;
    }
    r = proxy_upstream_piece(s, &p, &len, &eol);
    if (r == MG_AGAIN)
        return false;
    if (r != MG_OK) {
        s->up_gone = s->why;
        pf_lost(s, pf);
        session_kill(s, "upstream protocol violation");
        return false;
    }
    if (!pf->mid_line && eol && len == 1 && p[0] == '.') {
        uint32_t n = pf->msgno;

        if (pf->unusable) {
            pf_drop(s, pf);
        } else {
            pf->state = PF_READY;
            proxy_record_end(s, &pf->rec); /* proxy_relay_recorded follows */
        }
        if (!s->dead)
            pf_upstream_idle(s, n);
        return !s->dead;
    }
    stuffed = !pf->mid_line && len > 0 && p[0] == '.';
    pf->mid_line = !eol;
    if (pf->unusable)
        return true;
    if (!pf_keep(s, pf, p, len, eol)) {
        /* larger than its listing said: drained, not kept; the client's
         * RETR is relayed and recorded as usual */
        pf->unusable = true;
        proxy_record_abort(s, &pf->rec);
        return true;
    }
    return proxy_record_piece(s, &pf->rec, p + stuffed, len - stuffed, eol) !=
           MG_AGAIN;
}

/* RETR of a message read ahead: answered from memory, its "." once its
 * copy is durable. */
static void
pf_serve(struct proxy_session *s, struct proxy_prefetch *pf)
{
    struct proxy_rec tmp;
    uint32_t last = pf->msgno;

    s->msgno = pf->msgno;
    out_line(s, pf->status, pf->slen);
    out_flush(s);
    if (pf->len > 0 && cl(s)->write(s->c, pf->data, pf->len) == MG_AGAIN)
        s->blocked = true;
    if (pf->done) {
        out_line(s, ".", 1);
        out_flush(s);
        pf_drop(s, pf);
    } else {
        /* its commit is in flight: the client's command waits for it */
        tmp = s->rec;
        s->rec = pf->rec;
        pf->rec = tmp;
        s->cmd = PC_RETR;
        s->record = true;
        s->in_data = true;
        pf_drop(s, pf);
    }
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state != PF_IDLE && s->pf[i].msgno > last)
            last = s->pf[i].msgno;
    }
    pf_start(s, last + 1);
}

/* ----------------------------------------------------- the commands */

static void
relay_retr(struct proxy_session *s, uint32_t n, bool dele)
{
    s->msgno = n;
    if (proxy_record_have(s, n)) {
        s->deduped++;
        s->record = false;
        up_cmd(s, dele ? PC_DELE : PC_RETR, dele ? "DELE" : "RETR", 1, n, 0);
        return;
    }
    if (proxy_record_begin(s, &s->rec, n) != MG_OK) {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING, "cannot record message %u: %s",
                          (unsigned)n, s->why);
        out_reply(s, "-ERR [SYS/TEMP] The message cannot be archived now; "
                     "try again later");
        return;
    }
    s->record = true;
    up_cmd(s, dele ? PC_DELE_RETR : PC_RETR, "RETR", 1, n, 0);
}

/* DELE n (or QUIT, n 0) while the copy of n (any) read ahead is being
 * committed: wait for it (DELE then finds it recorded, or records it
 * anew; QUIT leaves every copy read ahead durable). */
static bool
relay_pf_wait(struct proxy_session *s, uint32_t n, char then)
{
    struct proxy_prefetch *pf = n != 0 ? pf_ready(s, n) : NULL;

    if (!pf_committing(s, n)) {
        if (pf != NULL)
            pf_drop(s, pf); /* deleted: nobody will RETR it */
        return false;
    }
    s->cmd = PC_PFWAIT;
    s->pf_then = then;
    s->msgno = n;
    return true;
}

/* One client command line. */
static void
relay_command(struct proxy_session *s, const char *line, size_t len)
{
    const char *arg, *sp = memchr(line, ' ', len);
    size_t vlen = sp != NULL ? (size_t)(sp - line) : len, alen;
    uint32_t n, m;

    arg = sp != NULL ? sp + 1 : line + len;
    alen = sp != NULL ? len - vlen - 1 : 0;
#define VERB(w) (vlen == sizeof(w) - 1 && strncasecmp(line, w, vlen) == 0)
    if (VERB("QUIT") && alen == 0) {
        if (!relay_pf_wait(s, 0, 'Q'))
            up_cmd(s, PC_QUIT, "QUIT", 0, 0, 0);
    } else if (VERB("RSET") && alen == 0) {
        up_cmd(s, PC_RSET, "RSET", 0, 0, 0);
    } else if ((VERB("STAT") || VERB("NOOP")) && alen == 0) {
        up_cmd(s, PC_SINGLE, VERB("STAT") ? "STAT" : "NOOP", 0, 0, 0);
    } else if (VERB("LIST") || VERB("UIDL")) {
        const char *verb = VERB("LIST") ? "LIST" : "UIDL";

        if (alen == 0)
            up_cmd(s, PC_MULTI, verb, 0, 0, 0);
        else if (parse_num(arg, alen, false, &n))
            up_cmd(s, PC_SINGLE, verb, 1, n, 0);
        else
            out_reply(s, "-ERR Invalid message number");
    } else if (VERB("RETR") || VERB("DELE")) {
        if (!parse_num(arg, alen, false, &n)) {
            out_reply(s, "-ERR Invalid message number");
        } else if (VERB("RETR")) {
            s->retrieved++;
            struct proxy_prefetch *pf = pf_ready(s, n);

            if (pf != NULL)
                pf_serve(s, pf);
            else
                relay_retr(s, n, false);
        } else if (!relay_pf_wait(s, n, 'D')) {
            relay_retr(s, n, true);
        }
    } else if (VERB("TOP")) {
        const char *sp2 = memchr(arg, ' ', alen);

        if (sp2 != NULL && parse_num(arg, (size_t)(sp2 - arg), false, &n) &&
            parse_num(sp2 + 1, alen - (size_t)(sp2 - arg) - 1, true, &m)) {
            /* TOP records nothing, but a client that reads whole messages
             * with it (fetchmail: TOP n 99999999) walks through them */
            if (m >= PROXY_TOP_WHOLE && pf_ready(s, n) != NULL) {
                /* the whole message: what was read ahead */
                pf_serve(s, pf_ready(s, n));
            } else {
                s->msgno = n;
                up_cmd(s, PC_MULTI, "TOP", 2, n, m);
                s->top_whole = m >= PROXY_TOP_WHOLE;
            }
        } else
            out_reply(s, "-ERR Syntax: TOP msg lines");
    } else if (VERB("CAPA") && alen == 0) {
        relay_capa(s);
    } else if (VERB("USER") || VERB("PASS") || VERB("AUTH") || VERB("APOP") ||
               VERB("STLS")) {
        out_reply(s, "-ERR Already logged in");
    } else {
        out_reply(s, "-ERR Unknown command");
    }
#undef VERB
}

/* The next client command; false when there is none yet. */
static bool
relay_client_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    enum mg_eol eol;
    int r;

    if (s->c == NULL)
        return false;
    r = cl(s)->getline(s->c, &line, &len, &eol);
    if (r == MG_AGAIN)
        return false;
    if (r == MG_DECLINED) {
        out_reply(s, "-ERR Line too long");
        return true;
    }
    if (memchr(line, '\r', len) != NULL || memchr(line, '\0', len) != NULL) {
        out_reply(s, "-ERR Invalid characters in the command");
        return true;
    }
    relay_command(s, line, len);
    return true;
}

static void
mark_gone(struct proxy_session *s, uint32_t n)
{
    if (n == 0 || n > s->nuidls)
        return;
    if (s->gone == NULL) {
        s->gone = calloc(s->nuidls, sizeof(*s->gone));
        if (s->gone == NULL)
            abort();
    }
    s->gone[n - 1] = true;
}

/* The end of a multi-line reply of the client's command. */
static bool
relay_data_end(struct proxy_session *s, bool fwd)
{
    bool retr = s->cmd == PC_RETR || (s->cmd == PC_MULTI && s->top_whole);
    uint32_t next = s->msgno + 1;

    s->up_busy = false;
    if (s->record) {
        out_flush(s);
        proxy_record_end(s, &s->rec); /* proxy_relay_recorded follows */
    } else {
        if (fwd)
            out_line(s, ".", 1);
        relay_finish(s);
    }
    if (retr)
        pf_start(s, next); /* while the client reads this one */
    return !s->dead;
}

/* One upstream line (or piece of a long one) of the command in flight;
 * false to stop for now. */
static bool
relay_upstream_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    bool ok, eol = true, fwd = s->cmd != PC_DELE_RETR;
    int r;

    if (s->up == NULL)
        return false;
    if (s->in_data)
        r = proxy_upstream_piece(s, &line, &len, &eol);
    else
        r = proxy_upstream_line(s, &line, &len, true);
    if (r == MG_AGAIN)
        return false;
    if (r != MG_OK) {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING, "upstream %s: %s",
                          s->login.upstream, s->why);
        if (!s->in_data)
            out_reply(s, "-ERR [SYS/TEMP] %s", s->why);
        session_kill(s, "upstream protocol violation");
        return false;
    }
    if (s->in_data) {
        bool stuffed = !s->mid_line && len > 0 && line[0] == '.';

        if (!s->mid_line && eol && len == 1 && line[0] == '.')
            return relay_data_end(s, fwd);
        s->mid_line = !eol;
        if (fwd) {
            out_add(s, line, len);
            if (eol)
                out_add(s, "\r\n", 2);
        }
        if (s->record && proxy_record_piece(s, &s->rec, line + stuffed,
                                            len - stuffed, eol) == MG_AGAIN)
            return false;
        return !s->blocked;
    }
    ok = line[0] == '+';
    if (fwd || !ok)
        out_line(s, line, len);
    switch (s->cmd) {
    case PC_MULTI:
    case PC_RETR:
    case PC_DELE_RETR:
        if (ok) {
            s->in_data = true;
            s->mid_line = false;
            return true;
        }
        proxy_record_abort(s, &s->rec);
        break;
    case PC_DELE:
        if (ok) {
            s->deleted++;
            mark_gone(s, s->msgno);
        }
        break;
    case PC_RSET:
        if (ok && s->gone != NULL)
            memset(s->gone, 0, s->nuidls * sizeof(*s->gone));
        break;
    case PC_QUIT:
        out_flush(s);
        session_kill(s, "QUIT");
        return false;
    default:
        break;
    }
    out_flush(s);
    relay_finish(s);
    return true;
}

/* The client's next command is RETR of a message read ahead: it needs
 * nothing from the upstream, which may still be sending the next one. */
static bool
client_next_local(struct proxy_session *s)
{
    const char *in, *lf;
    size_t n;
    uint32_t msgno;

    if (s->c == NULL)
        return false;
    cl(s)->peek(s->c, &in, &n);
    lf = memchr(in, '\n', n < 64 ? n : 64);
    if (lf == NULL)
        return false;
    n = (size_t)(lf - in);
    if (n > 0 && in[n - 1] == '\r')
        n--;
    return n > 5 && strncasecmp(in, "RETR ", 5) == 0 &&
           parse_num(in + 5, n - 5, false, &msgno) &&
           pf_ready(s, msgno) != NULL;
}

static void
relay_pump(struct proxy_session *s)
{
    while (!s->dead) {
        struct proxy_prefetch *pf = pf_reading(s);

        if (pf != NULL) {
            /* the upstream is sending a message read ahead: the client's
             * next command waits for the end of it */
            if (pf_step(s, pf))
                continue;
            if (!s->dead && s->cmd == PC_NONE && !s->blocked &&
                client_next_local(s) && relay_client_line(s))
                continue; /* answered from memory meanwhile */
            if (!s->dead)
                out_flush(s);
            return;
        }
        if (s->cmd == PC_NONE) {
            out_flush(s);
            if (s->closing) {
                out_reply(s, "-ERR [SYS/TEMP] The gateway is shutting down");
                session_kill(s, "shutdown");
                return;
            }
            if (s->up == NULL) {
                s->failures++;
                out_reply(s, "-ERR [SYS/TEMP] The upstream %s",
                          s->up_gone != NULL ? s->up_gone
                                             : "closed the connection");
                session_kill(s, "upstream closed");
                return;
            }
            if (s->blocked || !relay_client_line(s))
                return;
            continue;
        }
        if (s->cmd == PC_PFWAIT || s->blocked || s->rec.wait || s->rec.commit)
            return;
        if (!relay_upstream_line(s)) {
            if (!s->dead && !s->rec.commit)
                out_flush(s);
            return;
        }
    }
}

void
proxy_relay_resume(struct proxy_session *s)
{
    relay_pump(s);
}

/* A copy read ahead is durable, or could not be stored. */
static void
pf_recorded(struct proxy_session *s, struct proxy_prefetch *pf, bool ok)
{
    if (ok) {
        pf->done = true;
        s->recorded++;
        s->ahead++;
    } else {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING,
                          "message %u read ahead could not be recorded "
                          "(%s): the client's RETR retrieves it again",
                          (unsigned)pf->msgno, s->why);
        pf_drop(s, pf);
    }
    if (s->cmd == PC_PFWAIT) {
        s->cmd = PC_NONE;
        if (s->pf_then == 'Q') {
            if (!relay_pf_wait(s, 0, 'Q'))
                up_cmd(s, PC_QUIT, "QUIT", 0, 0, 0);
        } else if (!relay_pf_wait(s, s->msgno, 'D')) {
            relay_retr(s, s->msgno, true);
        }
    }
}

void
proxy_relay_recorded(struct proxy_session *s, struct proxy_rec *r, bool ok)
{
    bool ahead = r->ahead;

    if (r >= &s->pf[0].rec && r <= &s->pf[PROXY_AHEAD - 1].rec) {
        pf_recorded(
            s,
            (struct proxy_prefetch *)((char *)r -
                                      offsetof(struct proxy_prefetch, rec)),
            ok);
    } else if (s->cmd == PC_RETR) {
        if (!ok) {
            s->failures++;
            proxy_session_log(s, MG_LOG_WARNING,
                              "message %u could not be recorded (%s): the "
                              "client does not get its end",
                              (unsigned)s->msgno, s->why);
            session_kill(s, "recording failed");
            return;
        }
        s->recorded++;
        s->ahead += ahead;
        out_line(s, ".", 1);
        out_flush(s);
        relay_finish(s);
    } else if (s->cmd == PC_DELE_RETR) {
        if (!ok) {
            s->failures++;
            proxy_session_log(s, MG_LOG_WARNING,
                              "message %u could not be recorded (%s): DELE "
                              "refused",
                              (unsigned)s->msgno, s->why);
            out_reply(s, "-ERR [SYS/TEMP] The message could not be archived; "
                         "it was not deleted");
            relay_finish(s);
        } else {
            s->recorded++;
            s->record = false;
            s->in_data = false;
            up_cmd(s, PC_DELE, "DELE", 1, s->msgno, 0);
        }
    }
    relay_pump(s);
}

void
proxy_relay_upstream_event(struct proxy_session *s, enum mg_conn_event ev)
{
    switch (ev) {
    case MG_CONN_READABLE:
        relay_pump(s);
        return;
    case MG_CONN_DRAINED:
    case MG_CONN_TLS_READY:
        return;
    default:
        s->up = NULL;
        s->dpend = 0;
        s->up_gone = ev == MG_CONN_TIMEOUT ? "did not answer in time"
                                           : "closed the connection";
        if (s->cmd == PC_QUIT)
            return;
        if (pf_reading(s) != NULL)
            pf_lost(s, pf_reading(s));
        if (s->up_busy) { /* the client's command waits for it */
            s->failures++;
            if (!s->in_data)
                out_reply(s, "-ERR [SYS/TEMP] The upstream %s", s->up_gone);
            session_kill(s, ev == MG_CONN_TIMEOUT ? "upstream timeout"
                                                  : "upstream closed");
            return;
        }
        relay_pump(s); /* a commit in flight still ends its RETR */
        return;
    }
}

static void
proxy_client_cb(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    struct proxy_session *s = arg;

    proxy_enter(s);
    if (s->dead) {
        proxy_leave(s);
        return;
    }
    s->c = c;
    switch (ev) {
    case MG_CONN_DRAINED:
        s->blocked = false;
        relay_pump(s);
        break;
    case MG_CONN_READABLE:
        relay_pump(s);
        break;
    case MG_CONN_TLS_READY:
        break;
    case MG_CONN_TIMEOUT:
        out_reply(s, "-ERR [SYS/TEMP] Idle for too long");
        s->c = NULL; /* the core closes it */
        session_kill(s, "client timeout");
        break;
    default:
        s->c = NULL;
        session_kill(s, "client left");
        break;
    }
    proxy_leave(s);
}
