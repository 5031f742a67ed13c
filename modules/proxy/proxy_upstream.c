/*
 * modules/proxy/proxy_upstream.c -- the upstream POP3 server: connect
 * (the core resolves off the loop and applies the target policy to every
 * address), implicit TLS on 995 or a mandatory STLS elsewhere, CAPA again
 * over TLS, the login with the client's credentials, the UIDL listing the
 * de-duplication needs. Credentials are only ever sent over verified TLS.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mailgate/base64.h>

#include "proxy.h"

static void proxy_up_cb(struct mg_conn *up, enum mg_conn_event ev, void *arg);

static const struct mg_conn_api *
up_conn(const struct proxy_session *s)
{
    return s->st->api->conn;
}

void
proxy_upstream_send(struct proxy_session *s, const char *fmt, ...)
{
    char buf[PROXY_STATUS_MAX + 16];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf) - 2)
        n = 0; /* never: commands are built from checked parts */
    memcpy(buf + n, "\r\n", 2);
    up_conn(s)->set_timeouts(s->up, s->st->upstream_ms, 0);
    (void)up_conn(s)->write(s->up, buf, (size_t)n + 2);
    proxy_wipe(buf, sizeof(buf)); /* it may have held the password */
}

/* Drop the data piece handed out last. */
static void
up_consume(struct proxy_session *s)
{
    if (s->dpend > 0) {
        up_conn(s)->consume(s->up, s->dpend);
        s->dpend = 0;
    }
}

int
proxy_upstream_piece(struct proxy_session *s, const char **data, size_t *len,
                     bool *eol)
{
    const char *in, *lf;
    size_t n, win, used;

    up_consume(s);
    up_conn(s)->peek(s->up, &in, &n);
    win = n < PROXY_DATA_LINE ? n : PROXY_DATA_LINE;
    lf = memchr(in, '\n', win);
    if (lf != NULL) {
        used = (size_t)(lf - in) + 1;
        *len = used - 1;
        if (*len > 0 && in[*len - 1] == '\r')
            (*len)--;
        *eol = true;
    } else if (n >= PROXY_DATA_LINE) {
        /* a long line: hand it on in parts; a CR at the end may be the
         * start of its CRLF and waits for the next part */
        used = win - (in[win - 1] == '\r');
        *len = used;
        *eol = false;
    } else {
        return MG_AGAIN;
    }
    if (memchr(in, '\r', *len) != NULL || memchr(in, '\0', *len) != NULL) {
        s->why = "the upstream sent a line with a bare CR or a NUL";
        return MG_ERROR;
    }
    *data = in;
    s->dpend = used;
    return MG_OK;
}

int
proxy_upstream_line(struct proxy_session *s, const char **line, size_t *len,
                    bool status)
{
    enum mg_eol eol;
    int r;

    up_consume(s);
    r = up_conn(s)->getline(s->up, line, len, &eol);

    if (r == MG_AGAIN)
        return MG_AGAIN;
    if (r != MG_OK) {
        s->why = "the upstream sent an overlong line";
        return MG_ERROR;
    }
    if (memchr(*line, '\r', *len) != NULL ||
        memchr(*line, '\0', *len) != NULL) {
        s->why = "the upstream sent a line with a bare CR or a NUL";
        return MG_ERROR;
    }
    if (!status)
        return MG_OK;
    if (*len > PROXY_STATUS_MAX ||
        !((*len >= 3 && memcmp(*line, "+OK", 3) == 0 &&
           (*len == 3 || (*line)[3] == ' ')) ||
          (*len >= 4 && memcmp(*line, "-ERR", 4) == 0 &&
           (*len == 4 || (*line)[4] == ' ')))) {
        s->why = "the upstream sent an invalid status line";
        return MG_ERROR;
    }
    return MG_OK;
}

/* ------------------------------------------------------------ login */

static const char *
up_text(const char *line, size_t len, char *buf, size_t size)
{
    size_t o = 0, skip = line[0] == '+' ? 3 : 4;

    for (size_t i = skip; i < len && o + 1 < size; i++) {
        unsigned char ch = (unsigned char)line[i];

        if (o == 0 && ch == ' ')
            continue;
        buf[o++] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    buf[o] = '\0';
    return buf;
}

static void
up_fail(struct proxy_session *s, enum mg_verdict v, const char *ecode,
        const char *what)
{
    proxy_login_done(s, v, ecode, "%s", what);
}

static void
up_send_login(struct proxy_session *s)
{
    if (s->authzid[0] != '\0' || (!s->caps.user && s->caps.sasl_plain)) {
        size_t zl = strlen(s->authzid), ul = strlen(s->login.user);
        size_t n = zl + 1 + ul + 1 + s->passlen;
        unsigned char *raw = malloc(n);
        char *b64 = malloc(n / 3 * 4 + 8);

        if (raw == NULL || b64 == NULL)
            abort();
        memcpy(raw, s->authzid, zl);
        raw[zl] = '\0';
        memcpy(raw + zl + 1, s->login.user, ul);
        raw[zl + 1 + ul] = '\0';
        memcpy(raw + zl + ul + 2, s->pass, s->passlen);
        mg_base64_encode(raw, n, b64);
        s->phase = PX_AUTH;
        if (strlen(b64) > PROXY_STATUS_MAX - 16) {
            up_fail(s, MG_PERMFAIL, "AUTH", "The credentials are too long");
        } else {
            proxy_upstream_send(s, "AUTH PLAIN %s", b64);
        }
        proxy_wipe(raw, n);
        proxy_wipe(b64, strlen(b64));
        free(raw);
        free(b64);
        return;
    }
    s->phase = PX_USER;
    proxy_upstream_send(s, "USER %s", s->login.user);
}

static void
up_caps_line(struct proxy_session *s, const char *line, size_t len)
{
    struct proxy_caps *c = &s->caps;
    size_t kw = 0;

    while (kw < len && line[kw] != ' ')
        kw++;
#define IS(word) (kw == sizeof(word) - 1 && strncasecmp(line, word, kw) == 0)
    if (IS("STLS"))
        c->stls = true;
    else if (IS("USER"))
        c->user = true;
    else if (IS("UIDL"))
        c->uidl = true;
    else if (IS("TOP"))
        c->top = true;
    else if (IS("PIPELINING"))
        c->pipelining = true;
    else if (IS("RESP-CODES"))
        c->resp_codes = true;
    else if (IS("AUTH-RESP-CODE"))
        c->auth_resp_code = true;
    else if (IS("EXPIRE"))
        c->expire = true;
    else if (IS("LOGIN-DELAY"))
        c->login_delay = true;
    else if (IS("SASL")) {
        for (size_t i = kw; i + 5 <= len; i++) {
            if (line[i] == ' ' && strncasecmp(line + i + 1, "PLAIN", 5) == 0 &&
                (i + 6 == len || line[i + 6] == ' '))
                c->sasl_plain = true;
        }
    }
#undef IS
}

static bool
up_uidl_line(struct proxy_session *s, const char *line, size_t len)
{
    uint32_t n = 0;
    size_t i = 0;

    while (i < len && line[i] >= '0' && line[i] <= '9' && i < 10)
        n = n * 10 + (uint32_t)(line[i++] - '0');
    if (i == 0 || i >= len || line[i] != ' ' || n == 0 || n > PROXY_UIDLS_MAX ||
        len - i - 1 == 0 || len - i - 1 > PROXY_UIDL_MAX)
        return false;
    for (size_t j = i + 1; j < len; j++) {
        if (line[j] < 0x21 || line[j] > 0x7e)
            return false;
    }
    if (n > s->nuidls) {
        char **v = realloc(s->uidls, n * sizeof(*v));

        if (v == NULL)
            abort();
        memset(v + s->nuidls, 0, (n - s->nuidls) * sizeof(*v));
        s->uidls = v;
        s->nuidls = n;
    }
    free(s->uidls[n - 1]);
    s->uidls[n - 1] = strndup(line + i + 1, len - i - 1);
    if (s->uidls[n - 1] == NULL)
        abort();
    return true;
}

/* "n size" from LIST: the sizes record-ahead checks against its limit. */
static void
up_list_line(struct proxy_session *s, const char *line, size_t len)
{
    uint64_t n = 0, size = 0;
    size_t i = 0, j;

    while (i < len && i < 10 && line[i] >= '0' && line[i] <= '9')
        n = n * 10 + (uint64_t)(line[i++] - '0');
    if (i == 0 || i >= len || line[i] != ' ' || n == 0 || n > s->nuidls)
        return;
    for (j = i + 1; j < len && j < i + 16 && line[j] >= '0' && line[j] <= '9';
         j++)
        size = size * 10 + (uint64_t)(line[j] - '0');
    if (j == i + 1)
        return;
    if (s->sizes == NULL) {
        s->sizes = malloc(s->nuidls * sizeof(*s->sizes));
        if (s->sizes == NULL)
            abort();
        memset(s->sizes, 0xff, s->nuidls * sizeof(*s->sizes)); /* unknown */
    }
    s->sizes[n - 1] = size < UINT32_MAX ? (uint32_t)size : UINT32_MAX;
}

/* One line during the login; false when the login ended (either way). */
static bool
up_login_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    char text[PROXY_STATUS_MAX + 1];
    bool data = s->in_data;
    int r = proxy_upstream_line(s, &line, &len, !data);
    bool ok;

    if (r == MG_AGAIN)
        return false;
    if (r != MG_OK) {
        up_fail(s, MG_TEMPFAIL, "SYS/TEMP", s->why);
        return false;
    }
    if (data) {
        if (len == 1 && line[0] == '.') {
            s->in_data = false;
        } else if (s->phase == PX_LIST) {
            up_list_line(s, line, len); /* a bad line: that one is skipped */
            return true;
        } else if (s->phase == PX_UIDL) {
            if (!up_uidl_line(s, line, len)) {
                up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                        "The upstream sent an invalid UIDL listing");
                return false;
            }
            return true;
        } else {
            up_caps_line(s, line[0] == '.' ? line + 1 : line,
                         line[0] == '.' ? len - 1 : len);
            return true;
        }
    }
    ok = data || line[0] == '+';
    switch (s->phase) {
    case PX_GREETING:
        if (!ok) {
            up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                    "The upstream refused the session");
            return false;
        }
        s->phase =
            s->up != NULL && up_conn(s)->peer(s->up)->tls ? PX_CAPA2 : PX_CAPA1;
        proxy_upstream_send(s, "CAPA");
        return true;
    case PX_CAPA1:
    case PX_CAPA2:
        if (!data && ok) {
            s->in_data = true; /* the capability lines follow */
            return true;
        }
        if (s->phase == PX_CAPA1) {
            if (!s->caps.stls) {
                up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                        "The upstream does not offer STLS: credentials are "
                        "never sent without TLS");
                return false;
            }
            s->phase = PX_STLS;
            proxy_upstream_send(s, "STLS");
            return true;
        }
        up_send_login(s);
        return !s->dead;
    case PX_STLS: {
        const char *in;
        size_t n;

        if (!ok) {
            up_fail(s, MG_TEMPFAIL, "SYS/TEMP", "The upstream refused STLS");
            return false;
        }
        /* anything after the +OK came in plaintext and would be taken as
         * coming over TLS (CVE-2011-0411 in reverse) */
        up_conn(s)->peek(s->up, &in, &n);
        if (n > 0) {
            up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                    "The upstream sent data between its STLS reply and the "
                    "TLS handshake: refused");
            return false;
        }
        s->phase = PX_TLS;
        memset(&s->caps, 0, sizeof(s->caps)); /* forget plaintext CAPA */
        if (up_conn(s)->starttls(s->up) != MG_OK) {
            up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                    "The TLS handshake with the upstream failed");
            return false;
        }
        return false;
    }
    case PX_USER:
        if (!ok) {
            up_text(line, len, text, sizeof(text));
            proxy_login_done(s, MG_PERMFAIL, "AUTH", "Upstream: %s", text);
            return false;
        }
        s->phase = PX_PASS;
        {
            char buf[PROXY_STATUS_MAX];

            if (s->passlen + 6 > sizeof(buf) - 3) {
                up_fail(s, MG_PERMFAIL, "AUTH", "The password is too long");
                return false;
            }
            memcpy(buf, s->pass, s->passlen);
            buf[s->passlen] = '\0';
            proxy_upstream_send(s, "PASS %s", buf);
            proxy_wipe(buf, sizeof(buf));
        }
        return true;
    case PX_PASS:
    case PX_AUTH:
        proxy_wipe(s->pass, s->passlen);
        if (!ok) {
            bool temp = strstr(line, "[SYS/TEMP]") != NULL ||
                        strstr(line, "[IN-USE]") != NULL;

            up_text(line, len, text, sizeof(text));
            proxy_login_done(s, temp ? MG_TEMPFAIL : MG_PERMFAIL,
                             temp ? "SYS/TEMP" : "AUTH", "Upstream: %s", text);
            return false;
        }
        s->phase = PX_UIDL;
        proxy_upstream_send(s, "UIDL");
        return true;
    case PX_UIDL:
        if (!data && ok) {
            s->have_uidls = true;
            s->in_data = true;
            return true;
        }
        if (!data)
            s->have_uidls = false; /* no UIDL: every RETR is recorded */
        if (s->have_uidls && s->nuidls > 0 && s->st->prefetch_max > 0) {
            s->phase = PX_LIST;
            proxy_upstream_send(s, "LIST");
            return true;
        }
        up_conn(s)->set_timeouts(s->up, 0, 0);
        proxy_login_done(s, MG_ACCEPT, NULL, "Logged in at %s",
                         s->login.upstream);
        return false;
    case PX_LIST:
        if (!data && ok) {
            s->have_sizes = true;
            s->in_data = true;
            return true;
        }
        if (!data)
            s->have_sizes = false; /* no LIST: nothing recorded ahead */
        up_conn(s)->set_timeouts(s->up, 0, 0);
        proxy_login_done(s, MG_ACCEPT, NULL, "Logged in at %s",
                         s->login.upstream);
        return false;
    default:
        return false;
    }
}

void
proxy_upstream_login_event(struct proxy_session *s, enum mg_conn_event ev)
{
    if (up_conn(s)->find(s->id) == NULL) {
        /* the client left while we were logging in */
        if (ev >= MG_CONN_TIMEOUT)
            s->up = NULL;
        proxy_login_done(s, MG_TEMPFAIL, NULL, "the client left");
        return;
    }
    switch (ev) {
    case MG_CONN_READABLE:
        while (s->phase < PX_RELAY && !s->dead && s->up != NULL &&
               up_login_line(s)) {
        }
        return;
    case MG_CONN_TLS_READY:
        s->phase = PX_CAPA2;
        proxy_upstream_send(s, "CAPA");
        return;
    case MG_CONN_DRAINED:
        return;
    case MG_CONN_TIMEOUT:
        s->up = NULL; /* closes when the handler returns */
        up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                "The upstream did not answer in time");
        return;
    case MG_CONN_EOF:
    case MG_CONN_ERROR:
    default:
        s->up = NULL;
        up_fail(s, MG_TEMPFAIL, "SYS/TEMP",
                s->phase == PX_TLS
                    ? "The TLS handshake with the upstream failed (its "
                      "certificate is not trusted or not valid for the "
                      "target, or it broke the protocol)"
                    : "The upstream closed the connection");
        return;
    }
}

/* ---------------------------------------------------------- connect */

static int
up_filter(const struct sockaddr *sa, socklen_t len, void *arg)
{
    struct proxy_session *s = arg;

    return proxy_policy_filter(&s->policy, sa, len);
}

static void up_connect_done(struct proxy_session *s,
                            const struct mg_conn_api *ca, struct mg_conn *up,
                            int status, const char *error);

static void
up_connected(struct mg_conn *up, int status, const char *error, void *arg)
{
    struct proxy_session *s = arg;
    const struct mg_conn_api *ca = up_conn(s);

    proxy_enter(s);
    up_connect_done(s, ca, up, status, error);
    proxy_leave(s);
}

static void
up_connect_done(struct proxy_session *s, const struct mg_conn_api *ca,
                struct mg_conn *up, int status, const char *error)
{
    s->connecting = false;
    if (s->dead || ca->find(s->id) == NULL) {
        if (up != NULL)
            ca->close(up);
        s->dead = true;
        proxy_login_done(s, MG_TEMPFAIL, NULL, "gone");
        return;
    }
    if (status != MG_OK || up == NULL) {
        const char *why = error != NULL ? error : "connection failed";

        if (s->policy.why[0] != '\0' &&
            (error == NULL || strstr(error, "no permitted address") != NULL)) {
            proxy_login_done(s, MG_PERMFAIL, NULL, "Proxy target refused: %s",
                             s->policy.why);
            return;
        }
        proxy_login_done(s, MG_TEMPFAIL, "SYS/TEMP",
                         "Cannot connect to the upstream: %s", why);
        return;
    }
    s->up = up;
    ca->set_line_max(up, PROXY_DATA_LINE);
    ca->set_handler(up, proxy_up_cb, s);
    ca->set_timeouts(up, s->st->upstream_ms, 0);
    ca->pause_read(up, false); /* starts the read watcher */
    s->phase = PX_GREETING;
    /* the greeting may already be buffered */
    {
        const char *in;
        size_t n;

        ca->peek(up, &in, &n);
        if (n > 0)
            proxy_upstream_login_event(s, MG_CONN_READABLE);
    }
}

int
proxy_upstream_start(struct proxy_session *s, const char **why)
{
    const struct proxy_state *st = s->st;
    struct mg_connect_spec spec;

    proxy_connect_spec(st, &s->login, &spec);
    spec.filter = up_filter;

    s->phase = PX_CONNECT;
    s->connecting = true;
    if (st->api->connect(st->m, &spec, up_connected, s, why) != MG_OK) {
        s->connecting = false;
        return MG_ERROR;
    }
    return MG_OK;
}

static void
proxy_up_cb(struct mg_conn *up, enum mg_conn_event ev, void *arg)
{
    struct proxy_session *s = arg;

    (void)up;
    proxy_enter(s);
    if (s->dead)
        ; /* closing: nothing more to do with it */
    else if (s->phase < PX_RELAY)
        proxy_upstream_login_event(s, ev);
    else
        proxy_relay_upstream_event(s, ev);
    if (ev >= MG_CONN_TIMEOUT)
        s->up = NULL; /* the core closes it when we return */
    proxy_leave(s);
}
