/*
 * modules/proxy/proxy_smtp_upstream.c -- the upstream SMTP server: connect
 * (the core resolves off the loop; the target policy judges every
 * address), implicit TLS on 465 or a mandatory STARTTLS elsewhere, EHLO
 * again over TLS, then AUTH PLAIN, else AUTH LOGIN, with the client's
 * credentials. Credentials only ever cross a verified TLS connection.
 *
 * Every reply is read line by line through psmtp_reply_add (bounded and
 * checked); the proxy never pipelines, so a byte beyond the end of a
 * reply is a protocol violation and ends the connection.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/base64.h>

#include "proxy_smtp.h"

static const struct mg_conn_api *
ca(const struct psmtp_session *s)
{
    return s->st->api->conn;
}

void
psmtp_upstream_send(struct psmtp_session *s, const char *line, size_t len)
{
    if (s->up == NULL)
        return;
    ca(s)->set_timeouts(s->up, s->st->upstream_ms, 0);
    if (ca(s)->write(s->up, line, len) == MG_AGAIN)
        s->u_wait = true;
}

static void
up_cmd(struct psmtp_session *s, const char *cmd)
{
    char buf[PSMTP_LINE_MAX + 3];
    size_t n = strlen(cmd);

    if (n > PSMTP_LINE_MAX)
        n = PSMTP_LINE_MAX; /* never: commands are built from checked parts */
    memcpy(buf, cmd, n);
    memcpy(buf + n, "\r\n", 2);
    psmtp_upstream_send(s, buf, n + 2);
}

void
psmtp_upstream_drop(struct psmtp_session *s, const char *why)
{
    if (why != NULL && why != s->why)
        snprintf(s->why, sizeof(s->why), "%s", why);
    if (s->up != NULL) {
        ca(s)->close(s->up);
        s->up = NULL;
    }
    s->phase = PS_GONE;
    s->txn_open = false;
}

void
psmtp_upstream_quit(struct psmtp_session *s)
{
    if (s->up != NULL && s->phase == PS_READY) {
        up_cmd(s, "QUIT");
        s->phase = PS_QUIT;
        ca(s)->close(s->up); /* flushes the QUIT, briefly */
        s->up = NULL;
    }
    psmtp_upstream_drop(s, NULL);
}

/* ------------------------------------------------------------ login */

/* Send `prefix` + base64(raw) + CRLF, and wipe everything. */
static void
up_send_b64(struct psmtp_session *s, const char *prefix, unsigned char *raw,
            size_t n)
{
    size_t pl = strlen(prefix), bl = (n + 2) / 3 * 4;
    char *line = malloc(pl + bl + 3);

    if (line == NULL)
        abort();
    memcpy(line, prefix, pl);
    mg_base64_encode(raw, n, line + pl);
    memcpy(line + pl + bl, "\r\n", 2);
    psmtp_upstream_send(s, line, pl + bl + 2);
    proxy_wipe(line, pl + bl + 2);
    proxy_wipe(raw, n);
    free(line);
}

static void
up_auth(struct psmtp_session *s)
{
    if (s->caps.auth_plain) {
        size_t zl = strlen(s->authzid), ul = strlen(s->login.user);
        size_t n = zl + 1 + ul + 1 + s->passlen;
        unsigned char *raw = malloc(n);

        if (raw == NULL)
            abort();
        memcpy(raw, s->authzid, zl);
        raw[zl] = '\0';
        memcpy(raw + zl + 1, s->login.user, ul);
        raw[zl + 1 + ul] = '\0';
        memcpy(raw + zl + ul + 2, s->pass, s->passlen);
        s->phase = PS_AUTH_PLAIN;
        up_send_b64(s, "AUTH PLAIN ", raw, n);
        free(raw);
        return;
    }
    if (s->caps.auth_login && s->authzid[0] == '\0') {
        s->phase = PS_AUTH_LOGIN;
        up_cmd(s, "AUTH LOGIN");
        return;
    }
    snprintf(s->why, sizeof(s->why),
             "The upstream offers neither AUTH PLAIN nor AUTH LOGIN%s",
             s->caps.auth_login ? " without an authorization identity" : "");
    psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
}

static void
up_ehlo(struct psmtp_session *s, enum psmtp_phase phase)
{
    char cmd[300];

    memset(&s->caps, 0, sizeof(s->caps)); /* forget what came before TLS */
    snprintf(cmd, sizeof(cmd), "EHLO %s", s->st->hostname);
    s->phase = phase;
    up_cmd(s, cmd);
}

static void
up_login_fail(struct psmtp_session *s, const char *what)
{
    const char *t = s->rep.nlines > 0 ? s->rep.lines[0] : "";

    snprintf(s->why, sizeof(s->why), "%s: %d %.300s", what, s->rep.code, t);
    psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
}

/* A complete reply during the login. */
static void up_read_loop(struct psmtp_session *s);

static void
up_login_reply(struct psmtp_session *s)
{
    int code = s->rep.code;
    const char *in;
    size_t n;

    switch (s->phase) {
    case PS_GREETING:
        if (code != 220) {
            up_login_fail(s, "The upstream refused the session");
            return;
        }
        up_ehlo(s, ca(s)->peer(s->up)->tls ? PS_EHLO2 : PS_EHLO1);
        return;
    case PS_EHLO1:
    case PS_EHLO2:
        if (code != 250) {
            up_login_fail(s, "The upstream refused EHLO");
            return;
        }
        for (size_t i = 1; i < s->rep.nlines; i++)
            psmtp_caps_line(&s->caps, s->rep.lines[i]);
        if (s->phase == PS_EHLO2) {
            up_auth(s);
            return;
        }
        if (!s->caps.starttls) {
            snprintf(s->why, sizeof(s->why),
                     "The upstream %s does not offer STARTTLS: credentials "
                     "are never sent without TLS",
                     s->login.upstream);
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
            return;
        }
        s->phase = PS_STARTTLS;
        up_cmd(s, "STARTTLS");
        return;
    case PS_STARTTLS:
        if (code != 220) {
            up_login_fail(s, "The upstream refused STARTTLS");
            return;
        }
        /* anything after the 220 came in plaintext and would be taken as
         * coming over TLS (CVE-2011-0411, the other way round) */
        ca(s)->peek(s->up, &in, &n);
        if (n > 0) {
            snprintf(s->why, sizeof(s->why),
                     "The upstream sent data between its STARTTLS reply and "
                     "the TLS handshake: refused");
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
            return;
        }
        s->phase = PS_TLS;
        if (ca(s)->starttls(s->up) != MG_OK) {
            snprintf(s->why, sizeof(s->why),
                     "The TLS handshake with the upstream failed");
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
        }
        return;
    case PS_AUTH_LOGIN:
    case PS_AUTH_USER:
        if (code == 334) {
            if (s->phase == PS_AUTH_LOGIN) {
                size_t ul = strlen(s->login.user);
                unsigned char *raw = malloc(ul + 1);

                if (raw == NULL)
                    abort();
                memcpy(raw, s->login.user, ul);
                s->phase = PS_AUTH_USER;
                up_send_b64(s, "", raw, ul);
                free(raw);
            } else {
                unsigned char *raw = malloc(s->passlen + 1);

                if (raw == NULL)
                    abort();
                memcpy(raw, s->pass, s->passlen);
                s->phase = PS_AUTH_PASS;
                up_send_b64(s, "", raw, s->passlen);
                free(raw);
            }
            return;
        }
        /* fall through: a refusal */
        /* FALLTHROUGH */
    case PS_AUTH_PLAIN:
    case PS_AUTH_PASS:
        proxy_wipe(s->pass, s->passlen);
        if (code == 235) {
            ca(s)->set_timeouts(s->up, 0, 0);
            s->phase = PS_READY;
            psmtp_login_done(s, MG_ACCEPT, 235, "2.7.0");
            return;
        }
        snprintf(s->why, sizeof(s->why), "Upstream: %d %.300s", code,
                 s->rep.nlines > 0 ? s->rep.lines[0] : "");
        if (code >= 500)
            psmtp_login_done(s, MG_PERMFAIL, 535, "5.7.8");
        else
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
        return;
    default:
        return;
    }
}

/* Read what the upstream sent: complete replies go to the login or the
 * relay. Not re-entered: a handshake that completes inside starttls(), or
 * a TLS write that reads, may deliver input while a reply is being
 * handled; the loop below reads it once that reply is done with. */
static void
up_read(struct psmtp_session *s)
{
    if (s->reading)
        return;
    s->reading = true;
    up_read_loop(s);
    s->reading = false;
}

static void
up_read_loop(struct psmtp_session *s)
{
    while (s->up != NULL && !s->dead) {
        const char *line, *why = NULL, *rest;
        size_t len, nrest;
        enum mg_eol eol;
        int r = ca(s)->getline(s->up, &line, &len, &eol);

        if (r == MG_AGAIN)
            return;
        if (r != MG_OK)
            why = "the upstream sent an overlong reply line";
        else if (memchr(line, '\r', len) != NULL ||
                 memchr(line, '\0', len) != NULL)
            why = "the upstream sent a reply line with a bare CR or a NUL";
        else if (s->phase == PS_READY || s->phase == PS_STREAM ||
                 s->phase == PS_CONNECT || s->phase == PS_TLS)
            why = "the upstream sent a reply nobody asked for";
        else
            (void)psmtp_reply_add(&s->rep, line, len, &why);
        if (why == NULL && !s->rep.done)
            continue;
        if (why == NULL) {
            /* we never pipeline: nothing may follow a reply */
            ca(s)->peek(s->up, &rest, &nrest);
            if (nrest > 0 && s->phase != PS_STARTTLS)
                why = "the upstream sent more than it was asked for";
        }
        if (why != NULL) {
            psmtp_log(s, MG_LOG_WARNING, "upstream %s: %s", s->login.upstream,
                      why);
            if (s->phase < PS_READY) {
                snprintf(s->why, sizeof(s->why), "Upstream protocol error: %s",
                         why);
                psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
            } else {
                snprintf(s->why, sizeof(s->why), "%s", why);
                psmtp_upstream_drop(s, NULL);
                psmtp_relay_lost(s);
            }
            return;
        }
        if (s->phase < PS_READY)
            up_login_reply(s);
        else
            psmtp_relay_reply(s);
        psmtp_reply_clear(&s->rep);
    }
}

static void
up_event(struct mg_conn *up, enum mg_conn_event ev, void *arg)
{
    struct psmtp_session *s = arg;

    (void)up;
    psmtp_enter(s);
    if (s->dead || s->up == NULL) {
        psmtp_leave(s);
        return;
    }
    switch (ev) {
    case MG_CONN_READABLE:
        up_read(s);
        break;
    case MG_CONN_TLS_READY:
        up_ehlo(s, PS_EHLO2);
        break;
    case MG_CONN_DRAINED:
        s->u_wait = false;
        psmtp_relay_drained(s);
        break;
    default:
        s->up = NULL; /* the core closes it when we return */
        snprintf(s->why, sizeof(s->why), "%s",
                 s->phase == PS_TLS
                     ? "The TLS handshake with the upstream failed (its "
                       "certificate is not trusted or not valid for the "
                       "target, or it broke the protocol)"
                 : ev == MG_CONN_TIMEOUT
                     ? "The upstream did not answer in time"
                     : "The upstream closed the connection");
        if (s->phase < PS_READY) {
            s->phase = PS_GONE;
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
        } else {
            enum psmtp_phase was = s->phase;

            psmtp_upstream_drop(s, NULL);
            if (was != PS_READY && was != PS_QUIT)
                psmtp_log(s, MG_LOG_WARNING, "upstream %s: %s",
                          s->login.upstream, s->why);
            psmtp_relay_lost(s);
        }
        break;
    }
    psmtp_leave(s);
}

/* ---------------------------------------------------------- connect */

static int
up_filter(const struct sockaddr *sa, socklen_t len, void *arg)
{
    struct psmtp_session *s = arg;

    return proxy_policy_filter(&s->policy, sa, len);
}

static void
up_connected(struct mg_conn *up, int status, const char *error, void *arg)
{
    struct psmtp_session *s = arg;
    const struct mg_conn_api *c = ca(s);
    const char *in;
    size_t n;

    psmtp_enter(s);
    s->connecting = false;
    if (s->dead) {
        if (up != NULL)
            c->close(up);
        psmtp_leave(s);
        return;
    }
    if (status != MG_OK || up == NULL) {
        if (s->policy.why[0] != '\0' &&
            (error == NULL || strstr(error, "no permitted address") != NULL)) {
            snprintf(s->why, sizeof(s->why), "Proxy target refused: %.370s",
                     s->policy.why);
            psmtp_login_done(s, MG_PERMFAIL, 535, "5.7.1");
        } else {
            snprintf(s->why, sizeof(s->why),
                     "Cannot connect to the upstream %s: %s", s->login.upstream,
                     error != NULL ? error : "connection failed");
            psmtp_login_done(s, MG_TEMPFAIL, 454, "4.7.0");
        }
        psmtp_leave(s);
        return;
    }
    s->up = up;
    c->set_line_max(up, PSMTP_LINE_MAX);
    c->set_handler(up, up_event, s);
    c->set_timeouts(up, s->st->upstream_ms, 0);
    c->pause_read(up, false);
    s->phase = PS_GREETING;
    c->peek(up, &in, &n);
    if (n > 0)
        up_read(s);
    psmtp_leave(s);
}

int
psmtp_upstream_start(struct psmtp_session *s, const char **why)
{
    const struct proxy_state *st = s->st;
    struct mg_connect_spec spec;

    proxy_connect_spec(st, &s->login, &spec);
    spec.filter = up_filter;

    s->phase = PS_CONNECT;
    s->connecting = true;
    if (st->api->connect(st->m, &spec, up_connected, s, why) != MG_OK) {
        s->connecting = false;
        return MG_ERROR;
    }
    return MG_OK;
}
