/*
 * modules/proxy/proxy_pop3.c -- the recording POP3 proxy: the pop3.login
 * handler that takes over `user%server%mailbox` logins, the session's
 * lifetime, the client's events and the output to the client.
 *
 * A login the proxy admits becomes a session: proxy_upstream.c connects
 * and logs in upstream, then proxy_login_done() answers the client and
 * hands its connection to the relay (proxy_pop3_relay.c), which reads
 * messages ahead through proxy_pop3_ahead.c and records them through
 * proxy_record.c. proxy_pop3.h maps the parts.
 *
 * Client output is batched in s->obuf and written once PROXY_FLUSH bytes
 * wait or a reply is complete. A session is freed at the last
 * proxy_leave() once it is dead, never inside a callback still using it.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_pop3.h"

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
void
proxy_session_kill(struct proxy_session *s, const char *why)
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

/* ------------------------------------------- the upstream's queue */

/* A command went upstream for `who` (a record-ahead slot's index or
 * PROXY_UPQ_CLIENT): its reply comes after those of the ones before. */
void
proxy_upq_push(struct proxy_session *s, uint8_t who)
{
    if (s->nupq >= sizeof(s->upq))
        abort(); /* never: one client command, PROXY_AHEAD slots */
    s->upq[s->nupq++] = who;
}

/* Who the upstream's next reply is for: a slot, PROXY_UPQ_CLIENT, or -1
 * when nothing is awaited. */
int
proxy_upq_head(const struct proxy_session *s)
{
    return s->nupq > 0 ? s->upq[0] : -1;
}

/* The reply at the head is complete; an idle upstream has no reply
 * timeout (the client's idle time rules). */
void
proxy_upq_pop(struct proxy_session *s)
{
    if (s->nupq == 0)
        return;
    memmove(s->upq, s->upq + 1, --s->nupq);
    if (s->nupq == 0 && s->up != NULL)
        proxy_conn(s)->set_timeouts(s->up, 0, 0);
}

/* Commands read ahead that are awaited. */
unsigned
proxy_upq_ahead(const struct proxy_session *s)
{
    unsigned n = 0;

    for (unsigned i = 0; i < s->nupq; i++)
        n += s->upq[i] != PROXY_UPQ_CLIENT;
    return n;
}

/* ---------------------------------------------------------- output */

/* Write what is queued for the client; s->blocked when it is behind. */
void
proxy_out_flush(struct proxy_session *s)
{
    if (s->olen == 0 || s->c == NULL)
        return;
    if (proxy_conn(s)->write(s->c, s->obuf, s->olen) == MG_AGAIN)
        s->blocked = true;
    s->olen = 0;
}

/* Queue output for the client, written once PROXY_FLUSH bytes wait. */
void
proxy_out_add(struct proxy_session *s, const char *data, size_t len)
{
    if (s->obuf == NULL) {
        s->obuf = malloc(PROXY_FLUSH + PROXY_DATA_LINE + 2);
        if (s->obuf == NULL)
            abort();
    }
    memcpy(s->obuf + s->olen, data, len);
    s->olen += len;
    if (s->olen >= PROXY_FLUSH)
        proxy_out_flush(s);
}

/* Queue a line for the client (CRLF added). */
void
proxy_out_line(struct proxy_session *s, const char *line, size_t len)
{
    proxy_out_add(s, line, len);
    proxy_out_add(s, "\r\n", 2);
}

/* A status line for the client, written at once. */
void
proxy_out_reply(struct proxy_session *s, const char *fmt, ...)
{
    char buf[PROXY_STATUS_MAX];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    proxy_out_line(s, buf,
                   (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
    proxy_out_flush(s);
}

/* ----------------------------------------------------------- login */

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
        proxy_session_kill(s, "the client left");
        return;
    }
    if (!s->dead) {
        proxy_session_log(s, MG_LOG_INFO,
                          "proxy login to %s for mailbox %s "
                          "refused: %s",
                          s->login.upstream, s->login.mailbox, s->reply);
        (void)api->hook_resume(s->call_id, v, &reply);
    }
    proxy_session_kill(s, "login failed");
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
            proxy_out_reply(s, "-ERR [SYS/TEMP] The gateway is shutting down");
            proxy_session_kill(s, "shutdown");
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

/* --------------------------------------------------- client events */

/* The client's connection once the relay runs: input and drained output
 * go on with the relay; a timeout or a close ends the session. */
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
        proxy_relay_resume(s);
        break;
    case MG_CONN_READABLE:
        proxy_relay_resume(s);
        break;
    case MG_CONN_TLS_READY:
        break;
    case MG_CONN_TIMEOUT:
        proxy_out_reply(s, "-ERR [SYS/TEMP] Idle for too long");
        s->c = NULL; /* the core closes it */
        proxy_session_kill(s, "client timeout");
        break;
    default:
        s->c = NULL;
        proxy_session_kill(s, "client left");
        break;
    }
    proxy_leave(s);
}
