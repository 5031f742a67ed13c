/*
 * modules/proxy/proxy_smtp.c -- the SMTP half of the proxy: the smtp.auth
 * handler for `user%server%mailbox` logins, and the life of a session.
 *
 * The login is checked as in the POP3 half (the name, the mailbox: it
 * exists, is active and accepts proxy sessions; the target policy), then
 * the run suspends while the upstream is connected, secured and logged in
 * with the client's credentials; the client gets its 235 only once the
 * upstream said 235. The engine keeps the session (keep_engine) and asks
 * the relay (proxy_smtp_relay.c) at every MAIL, RCPT and DATA/BDAT.
 *
 * When the client's session ends (smtp.close) the upstream gets its QUIT
 * at once: it counts against the provider's per-client connection limit.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_smtp.h"

static struct psmtp_session *psmtp_sessions;

struct psmtp_session *
psmtp_find(uint64_t conn_id)
{
    for (struct psmtp_session *s = psmtp_sessions; s != NULL; s = s->next) {
        if (s->id == conn_id && !s->dead)
            return s;
    }
    return NULL;
}

void
psmtp_log(struct psmtp_session *s, enum mg_log_level level, const char *fmt,
          ...)
{
    va_list ap;

    va_start(ap, fmt);
    proxy_vlog(s->st, s->id, level, fmt, ap);
    va_end(ap);
}

static void
session_free(struct psmtp_session *s)
{
    for (struct psmtp_session **pp = &psmtp_sessions; *pp != NULL;
         pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (s->up != NULL)
        s->st->api->conn->close(s->up);
    if (s->pass != NULL) {
        proxy_wipe(s->pass, s->passlen);
        free(s->pass);
    }
    psmtp_relay_release(s);
    psmtp_reply_clear(&s->rep);
    psmtp_reply_clear(&s->out);
    proxy_policy_free(&s->policy);
    free(s->cmd);
    free(s->ubuf);
    free(s->sbuf);
    free(s);
}

void
psmtp_enter(struct psmtp_session *s)
{
    s->depth++;
}

void
psmtp_leave(struct psmtp_session *s)
{
    if (--s->depth == 0 && s->dead && !s->connecting)
        session_free(s);
}

/* The session is over: the upstream gets a QUIT when it is idle, and is
 * dropped otherwise (an unfinished DATA is never completed). */
static void
session_end(struct psmtp_session *s, const char *why)
{
    if (s->dead)
        return;
    if (s->phase > PS_AUTH_PASS) /* it was logged in */
        psmtp_log(s, s->failed > 0 ? MG_LOG_WARNING : MG_LOG_INFO,
                  "proxy session to %s for mailbox %s ended (%s): %u sent "
                  "and recorded, %u failed",
                  s->login.upstream, s->login.mailbox, why, s->sent, s->failed);
    if (s->pass != NULL)
        proxy_wipe(s->pass, s->passlen);
    psmtp_relay_release(s);
    psmtp_upstream_quit(s);
    s->dead = true;
}

enum mg_verdict
proxy_smtp_close(struct mg_hook_call *call, void *arg)
{
    struct psmtp_session *s = psmtp_find(call->conn_id);

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    psmtp_enter(s);
    /* a message at its end is settled first: the engine cancelled its
     * run, so the resume after the upstream's answer fails and ends the
     * session */
    if (s->wait != PW_END)
        session_end(s, "the client left");
    psmtp_leave(s);
    return MG_PASS;
}

/* ---------------------------------------------------- hook replies */

static void
resume(struct psmtp_session *s, enum mg_verdict v)
{
    uint64_t id = s->call_id;

    s->wait = PW_NONE;
    s->call_id = 0;
    if (s->st->api->hook_resume(id, v, &s->reply) != MG_OK &&
        s->phase >= PS_READY)
        session_end(s, "the client left");
}

void
psmtp_text_reply(struct psmtp_session *s, struct mg_reply *r, int code,
                 const char *ecode, const char *fmt, va_list ap)
{
    (void)vsnprintf(s->text, sizeof(s->text), fmt, ap);
    for (char *p = s->text; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    }
    s->text_lines[0] = s->text;
    r->code = code;
    r->ecode = ecode;
    r->nlines = 1;
    r->lines = s->text_lines;
}

void
psmtp_resume_text(struct psmtp_session *s, enum mg_verdict v, int code,
                  const char *ecode, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    psmtp_text_reply(s, &s->reply, code, ecode, fmt, ap);
    va_end(ap);
    resume(s, v);
}

void
psmtp_reply_keep(struct psmtp_session *s)
{
    /* the lines live until the engine wrote them (the next reply) */
    psmtp_reply_clear(&s->out);
    s->out = s->rep;
    memset(&s->rep, 0, sizeof(s->rep));
    for (size_t i = 0; i < s->out.nlines; i++)
        s->out.ptrs[i] = s->out.lines[i];
}

void
psmtp_resume_out(struct psmtp_session *s, enum mg_verdict v,
                 const char *def_ecode)
{
    psmtp_reply_out(&s->out, def_ecode, &s->reply);
    resume(s, v);
}

void
psmtp_resume_reply(struct psmtp_session *s, enum mg_verdict v,
                   const char *def_ecode)
{
    psmtp_reply_keep(s);
    psmtp_resume_out(s, v, def_ecode);
}

void
psmtp_login_done(struct psmtp_session *s, enum mg_verdict v, int code,
                 const char *ecode)
{
    if (s->wait != PW_LOGIN)
        return;
    if (s->pass != NULL)
        proxy_wipe(s->pass, s->passlen);
    if (v == MG_ACCEPT) {
        s->logged_in = true;
        psmtp_log(s, MG_LOG_INFO, "proxy login to %s for mailbox %s (%s)",
                  s->login.upstream, s->login.mailbox,
                  s->up != NULL &&
                          s->st->api->conn->peer(s->up)->tls_version != NULL
                      ? s->st->api->conn->peer(s->up)->tls_version
                      : "TLS");
        psmtp_resume_text(s, MG_ACCEPT, code, ecode,
                          "Authenticated at %s; messages are recorded",
                          s->login.upstream);
        return;
    }
    psmtp_log(s, MG_LOG_INFO, "proxy login to %s for mailbox %s refused: %s",
              s->login.upstream, s->login.mailbox, s->why);
    psmtp_upstream_drop(s, NULL);
    psmtp_resume_text(s, v, code, ecode, "%s", s->why);
    s->dead = true;
}

/* ------------------------------------------------------------ login */

static enum mg_verdict
refuse(struct mg_hook_call *call, enum mg_verdict v, int code,
       const char *ecode, const char *text)
{
    static const char *lines[1];

    lines[0] = text;
    call->reply.code = code;
    call->reply.ecode = ecode;
    call->reply.nlines = 1;
    call->reply.lines = lines;
    return v;
}

enum mg_verdict
proxy_smtp_auth(struct mg_hook_call *call, void *arg)
{
    struct proxy_state *st = arg;
    struct mg_hook_smtp_auth *h = call->data;
    struct proxy_login login;
    struct proxy_policy policy;
    struct psmtp_session *s;
    const struct mg_peer *peer = h->s->peer;
    const char *why = NULL;
    static char text[480];
    int port = h->s->listener_tls == MG_TLS_IMPLICIT ? 465 : 587;
    enum mg_verdict v;

    v = proxy_admit(st, call->conn_id, h->user, port, &login, &policy, &why);
    if (v == MG_PASS)
        return MG_PASS; /* not a proxy login */
    if (v != MG_ACCEPT)
        return v == MG_TEMPFAIL ? refuse(call, v, 454, "4.7.0", why)
                                : refuse(call, v, 535, "5.7.8", why);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->st = st;
    s->id = call->conn_id;
    s->call_id = call->id;
    s->wait = PW_LOGIN;
    s->login = login;
    s->policy = policy;
    s->policy.login = &s->login;
    s->passlen = strlen(h->password);
    s->pass = malloc(s->passlen + 1);
    if (s->pass == NULL)
        abort();
    memcpy(s->pass, h->password, s->passlen + 1);
    snprintf(s->authzid, sizeof(s->authzid), "%s", h->authzid);
    if (peer != NULL) {
        snprintf(s->peer, sizeof(s->peer), "%s", peer->addr);
        if (peer->tls)
            snprintf(s->peer_tls, sizeof(s->peer_tls), "%s %s",
                     peer->tls_version ? peer->tls_version : "",
                     peer->tls_cipher ? peer->tls_cipher : "");
    }
    snprintf(s->helo, sizeof(s->helo), "%s",
             h->s->helo != NULL ? h->s->helo : "unknown");
    s->next = psmtp_sessions;
    psmtp_sessions = s;

    if (proxy_policy_precheck(&s->policy) != 0) {
        snprintf(text, sizeof(text), "Proxy target refused: %s", s->policy.why);
        psmtp_log(s, MG_LOG_INFO, "%s", text);
        s->dead = true;
        session_free(s);
        return refuse(call, MG_PERMFAIL, 535, "5.7.1", text);
    }
    h->keep_engine = true;
    psmtp_enter(s);
    if (psmtp_upstream_start(s, &why) != MG_OK) {
        snprintf(text, sizeof(text), "Cannot connect to the upstream: %s", why);
        s->dead = true;
        psmtp_leave(s);
        return refuse(call, MG_TEMPFAIL, 454, "4.7.0", text);
    }
    psmtp_leave(s);
    return MG_SUSPEND;
}

int
proxy_smtp_hooks(struct mg_modctx *m, const struct mg_core_api *api,
                 struct proxy_state *st, const char **error_r)
{
    static const struct {
        const char *hook;
        mg_hook_fn fn;
    } hooks[] = {
        {"smtp.auth", proxy_smtp_auth},    {"smtp.mail", proxy_smtp_mail},
        {"smtp.rcpt", proxy_smtp_rcpt},    {"smtp.data", proxy_smtp_data},
        {"smtp.data.tee", proxy_smtp_tee}, {"smtp.data.end", proxy_smtp_end},
        {"smtp.close", proxy_smtp_close},
    };

    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++) {
        if (api->hook_add(m, hooks[i].hook, 50, hooks[i].fn, st, error_r) !=
            MG_OK)
            return MG_ERROR;
    }
    return MG_OK;
}
