/* modules/smtp/smtp_parse.c -- command lines, paths, ESMTP parameters, BDAT
 *
 * Pure parsing: no I/O, no allocation, no core API. Every input is bounded
 * by its length argument (never by a NUL); every refusal fills a static
 * smtp_error so that the session can answer without formatting.
 *
 * Reply codes chosen here:
 *   500 5.5.2  NUL, CR or LF in a command line; empty line; verb > 16 bytes
 *   501 5.5.4  MAIL/RCPT syntax (no FROM:/TO:, no <>, path > 512 bytes,
 *              bad or duplicate parameter, SIZE not digits or > 2^63,
 *              argument > SMTP_LINE_MAX), BDAT and HELO syntax
 *   501 5.5.2  control characters in a MAIL/RCPT argument
 *   553 5.1.7  MAIL: not a valid mailbox (`<;sleep 10;>`, local part > 64,
 *              domain > 255, bad address literal)
 *   553 5.1.3  RCPT: the same for the recipient, and `<>`
 *   553 5.6.7  a non-ASCII reverse-path without SMTPUTF8
 *   555 5.5.4  unknown parameter, BODY= other than 7BIT/8BITMIME
 *
 * Leniency (a refused journal copy is lost for good, so only what cannot
 * be parsed safely is refused): spaces after "FROM:"/"TO:", several spaces
 * between parameters and trailing spaces are accepted; an unquoted local
 * part may have empty atoms ("a..b", "a.") as some large mail providers
 * still emit them; MAIL's AUTH= (RFC 4954 requires servers offering AUTH to
 * accept it) is syntax-checked and ignored like the DSN parameters.
 */
#include "config.h"

#include <arpa/inet.h>
#include <string.h>

#include "smtp.h"

#define SMTP_VERB_MAX  16
#define SMTP_LABEL_MAX 63
#define SMTP_SIZE_TOP  (UINT64_C(1) << 63)

static const struct {
    const char *name;
    enum smtp_cmd cmd;
} smtp_verbs[] = {
    {"HELO", SMTP_CMD_HELO},         {"EHLO", SMTP_CMD_EHLO},
    {"MAIL", SMTP_CMD_MAIL},         {"RCPT", SMTP_CMD_RCPT},
    {"DATA", SMTP_CMD_DATA},         {"BDAT", SMTP_CMD_BDAT},
    {"RSET", SMTP_CMD_RSET},         {"NOOP", SMTP_CMD_NOOP},
    {"QUIT", SMTP_CMD_QUIT},         {"VRFY", SMTP_CMD_VRFY},
    {"EXPN", SMTP_CMD_EXPN},         {"HELP", SMTP_CMD_HELP},
    {"STARTTLS", SMTP_CMD_STARTTLS}, {"AUTH", SMTP_CMD_AUTH},
};

static int
smtp_fail(struct smtp_error *err, int code, const char *ecode, const char *text)
{
    if (err != NULL) {
        err->code = code;
        err->ecode = ecode;
        err->text = text;
    }
    return MG_ERROR;
}

/* ASCII only: the C locale functions are not used so that the locale of
 * the daemon can never change what a command means */
static int
smtp_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool
smtp_alpha(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool
smtp_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool
smtp_alnum(int c)
{
    return smtp_alpha(c) || smtp_digit(c);
}

static bool
smtp_hex(int c)
{
    return smtp_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static bool
smtp_ieq(const char *a, size_t alen, const char *lit)
{
    size_t n = strlen(lit);

    if (alen != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (smtp_lower((unsigned char)a[i]) !=
            smtp_lower((unsigned char)lit[i]))
            return false;
    }
    return true;
}

/* RFC 5322 atext */
static bool
smtp_atext(int c)
{
    return smtp_alnum(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* length of the valid UTF-8 sequence of a non-ASCII character at s, or 0
 * (overlongs, surrogates and code points above U+10FFFF are invalid) */
static size_t
smtp_utf8_len(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return n;
}

/* ---------------------------------------------------------- command line */

int
smtp_parse_command(const char *line, size_t len, struct smtp_command *out,
                   struct smtp_error *err)
{
    size_t vlen = 0;

    memset(out, 0, sizeof(*out));
    out->arg = "";
    for (size_t i = 0; i < len; i++) {
        /* CR and LF here are bare ones (the line reader took the CRLF):
         * never a command terminator, never passed on */
        if (line[i] == '\0' || line[i] == '\r' || line[i] == '\n')
            return smtp_fail(err, 500, "5.5.2", "invalid character in command");
    }
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        len--;
    if (len == 0)
        return smtp_fail(err, 500, "5.5.2", "empty command");
    /* the verb ends at SP only: "EHLO\tx" is one (unknown) verb */
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    if (vlen == 0)
        return smtp_fail(err, 500, "5.5.2", "syntax error");
    if (vlen > SMTP_VERB_MAX)
        return smtp_fail(err, 500, "5.5.2", "command too long");
    out->verb = line;
    out->verblen = vlen;
    if (vlen < len) {
        out->arg = line + vlen + 1;
        out->arglen = len - vlen - 1;
    }
    out->cmd = SMTP_CMD_UNKNOWN;
    for (size_t i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++) {
        if (smtp_ieq(line, vlen, smtp_verbs[i].name)) {
            out->cmd = smtp_verbs[i].cmd;
            break;
        }
    }
    return MG_OK;
}

/* ---------------------------------------------------------------- paths */

/* what differs between the reverse-path and the forward-path */
struct smtp_role {
    bool rcpt;
    const char *bad; /* enhanced code for "not a valid mailbox" */
};

static const struct smtp_role smtp_role_mail = {false, "5.1.7"};
static const struct smtp_role smtp_role_rcpt = {true, "5.1.3"};

/* Domain = sub-domain *("." sub-domain); U-labels (valid UTF-8) are let
 * through and reported in *utf8_r */
static bool
smtp_check_domain(const char *s, size_t len, bool *utf8_r)
{
    size_t label = 0;

    if (len == 0 || len > SMTP_DOMAIN_MAX)
        return false;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];

        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = smtp_utf8_len((const unsigned char *)s + i, len - i);

            if (n == 0)
                return false;
            *utf8_r = true;
            i += n;
            label += n;
        } else if (smtp_alnum(c) || (c == '-' && label > 0)) {
            i++;
            label++;
        } else
            return false;
        if (label > SMTP_LABEL_MAX)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

/* [1.2.3.4], [IPv6:...], [tag:dcontent] */
static bool
smtp_check_literal(const char *s, size_t len)
{
    char tmp[64];
    size_t i;

    if (len < 3 || s[0] != '[' || s[len - 1] != ']')
        return false;
    s++;
    len -= 2;
    if (len > 5 && smtp_ieq(s, 5, "IPv6:")) {
        struct in6_addr a6;

        if (len - 5 >= sizeof(tmp))
            return false;
        memcpy(tmp, s + 5, len - 5);
        tmp[len - 5] = '\0';
        return inet_pton(AF_INET6, tmp, &a6) == 1;
    }
    if (smtp_digit((unsigned char)s[0])) {
        /* Snum 3("." Snum), each 1*3DIGIT ≤ 255 (inet_pton would accept
         * other spellings on some systems) */
        unsigned parts = 0;

        i = 0;
        while (parts < 4) {
            unsigned v = 0;
            size_t d = 0;

            while (i < len && smtp_digit((unsigned char)s[i]) && d < 4) {
                v = v * 10 + (unsigned)(s[i] - '0');
                i++;
                d++;
            }
            if (d == 0 || d > 3 || v > 255)
                return false;
            parts++;
            if (parts < 4) {
                if (i >= len || s[i] != '.')
                    return false;
                i++;
            }
        }
        return i == len;
    }
    /* General-address-literal = Standardized-tag ":" 1*dcontent */
    for (i = 0; i < len && s[i] != ':'; i++) {
        if (!smtp_alnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    }
    if (i == 0 || i == len || i + 1 == len || s[i - 1] == '-')
        return false;
    for (i++; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
            return false;
    }
    return true;
}

/* the index of the '>' closing the path that starts at p[0] == '<' (one
 * inside a quoted local part does not count), or len */
static size_t
smtp_path_close(const char *p, size_t len)
{
    bool inq = false;
    size_t i;

    for (i = 1; i < len; i++) {
        if (inq && p[i] == '\\' && i + 1 < len)
            i++;
        else if (p[i] == '"')
            inq = !inq;
        else if (!inq && p[i] == '>')
            break;
    }
    return i;
}

/* A-d-l ":" at s[0] == '@': the position after the ':', or NULL */
static const char *
smtp_skip_route(const char *s, const char *end, bool *utf8_r)
{
    for (;;) {
        const char *d = ++s;

        while (s < end && *s != ',' && *s != ':')
            s++;
        if (s >= end || !smtp_check_domain(d, (size_t)(s - d), utf8_r))
            return NULL;
        if (*s++ == ':')
            return s < end ? s : NULL;
        if (s >= end || *s != '@')
            return NULL;
    }
}

/* Quoted-string at s[0] == '"': the position after the closing quote */
static const char *
smtp_skip_quoted(const char *s, const char *end, bool *utf8_r)
{
    for (s++; s < end && *s != '"';) {
        unsigned char c = (unsigned char)*s;

        if (c == '\\') {
            if (s + 1 >= end || s[1] < 32 || s[1] > 126)
                return NULL;
            s += 2;
        } else if (c >= 0x80) {
            size_t n =
                smtp_utf8_len((const unsigned char *)s, (size_t)(end - s));

            if (n == 0)
                return NULL;
            *utf8_r = true;
            s += n;
        } else if (c >= 32)
            s++;
        else
            return NULL;
    }
    return s < end ? s + 1 : NULL;
}

/* Dot-string (empty atoms tolerated) up to the '@', or NULL */
static const char *
smtp_skip_dotstring(const char *s, const char *end, bool *utf8_r)
{
    bool atom = false;

    while (s < end && *s != '@') {
        unsigned char c = (unsigned char)*s;

        if (c >= 0x80) {
            size_t n =
                smtp_utf8_len((const unsigned char *)s, (size_t)(end - s));

            if (n == 0)
                return NULL;
            *utf8_r = true;
            s += n;
            atom = true;
        } else if (smtp_atext(c)) {
            s++;
            atom = true;
        } else if (c == '.')
            s++;
        else
            return NULL;
    }
    return atom ? s : NULL;
}

/* Mailbox = Local-part "@" ( Domain / address-literal ), s < end */
static int
smtp_check_mailbox(const char *s, const char *end, const struct smtp_role *role,
                   bool *utf8_r, struct smtp_error *err)
{
    const char *at = *s == '"' ? smtp_skip_quoted(s, end, utf8_r)
                               : smtp_skip_dotstring(s, end, utf8_r);

    if (at == NULL || at >= end || *at != '@')
        return smtp_fail(err, 553, role->bad, "invalid mailbox");
    if ((size_t)(at - s) > SMTP_LOCAL_MAX)
        return smtp_fail(err, 553, role->bad, "local part too long");
    at++;
    if ((size_t)(end - at) > SMTP_DOMAIN_MAX)
        return smtp_fail(err, 553, role->bad, "domain too long");
    if (at < end && *at == '[') {
        if (!smtp_check_literal(at, (size_t)(end - at)))
            return smtp_fail(err, 553, role->bad, "invalid address literal");
    } else if (!smtp_check_domain(at, (size_t)(end - at), utf8_r))
        return smtp_fail(err, 553, role->bad, "invalid domain");
    return MG_OK;
}

/*
 * Parse a path that starts at p ("<" ... ">"), copy the mailbox without the
 * source route into out (SMTP_PATH_MAX + 1 bytes) and set *used to the
 * bytes up to and including the '>'. *utf8_r reports non-ASCII.
 */
static int
smtp_parse_path(const char *p, size_t len, const struct smtp_role *role,
                char *out, size_t *used, bool *utf8_r, struct smtp_error *err)
{
    const char *s, *end;
    size_t i;

    if (len == 0 || p[0] != '<' || (i = smtp_path_close(p, len)) >= len)
        return smtp_fail(err, 501, "5.5.4", "path must be enclosed in <>");
    *used = i + 1;
    if (i - 1 > SMTP_PATH_MAX)
        return smtp_fail(err, 501, "5.5.4", "path too long");
    s = p + 1;
    end = p + i;
    if (s == end) {
        if (role->rcpt)
            return smtp_fail(err, 553, role->bad, "null recipient <>");
        out[0] = '\0';
        return MG_OK;
    }
    /* A-d-l ":" -- accepted and dropped (RFC 5321 4.1.1.3, C) */
    if (s[0] == '@' && (s = smtp_skip_route(s, end, utf8_r)) == NULL)
        return smtp_fail(err, 553, role->bad, "invalid source route");
    /* <Postmaster> is a forward-path of its own (RFC 5321 4.1.1.3) */
    if (!(role->rcpt && smtp_ieq(s, (size_t)(end - s), "postmaster")) &&
        smtp_check_mailbox(s, end, role, utf8_r, err) != MG_OK)
        return MG_ERROR;
    memcpy(out, s, (size_t)(end - s));
    out[end - s] = '\0';
    return MG_OK;
}

/* ----------------------------------------------------------- parameters */

/* one "keyword[=value]" of the list after the path */
struct smtp_param {
    const char *kw;
    size_t kwlen;
    const char *val; /* NULL without '=' */
    size_t vallen;
};

/* Next parameter from *pp (below end) or 0 at the end of the list; 1 with
 * *pm filled; MG_ERROR on bad syntax. Several spaces and trailing spaces
 * are tolerated. */
static int
smtp_next_param(const char **pp, const char *end, struct smtp_param *pm,
                struct smtp_error *err)
{
    const char *p = *pp, *tok, *eq = NULL;

    while (p < end && *p == ' ')
        p++;
    if (p >= end)
        return 0;
    tok = p;
    while (p < end && *p != ' ') {
        if (*p == '=' && eq == NULL)
            eq = p;
        p++;
    }
    *pp = p;
    pm->kw = tok;
    pm->kwlen = (size_t)((eq != NULL ? eq : p) - tok);
    pm->val = NULL;
    pm->vallen = 0;
    /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
    if (pm->kwlen == 0 || !smtp_alnum((unsigned char)tok[0]))
        return smtp_fail(err, 501, "5.5.4", "invalid parameter");
    for (size_t i = 1; i < pm->kwlen; i++) {
        if (!smtp_alnum((unsigned char)tok[i]) && tok[i] != '-')
            return smtp_fail(err, 501, "5.5.4", "invalid parameter");
    }
    if (eq == NULL)
        return 1;
    /* esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 too (RFC 6531) */
    pm->val = eq + 1;
    pm->vallen = (size_t)(p - pm->val);
    if (pm->vallen == 0)
        return smtp_fail(err, 501, "5.5.4", "parameter value missing");
    for (size_t i = 0; i < pm->vallen;) {
        unsigned char c = (unsigned char)pm->val[i];

        if (c >= 0x80) {
            size_t n = smtp_utf8_len((const unsigned char *)pm->val + i,
                                     pm->vallen - i);

            if (n == 0)
                return smtp_fail(err, 501, "5.5.4", "invalid parameter");
            i += n;
        } else if (c < 33 || c > 126 || c == '=')
            return smtp_fail(err, 501, "5.5.4", "invalid parameter value");
        else
            i++;
    }
    return 1;
}

/* digits only, at most 2^63 */
static bool
smtp_parse_u63(const char *s, size_t len, uint64_t *v_r)
{
    uint64_t v = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!smtp_digit((unsigned char)s[i]))
            return false;
        if (v > SMTP_SIZE_TOP / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > SMTP_SIZE_TOP)
            return false;
    }
    *v_r = v;
    return true;
}

/* xtext (RFC 3461 4): printable ASCII but '+' and '=', "+HH" escapes */
static bool
smtp_check_xtext(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '+') {
            if (i + 2 >= len || !smtp_hex((unsigned char)s[i + 1]) ||
                !smtp_hex((unsigned char)s[i + 2]))
                return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=')
            return false;
    }
    return true;
}

/* NOTIFY=NEVER / comma list of SUCCESS, FAILURE, DELAY */
static bool
smtp_check_notify(const char *s, size_t len)
{
    size_t i = 0;

    if (smtp_ieq(s, len, "NEVER"))
        return true;
    while (i < len) {
        size_t j = i;

        while (j < len && s[j] != ',')
            j++;
        if (!smtp_ieq(s + i, j - i, "SUCCESS") &&
            !smtp_ieq(s + i, j - i, "FAILURE") &&
            !smtp_ieq(s + i, j - i, "DELAY"))
            return false;
        if (j == len)
            return true;
        i = j + 1;
        if (i == len)
            return false; /* trailing comma */
    }
    return false;
}

/* ORCPT=addr-type ";" xtext (RFC 3461), or the UTF-8 forms of RFC 6533:
 * only the shape is checked since the value is ignored */
static bool
smtp_check_orcpt(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len && s[i] != ';') {
        if (!smtp_atext((unsigned char)s[i]))
            return false;
        i++;
    }
    return i > 0 && i < len && i + 1 < len;
}

/* the "FROM:" / "TO:" prefix, then optional spaces; the offset of the path
 * or 0 when the prefix is missing */
static size_t
smtp_prefix(const char *arg, size_t len, const char *lit)
{
    size_t n = strlen(lit);

    if (len < n || !smtp_ieq(arg, n, lit))
        return 0;
    while (n < len && arg[n] == ' ')
        n++;
    return n;
}

/* checks common to MAIL and RCPT arguments */
static int
smtp_check_arg(const char *arg, size_t len, struct smtp_error *err)
{
    if (len > SMTP_LINE_MAX)
        return smtp_fail(err, 501, "5.5.4", "command too long");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)arg[i];

        if (c < 32 || c == 127)
            return smtp_fail(err, 501, "5.5.2",
                             "control character in argument");
    }
    return MG_OK;
}

enum {
    SMTP_SEEN_SIZE = 1 << 0,
    SMTP_SEEN_BODY = 1 << 1,
    SMTP_SEEN_UTF8 = 1 << 2,
    SMTP_SEEN_RET = 1 << 3,
    SMTP_SEEN_ENVID = 1 << 4,
    SMTP_SEEN_AUTH = 1 << 5,
    SMTP_SEEN_NOTIFY = 1 << 6,
    SMTP_SEEN_ORCPT = 1 << 7,
};

/* the parameter was not seen before (501 otherwise) */
static int
smtp_once(unsigned *seen, unsigned bit, struct smtp_error *err)
{
    if (*seen & bit)
        return smtp_fail(err, 501, "5.5.4", "duplicate parameter");
    *seen |= bit;
    return MG_OK;
}

static int
smtp_mail_param(const struct smtp_param *pm, unsigned *seen,
                struct smtp_mail_args *out, struct smtp_error *err)
{
    const char *v = pm->val;
    size_t vl = pm->vallen;

    if (smtp_ieq(pm->kw, pm->kwlen, "SIZE")) {
        if (smtp_once(seen, SMTP_SEEN_SIZE, err) != MG_OK)
            return MG_ERROR;
        if (v == NULL || !smtp_parse_u63(v, vl, &out->size))
            return smtp_fail(err, 501, "5.5.4", "invalid SIZE value");
        out->has_size = true;
    } else if (smtp_ieq(pm->kw, pm->kwlen, "BODY")) {
        if (smtp_once(seen, SMTP_SEEN_BODY, err) != MG_OK)
            return MG_ERROR;
        if (v == NULL)
            return smtp_fail(err, 501, "5.5.4", "BODY needs a value");
        if (smtp_ieq(v, vl, "7BIT"))
            out->body = SMTP_BODY_7BIT;
        else if (smtp_ieq(v, vl, "8BITMIME"))
            out->body = SMTP_BODY_8BITMIME;
        else
            return smtp_fail(err, 555, "5.5.4", "unsupported BODY type");
    } else if (smtp_ieq(pm->kw, pm->kwlen, "SMTPUTF8")) {
        if (smtp_once(seen, SMTP_SEEN_UTF8, err) != MG_OK)
            return MG_ERROR;
        if (v != NULL)
            return smtp_fail(err, 501, "5.5.4", "SMTPUTF8 takes no value");
        out->smtputf8 = true;
    } else if (smtp_ieq(pm->kw, pm->kwlen, "RET")) {
        if (smtp_once(seen, SMTP_SEEN_RET, err) != MG_OK)
            return MG_ERROR;
        if (v == NULL || (!smtp_ieq(v, vl, "FULL") && !smtp_ieq(v, vl, "HDRS")))
            return smtp_fail(err, 501, "5.5.4", "invalid RET value");
    } else if (smtp_ieq(pm->kw, pm->kwlen, "ENVID")) {
        if (smtp_once(seen, SMTP_SEEN_ENVID, err) != MG_OK)
            return MG_ERROR;
        if (v == NULL || !smtp_check_xtext(v, vl))
            return smtp_fail(err, 501, "5.5.4", "invalid ENVID value");
    } else if (smtp_ieq(pm->kw, pm->kwlen, "AUTH")) {
        if (smtp_once(seen, SMTP_SEEN_AUTH, err) != MG_OK)
            return MG_ERROR;
        if (v == NULL || !smtp_check_xtext(v, vl))
            return smtp_fail(err, 501, "5.5.4", "invalid AUTH value");
    } else
        return smtp_fail(err, 555, "5.5.4", "unsupported parameter");
    return MG_OK;
}

int
smtp_parse_mail(const char *arg, size_t len, struct smtp_mail_args *out,
                struct smtp_error *err)
{
    struct smtp_param pm;
    const char *p, *end = arg + len;
    size_t off, used;
    unsigned seen = 0;
    bool utf8 = false;
    int r;

    memset(out, 0, sizeof(*out));
    if (smtp_check_arg(arg, len, err) != MG_OK)
        return MG_ERROR;
    off = smtp_prefix(arg, len, "FROM:");
    if (off == 0)
        return smtp_fail(err, 501, "5.5.4", "syntax: MAIL FROM:<address>");
    if (smtp_parse_path(arg + off, len - off, &smtp_role_mail, out->path, &used,
                        &utf8, err) != MG_OK)
        return MG_ERROR;
    p = arg + off + used;
    if (p < end && *p != ' ')
        return smtp_fail(err, 501, "5.5.4", "syntax: MAIL FROM:<address>");
    while ((r = smtp_next_param(&p, end, &pm, err)) == 1) {
        if (smtp_mail_param(&pm, &seen, out, err) != MG_OK)
            return MG_ERROR;
    }
    if (r != 0)
        return MG_ERROR;
    if (utf8 && !out->smtputf8) {
        out->path[0] = '\0';
        return smtp_fail(err, 553, "5.6.7", "non-ASCII address needs SMTPUTF8");
    }
    return MG_OK;
}

int
smtp_parse_rcpt(const char *arg, size_t len, struct smtp_rcpt_args *out,
                struct smtp_error *err)
{
    struct smtp_param pm;
    const char *p, *end = arg + len;
    size_t off, used;
    unsigned seen = 0;
    bool utf8 = false;
    int r;

    memset(out, 0, sizeof(*out));
    if (smtp_check_arg(arg, len, err) != MG_OK)
        return MG_ERROR;
    off = smtp_prefix(arg, len, "TO:");
    if (off == 0)
        return smtp_fail(err, 501, "5.5.4", "syntax: RCPT TO:<address>");
    /* a non-ASCII forward-path is left to the session, which knows
     * whether MAIL carried SMTPUTF8 */
    if (smtp_parse_path(arg + off, len - off, &smtp_role_rcpt, out->path, &used,
                        &utf8, err) != MG_OK)
        return MG_ERROR;
    p = arg + off + used;
    if (p < end && *p != ' ')
        return smtp_fail(err, 501, "5.5.4", "syntax: RCPT TO:<address>");
    while ((r = smtp_next_param(&p, end, &pm, err)) == 1) {
        if (smtp_ieq(pm.kw, pm.kwlen, "NOTIFY")) {
            if (smtp_once(&seen, SMTP_SEEN_NOTIFY, err) != MG_OK)
                return MG_ERROR;
            if (pm.val == NULL || !smtp_check_notify(pm.val, pm.vallen))
                return smtp_fail(err, 501, "5.5.4", "invalid NOTIFY value");
        } else if (smtp_ieq(pm.kw, pm.kwlen, "ORCPT")) {
            if (smtp_once(&seen, SMTP_SEEN_ORCPT, err) != MG_OK)
                return MG_ERROR;
            if (pm.val == NULL || !smtp_check_orcpt(pm.val, pm.vallen))
                return smtp_fail(err, 501, "5.5.4", "invalid ORCPT value");
        } else
            return smtp_fail(err, 555, "5.5.4", "unsupported parameter");
    }
    return r == 0 ? MG_OK : MG_ERROR;
}

/* ------------------------------------------------------------------ BDAT */

int
smtp_parse_bdat(const char *arg, size_t len, uint64_t *size_r, bool *last_r,
                struct smtp_error *err)
{
    size_t i = 0, j;

    *size_r = 0;
    *last_r = false;
    while (i < len && arg[i] != ' ')
        i++;
    if (!smtp_parse_u63(arg, i, size_r))
        return smtp_fail(err, 501, "5.5.4", "syntax: BDAT <size> [LAST]");
    while (i < len && arg[i] == ' ')
        i++;
    j = len;
    while (j > i && arg[j - 1] == ' ')
        j--;
    if (j == i)
        return MG_OK;
    if (!smtp_ieq(arg + i, j - i, "LAST")) {
        *size_r = 0;
        return smtp_fail(err, 501, "5.5.4", "syntax: BDAT <size> [LAST]");
    }
    *last_r = true;
    return MG_OK;
}

/* -------------------------------------------------------------- address */

int
smtp_split_address(const char *path, char *local, size_t localsz, char *domain,
                   size_t domainsz)
{
    const char *at = strrchr(path, '@');
    size_t llen, dlen;

    if (localsz > 0)
        local[0] = '\0';
    if (domainsz > 0)
        domain[0] = '\0';
    if (at == NULL)
        return MG_ERROR;
    llen = (size_t)(at - path);
    dlen = strlen(at + 1);
    if (llen == 0 || dlen == 0 || llen >= localsz || dlen >= domainsz)
        return MG_ERROR;
    memcpy(local, path, llen);
    local[llen] = '\0';
    for (size_t i = 0; i < dlen; i++)
        domain[i] = (char)smtp_lower((unsigned char)at[1 + i]);
    domain[dlen] = '\0';
    return MG_OK;
}

/* ----------------------------------------------------------------- HELO */

int
smtp_parse_helo(const char *arg, size_t len, char *out, size_t outsz,
                struct smtp_error *err)
{
    size_t n;

    if (outsz > 0)
        out[0] = '\0';
    if (len == 0)
        return smtp_fail(err, 501, "5.5.4", "syntax: EHLO <domain>");
    /* any printable name: clients send bare host names, underscores and
     * the like, and refusing them would lose mail for nothing */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)arg[i];

        if (c < 33 || c > 126)
            return smtp_fail(err, 501, "5.5.4", "invalid EHLO name");
    }
    if (outsz == 0)
        return MG_OK;
    n = len < outsz - 1 ? len : outsz - 1;
    memcpy(out, arg, n);
    out[n] = '\0';
    return MG_OK;
}
