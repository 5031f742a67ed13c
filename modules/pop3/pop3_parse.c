/* modules/pop3/pop3_parse.c -- command lines, arguments, login names,
 * SASL PLAIN and the dot-stuffing encoder
 *
 * Pure: no I/O, no allocation, no core API. Every input is bounded by its
 * length argument, never by a NUL; refusals carry static texts. ASCII
 * only, so that the daemon's locale never changes what a command means.
 */
#include "config.h"

#include <string.h>

#include <mailgate/base64.h>

#include "pop3.h"

#define POP3_VERB_MAX 8

static const struct {
    const char *name;
    enum pop3_cmd cmd;
} pop3_verbs[] = {
    {"CAPA", POP3_CMD_CAPA}, {"STLS", POP3_CMD_STLS}, {"USER", POP3_CMD_USER},
    {"PASS", POP3_CMD_PASS}, {"AUTH", POP3_CMD_AUTH}, {"APOP", POP3_CMD_APOP},
    {"STAT", POP3_CMD_STAT}, {"LIST", POP3_CMD_LIST}, {"UIDL", POP3_CMD_UIDL},
    {"TOP", POP3_CMD_TOP},   {"RETR", POP3_CMD_RETR}, {"DELE", POP3_CMD_DELE},
    {"RSET", POP3_CMD_RSET}, {"NOOP", POP3_CMD_NOOP}, {"QUIT", POP3_CMD_QUIT},
};

static int
pop3_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool
pop3_alpha(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool
pop3_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool
pop3_ieq(const char *a, size_t alen, const char *lit)
{
    size_t n = strlen(lit);

    if (alen != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (pop3_lower((unsigned char)a[i]) !=
            pop3_lower((unsigned char)lit[i]))
            return false;
    }
    return true;
}

int
pop3_parse_command(const char *line, size_t len, struct pop3_command *out,
                   const char **why)
{
    size_t v = 0;

    memset(out, 0, sizeof(*out));
    out->arg = "";
    if (len == 0) {
        *why = "Empty command";
        return MG_ERROR;
    }
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\0' || line[i] == '\r' || line[i] == '\n') {
            *why = "NUL, CR or LF inside a command line";
            return MG_ERROR;
        }
    }
    while (v < len && line[v] != ' ')
        v++;
    if (v == 0 || v > POP3_VERB_MAX) {
        *why = "Malformed command";
        return MG_ERROR;
    }
    for (size_t i = 0; i < v; i++) {
        if (!pop3_alpha((unsigned char)line[i])) {
            *why = "Malformed command";
            return MG_ERROR;
        }
    }
    out->verb = line;
    out->verblen = v;
    for (size_t i = 0; i < sizeof(pop3_verbs) / sizeof(pop3_verbs[0]); i++) {
        if (pop3_ieq(line, v, pop3_verbs[i].name)) {
            out->cmd = pop3_verbs[i].cmd;
            break;
        }
    }
    if (v < len) {
        size_t alen = len - v - 1;

        out->arg = line + v + 1;
        /* the password is taken as sent; elsewhere trailing spaces are
         * noise some clients add */
        if (out->cmd != POP3_CMD_PASS) {
            while (alen > 0 && out->arg[alen - 1] == ' ')
                alen--;
        }
        out->arglen = alen;
    }
    return MG_OK;
}

/* Digits only, at least one; the value saturates at UINT64_MAX. */
static int
pop3_number(const char *s, size_t len, uint64_t *n_r)
{
    uint64_t n = 0;

    if (len == 0)
        return MG_ERROR;
    for (size_t i = 0; i < len; i++) {
        unsigned d;

        if (!pop3_digit((unsigned char)s[i]))
            return MG_ERROR;
        d = (unsigned)(s[i] - '0');
        if (n > (UINT64_MAX - d) / 10)
            n = UINT64_MAX;
        else
            n = n * 10 + d;
    }
    *n_r = n;
    return MG_OK;
}

int
pop3_parse_msgno(const char *arg, size_t len, uint32_t *n_r)
{
    uint64_t n;

    if (pop3_number(arg, len, &n) != MG_OK || n == 0 || n > UINT32_MAX)
        return MG_ERROR;
    *n_r = (uint32_t)n;
    return MG_OK;
}

int
pop3_parse_top(const char *arg, size_t len, uint32_t *msg_r, uint64_t *lines_r)
{
    const char *sp = memchr(arg, ' ', len);
    size_t first;

    if (sp == NULL)
        return MG_ERROR;
    first = (size_t)(sp - arg);
    if (pop3_parse_msgno(arg, first, msg_r) != MG_OK)
        return MG_ERROR;
    return pop3_number(sp + 1, len - first - 1, lines_r);
}

int
pop3_login_mailbox(const char *user, size_t len, const char *domain,
                   char id_r[33])
{
    const char *at = memchr(user, '@', len);
    size_t idlen = at != NULL ? (size_t)(at - user) : len;

    if (at != NULL) {
        size_t dlen = len - idlen - 1;

        if (domain == NULL || !pop3_ieq(at + 1, dlen, domain))
            return MG_DECLINED;
    }
    if (idlen < 8 || idlen > 32)
        return MG_DECLINED;
    for (size_t i = 0; i < idlen; i++) {
        int c = pop3_lower((unsigned char)user[i]);

        if (!pop3_digit(c) && !(c >= 'a' && c <= 'z'))
            return MG_DECLINED;
        id_r[i] = (char)c;
    }
    id_r[idlen] = '\0';
    return MG_OK;
}

int
pop3_sasl_plain(const char *b64, size_t len, char *out, size_t outsz,
                const char **authzid_r, const char **authcid_r,
                const char **passwd_r)
{
    long n;
    char *nul1, *nul2;

    if (outsz < 2)
        return MG_ERROR;
    n = mg_base64_decode(b64, len, out, outsz - 1);
    if (n <= 0)
        return MG_ERROR;
    out[n] = '\0';
    nul1 = memchr(out, '\0', (size_t)n);
    if (nul1 == NULL)
        return MG_ERROR;
    nul2 = memchr(nul1 + 1, '\0', (size_t)(out + n - nul1 - 1));
    if (nul2 == NULL || memchr(nul2 + 1, '\0', (size_t)(out + n - nul2 - 1)))
        return MG_ERROR;
    if (nul2 == nul1 + 1 || nul2 + 1 == out + n)
        return MG_ERROR; /* empty authcid or password */
    *authzid_r = out;
    *authcid_r = nul1 + 1;
    *passwd_r = nul2 + 1;
    return MG_OK;
}

/* ------------------------------------------------------ dot-stuffing */

void
pop3_stuff_init(struct pop3_stuff *st, uint64_t limit)
{
    memset(st, 0, sizeof(*st));
    st->limit = limit;
    /* as if a CRLF came before the message: a leading '.' is stuffed */
    st->last[0] = '\r';
    st->last[1] = '\n';
}

/* A line has ended (its LF was just copied): count it against the TOP
 * limit, or notice the empty line that ends the header. */
static void
stuff_line_end(struct pop3_stuff *st)
{
    if (!st->in_body) {
        /* empty when nothing or only a CR came before the LF */
        if (st->linelen == 0 || (st->linelen == 1 && st->last[0] == '\r')) {
            st->in_body = true;
            if (st->limit == 0)
                st->done = true;
        }
    } else if (st->limit != POP3_ALL_LINES && ++st->lines >= st->limit) {
        st->done = true;
    }
    st->linelen = 0;
}

/* Whole lines at a time (memchr and memcpy): byte-at-a-time copying was
 * the largest user-space cost of a RETR. */
size_t
pop3_stuff_feed(struct pop3_stuff *st, const char *in, size_t len, char *out,
                size_t *outlen)
{
    size_t o = *outlen, i = 0;

    while (i < len && !st->done) {
        const char *lf = memchr(in + i, '\n', len - i);
        size_t seg = lf != NULL ? (size_t)(lf - (in + i)) + 1 : len - i;

        if (st->linelen == 0 && in[i] == '.')
            out[o++] = '.';
        memcpy(out + o, in + i, seg);
        o += seg;
        st->last[0] = seg >= 2 ? in[i + seg - 2] : st->last[1];
        st->last[1] = in[i + seg - 1];
        i += seg;
        if (lf == NULL) {
            st->linelen += seg;
            break;
        }
        st->linelen += seg - 1; /* the bytes before the LF */
        stuff_line_end(st);
    }
    *outlen = o;
    return i;
}

size_t
pop3_stuff_end(const struct pop3_stuff *st, char *out)
{
    size_t o = 0;

    if (st->last[0] != '\r' || st->last[1] != '\n') {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    memcpy(out + o, ".\r\n", 3);
    return o + 3;
}
