/*
 * modules/proxy/proxy_pop3.c -- the recording POP3 proxy: the pop3.login
 * handler that takes over `user%server%mailbox` logins, and the relay of
 * the client's commands to the upstream, one at a time.
 *
 * The client's commands are parsed and written anew (never forwarded as
 * sent), upstream replies are bounded and checked, and a RETR the mailbox
 * has no copy of is recorded: its terminating "." reaches the client only
 * once the copy is durable. A DELE of a message without a copy retrieves
 * and records it first.
 */
#include "config.h"

#include <stdarg.h>
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
    proxy_policy_free(&s->policy);
    free(s->wbuf);
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
    proxy_record_abort(s);
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
            "%u recorded, %u already stored, %u deleted, %u failures",
            s->login.upstream, s->login.mailbox, why, s->retrieved, s->recorded,
            s->deduped, s->deleted, s->failures);
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

static void
relay_retr(struct proxy_session *s, uint32_t n, bool dele)
{
    s->msgno = n;
    if (proxy_record_have(s, n)) {
        s->deduped++;
        s->record = false;
        if (dele) {
            s->cmd = PC_DELE;
            proxy_upstream_send(s, "DELE %u", (unsigned)n);
        } else {
            s->cmd = PC_RETR;
            proxy_upstream_send(s, "RETR %u", (unsigned)n);
        }
        return;
    }
    if (proxy_record_begin(s) != MG_OK) {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING, "cannot record message %u: %s",
                          (unsigned)n, s->why);
        out_reply(s, "-ERR [SYS/TEMP] The message cannot be archived now; "
                     "try again later");
        return;
    }
    s->record = true;
    s->cmd = dele ? PC_DELE_RETR : PC_RETR;
    proxy_upstream_send(s, "RETR %u", (unsigned)n);
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
        s->cmd = PC_QUIT;
        proxy_upstream_send(s, "QUIT");
    } else if ((VERB("STAT") || VERB("NOOP") || VERB("RSET")) && alen == 0) {
        s->cmd = PC_SINGLE;
        proxy_upstream_send(s, "%.4s", line);
    } else if (VERB("LIST") || VERB("UIDL")) {
        if (alen == 0) {
            s->cmd = PC_MULTI;
            proxy_upstream_send(s, "%.4s", line);
        } else if (parse_num(arg, alen, false, &n)) {
            s->cmd = PC_SINGLE;
            proxy_upstream_send(s, "%.4s %u", line, (unsigned)n);
        } else {
            out_reply(s, "-ERR Invalid message number");
        }
    } else if (VERB("RETR") || VERB("DELE")) {
        if (parse_num(arg, alen, false, &n)) {
            s->retrieved += VERB("RETR");
            relay_retr(s, n, VERB("DELE"));
        } else {
            out_reply(s, "-ERR Invalid message number");
        }
    } else if (VERB("TOP")) {
        const char *sp2 = memchr(arg, ' ', alen);

        if (sp2 != NULL && parse_num(arg, (size_t)(sp2 - arg), false, &n) &&
            parse_num(sp2 + 1, alen - (size_t)(sp2 - arg) - 1, true, &m)) {
            s->cmd = PC_MULTI; /* TOP records nothing */
            proxy_upstream_send(s, "TOP %u %u", (unsigned)n, (unsigned)m);
        } else {
            out_reply(s, "-ERR Syntax: TOP msg lines");
        }
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
relay_finish(struct proxy_session *s)
{
    s->cmd = PC_NONE;
    s->in_data = false;
    s->record = false;
    if (s->up != NULL)
        cl(s)->set_timeouts(s->up, 0, 0); /* the client's idle time rules */
}

/* One upstream line of the command in flight; false to stop for now. */
static bool
relay_upstream_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    bool ok, fwd = s->cmd != PC_DELE_RETR;
    int r;

    if (s->up == NULL)
        return false;
    r = proxy_upstream_line(s, &line, &len, !s->in_data);
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
        if (len == 1 && line[0] == '.') {
            if (s->record) {
                out_flush(s);
                s->rec_commit = true;
                proxy_record_end(s);
                return false;
            }
            if (fwd)
                out_line(s, ".", 1);
            relay_finish(s);
            return true;
        }
        if (fwd)
            out_line(s, line, len);
        if (s->record) {
            bool stuffed = line[0] == '.';

            if (proxy_record_line(s, line + stuffed, len - stuffed) ==
                MG_AGAIN) {
                return false;
            }
        }
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
            return true;
        }
        proxy_record_abort(s);
        out_flush(s);
        relay_finish(s);
        return true;
    case PC_DELE:
        s->deleted += ok;
        out_flush(s);
        relay_finish(s);
        return true;
    case PC_QUIT:
        out_flush(s);
        relay_finish(s);
        session_kill(s, "QUIT");
        return false;
    default:
        out_flush(s);
        relay_finish(s);
        return true;
    }
}

static void
relay_pump(struct proxy_session *s)
{
    while (!s->dead) {
        if (s->cmd == PC_NONE) {
            out_flush(s);
            if (s->closing) {
                out_reply(s, "-ERR [SYS/TEMP] The gateway is shutting down");
                session_kill(s, "shutdown");
                return;
            }
            if (s->blocked || !relay_client_line(s))
                return;
            continue;
        }
        if (s->blocked || s->rec_wait || s->rec_commit)
            return;
        if (!relay_upstream_line(s)) {
            if (!s->dead && !s->rec_commit)
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

void
proxy_relay_recorded(struct proxy_session *s, bool ok)
{
    s->rec_commit = false;
    if (s->cmd == PC_RETR) {
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
            s->cmd = PC_DELE;
            proxy_upstream_send(s, "DELE %u", (unsigned)s->msgno);
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
        if (s->cmd == PC_QUIT)
            return;
        s->failures++;
        if (s->cmd == PC_NONE || !s->in_data)
            out_reply(s, "-ERR [SYS/TEMP] The upstream %s",
                      ev == MG_CONN_TIMEOUT ? "did not answer in time"
                                            : "closed the connection");
        session_kill(s, ev == MG_CONN_TIMEOUT ? "upstream timeout"
                                              : "upstream closed");
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
