/*
 * modules/smtp/smtp_auth.c -- AUTH PLAIN and LOGIN (RFC 4954): the exchange,
 * the smtp.auth hook and the takeover of the session by its handler.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mailgate/base64.h>
#include <mailgate/module.h>

#include "smtp_session.h"

void
smtp_auth_wipe(struct smtp_session *s)
{
    smtp_wipe(s->auth_pass, sizeof(s->auth_pass));
    smtp_wipe(s->auth_authzid, sizeof(s->auth_authzid));
}

/* Takeover: the conn is the handler's; this session ends quietly. */
static void
smtp_auth_takeover(struct smtp_session *s)
{
    struct smtp_state *st = s->st;
    struct mg_conn *c = s->c;
    mg_conn_fn fn = s->h.auth.handler;
    void *arg = s->h.auth.handler_arg;
    struct smtp_takeover *t, **pp;
    const char *in;
    size_t len;

    if (s->call.reply.code != 0) {
        if (!smtp_reply_fits(&s->call.reply, MG_ACCEPT, 0) ||
            smtp_api->conn->write_reply(c, &s->call.reply) != MG_OK)
            smtp_log(s, MG_LOG_WARNING,
                     "smtp.auth: the takeover reply was not written");
    }
    /* forget conns that are gone, remember this one for SIGTERM */
    for (pp = &st->taken; *pp != NULL;) {
        if (smtp_api->conn->find((*pp)->conn_id) == NULL) {
            t = *pp;
            *pp = t->next;
            free(t);
        } else {
            pp = &(*pp)->next;
        }
    }
    t = smtp_alloc(sizeof(*t));
    t->conn_id = s->id;
    t->on_shutdown = s->h.auth.on_shutdown;
    t->arg = arg;
    t->next = st->taken;
    st->taken = t;

    smtp_log(s, MG_LOG_DEBUG, "session taken over by an smtp.auth handler");
    smtp_api->conn->set_line_max(c, SMTP_LINE_MAX);
    smtp_api->conn->set_handler(c, fn, arg);
    if (s->paused)
        smtp_api->conn->pause_read(c, false);
    s->closed = true;   /* freed without closing the conn */
    s->released = true; /* the conn lives on: no smtp.close */
    s->c = NULL;
    smtp_api->conn->peek(c, &in, &len);
    if (len > 0)
        fn(c, MG_CONN_READABLE, arg);
}

static void
smtp_auth_cont(struct smtp_session *s, enum mg_verdict v)
{
    smtp_auth_wipe(s);
    smtp_enter_state(s, SMTP_ST_READY);
    switch (v) {
    case MG_ACCEPT:
        if (s->h.auth.keep_engine) {
            free(s->auth_user);
            s->auth_user = smtp_strdup(s->auth_user_buf);
            smtp_reply_hook(s, v, 0, 235, "2.7.0", "Authentication successful");
            smtp_api->conn->set_line_max(s->c, SMTP_LINE_MAX);
            return;
        }
        if (s->h.auth.handler == NULL) {
            smtp_log(s, MG_LOG_ERROR,
                     "smtp.auth: a handler took the session over without "
                     "a conn handler");
            smtp_reply(s, 454, "4.7.0", "Temporary authentication failure");
            return;
        }
        smtp_auth_takeover(s);
        return;
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 454, "4.7.0",
                        "Temporary authentication failure");
        return;
    default:
        smtp_reply_hook(s, v == MG_PERMFAIL ? v : MG_PERMFAIL, 0, 535, "5.7.8",
                        "Authentication credentials invalid");
        s->errors++;
        return;
    }
}

static void
smtp_auth_run(struct smtp_session *s)
{
    memset(&s->h.auth, 0, sizeof(s->h.auth));
    s->h.auth.s = &s->view;
    s->h.auth.mechanism = s->auth_mech;
    s->h.auth.authzid = s->auth_authzid;
    s->h.auth.user = s->auth_user_buf;
    s->h.auth.password = s->auth_pass;
    s->h.auth.caps = s->caps;
    smtp_hook(s, "smtp.auth", &s->h.auth, smtp_auth_cont);
}

/* A base64 response of the exchange; false when refused (reply sent). */
static bool
smtp_auth_response(struct smtp_session *s, const char *b64, size_t len)
{
    char buf[3 * SMTP_AUTH_MAX + 3];
    long n;

    if (len == 1 && b64[0] == '*') {
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.7.0", "Authentication cancelled");
        return false;
    }
    if (len == 1 && b64[0] == '=')
        len = 0;
    n = mg_base64_decode(b64, len, buf, sizeof(buf));
    if (n < 0 || (strcmp(s->auth_mech, "LOGIN") == 0 &&
                  memchr(buf, '\0', (size_t)n) != NULL)) {
        smtp_wipe(buf, sizeof(buf));
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.5.2", "Cannot decode the response");
        return false;
    }
    if (strcmp(s->auth_mech, "PLAIN") == 0) {
        const char *a = buf, *u, *p, *end = buf + n;

        u = memchr(a, '\0', (size_t)(end - a));
        p = u != NULL ? memchr(u + 1, '\0', (size_t)(end - u - 1)) : NULL;
        if (u == NULL || p == NULL ||
            memchr(p + 1, '\0', (size_t)(end - p - 1)) != NULL ||
            (size_t)(u - a) > SMTP_AUTH_MAX ||
            (size_t)(p - u - 1) > SMTP_AUTH_MAX ||
            (size_t)(end - p - 1) > SMTP_AUTH_MAX || p == u + 1) {
            smtp_wipe(buf, sizeof(buf));
            smtp_enter_state(s, SMTP_ST_READY);
            smtp_error(s, 501, "5.5.2", "Invalid PLAIN response");
            return false;
        }
        memcpy(s->auth_authzid, a, (size_t)(u - a));
        s->auth_authzid[u - a] = '\0';
        memcpy(s->auth_user_buf, u + 1, (size_t)(p - u - 1));
        s->auth_user_buf[p - u - 1] = '\0';
        memcpy(s->auth_pass, p + 1, (size_t)(end - p - 1));
        s->auth_pass[end - p - 1] = '\0';
        smtp_wipe(buf, sizeof(buf));
        smtp_auth_run(s);
        return true;
    }
    /* LOGIN */
    if (n > SMTP_AUTH_MAX) {
        smtp_wipe(buf, sizeof(buf));
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.5.2", "Response too long");
        return false;
    }
    if (s->auth_step <= 1) {
        memcpy(s->auth_user_buf, buf, (size_t)n);
        s->auth_user_buf[n] = '\0';
        s->auth_step = 2;
        smtp_reply(s, 334, NULL, "UGFzc3dvcmQ6");
        smtp_enter_state(s, SMTP_ST_AUTH);
        return true;
    }
    memcpy(s->auth_pass, buf, (size_t)n);
    s->auth_pass[n] = '\0';
    smtp_wipe(buf, sizeof(buf));
    s->auth_authzid[0] = '\0';
    smtp_auth_run(s);
    return true;
}

void
smtp_cmd_auth(struct smtp_session *s, const struct smtp_command *cmd)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    const char *sp;
    size_t mlen;

    if (!smtp_api->hook_has("smtp.auth")) {
        smtp_error(s, 502, "5.5.1", "AUTH not available");
        return;
    }
    if (!p->tls && !s->plain_auth) {
        smtp_error(s, 530, "5.7.0", "Must issue a STARTTLS command first");
        return;
    }
    if (s->state == SMTP_ST_INIT) {
        smtp_error(s, 503, "5.5.1", "Send EHLO first");
        return;
    }
    if (s->state != SMTP_ST_READY || s->auth_user != NULL) {
        smtp_error(s, 503, "5.5.1", "Bad sequence of commands");
        return;
    }
    sp = memchr(cmd->arg, ' ', cmd->arglen);
    mlen = sp != NULL ? (size_t)(sp - cmd->arg) : cmd->arglen;
    if (mlen == 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0)
        snprintf(s->auth_mech, sizeof(s->auth_mech), "PLAIN");
    else if (mlen == 5 && strncasecmp(cmd->arg, "LOGIN", 5) == 0)
        snprintf(s->auth_mech, sizeof(s->auth_mech), "LOGIN");
    else {
        smtp_error(s, 504, "5.5.4", "Unrecognized authentication type");
        return;
    }
    s->auth_authzid[0] = s->auth_user_buf[0] = s->auth_pass[0] = '\0';
    s->auth_step = 0;
    if (sp != NULL) {
        const char *ir = sp + 1;
        size_t irlen = cmd->arglen - mlen - 1;

        s->auth_step = 1;
        smtp_auth_response(s, ir, irlen);
        return;
    }
    if (strcmp(s->auth_mech, "PLAIN") == 0) {
        smtp_reply(s, 334, NULL, " ");
    } else {
        s->auth_step = 1;
        smtp_reply(s, 334, NULL, "VXNlcm5hbWU6");
    }
    smtp_enter_state(s, SMTP_ST_AUTH);
}

/* One line in the AUTH exchange. */
void
smtp_auth_line(struct smtp_session *s, const char *line, size_t len)
{
    smtp_auth_response(s, line, len);
}
