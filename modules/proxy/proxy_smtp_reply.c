/*
 * modules/proxy/proxy_smtp_reply.c -- the pure part of the SMTP proxy:
 * upstream reply lines checked and collected (the OpenSMTPD CVE-2020-8794
 * class: an overlong line, a continuation without end, a code that
 * changes between the lines, text that is not printable), the EHLO
 * keywords, and the message data dot-stuffed for the upstream.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy_smtp.h"

void
psmtp_reply_clear(struct psmtp_reply *r)
{
    for (size_t i = 0; i < r->nlines; i++)
        free(r->lines[i]);
    memset(r, 0, sizeof(*r));
}

/* An enhanced status code "c.s.d " at the start of text, of class `cls`
 * (RFC 3463: 1-3 digits for subject and detail); its length with the
 * space after it, or 0. */
static size_t
reply_ecode_len(const char *t, size_t len, char cls)
{
    size_t i = 0, part, digits;

    if (len < 5 || t[0] != cls || t[1] != '.')
        return 0;
    i = 2;
    for (part = 0; part < 2; part++) {
        digits = 0;
        while (i < len && t[i] >= '0' && t[i] <= '9' && digits < 3) {
            i++;
            digits++;
        }
        if (digits == 0)
            return 0;
        if (part == 0) {
            if (i >= len || t[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < len && t[i] != ' ')
        return 0;
    return i < len ? i + 1 : i;
}

int
psmtp_reply_add(struct psmtp_reply *r, const char *line, size_t len,
                const char **why)
{
    const char *t;
    size_t tlen, el;
    char sep, *copy;
    int code;

    if (r->done) {
        *why = "the upstream sent more than one reply";
        return MG_ERROR;
    }
    if (len < 3 || len > PSMTP_LINE_MAX || line[0] < '2' || line[0] > '5' ||
        line[1] < '0' || line[1] > '5' || line[2] < '0' || line[2] > '9') {
        *why = "the upstream sent an invalid reply line";
        return MG_ERROR;
    }
    sep = len > 3 ? line[3] : ' ';
    if (sep != ' ' && sep != '-') {
        *why = "the upstream sent an invalid reply line";
        return MG_ERROR;
    }
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (r->nlines > 0 && code != r->code) {
        *why = "the upstream changed the reply code within a reply";
        return MG_ERROR;
    }
    if (r->nlines == PSMTP_REPLY_LINES) {
        *why = "the upstream sent a reply of too many lines";
        return MG_ERROR;
    }
    r->code = code;
    t = len > 4 ? line + 4 : "";
    tlen = len > 4 ? len - 4 : 0;
    el = reply_ecode_len(t, tlen, line[0]);
    if (el > 0) {
        if (r->nlines == 0) {
            size_t n = t[el - 1] == ' ' ? el - 1 : el;

            memcpy(r->ecode, t, n);
            r->ecode[n] = '\0';
        }
        t += el;
        tlen -= el;
    }
    copy = malloc(tlen + 1);
    if (copy == NULL)
        abort();
    for (size_t i = 0; i < tlen; i++) {
        unsigned char ch = (unsigned char)t[i];

        copy[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    copy[tlen] = '\0';
    r->lines[r->nlines] = copy;
    r->ptrs[r->nlines] = copy;
    r->nlines++;
    r->done = sep == ' ';
    return MG_OK;
}

void
psmtp_reply_out(struct psmtp_reply *r, const char *def_ecode,
                struct mg_reply *out)
{
    out->code = r->code;
    if (r->code >= 300 && r->code < 400)
        out->ecode = NULL; /* RFC 2034: none on intermediate replies */
    else
        out->ecode = r->ecode[0] != '\0' ? r->ecode : def_ecode;
    out->nlines = r->nlines;
    out->lines = r->ptrs;
}

/* ------------------------------------------------------------ EHLO */

void
psmtp_caps_line(struct psmtp_caps *c, const char *line)
{
    size_t kw = 0;
    const char *arg;

    while (line[kw] != '\0' && line[kw] != ' ' && line[kw] != '=')
        kw++;
    arg = line[kw] != '\0' ? line + kw + 1 : line + kw;
#define IS(word) (kw == sizeof(word) - 1 && strncasecmp(line, word, kw) == 0)
    if (IS("STARTTLS"))
        c->starttls = true;
    else if (IS("PIPELINING"))
        c->pipelining = true;
    else if (IS("CHUNKING"))
        c->chunking = true;
    else if (IS("8BITMIME"))
        c->eightbit = true;
    else if (IS("SMTPUTF8"))
        c->smtputf8 = true;
    else if (IS("ENHANCEDSTATUSCODES"))
        c->enhanced = true;
    else if (IS("SIZE")) {
        uint64_t n = 0;

        c->size = true;
        for (size_t i = 0; arg[i] >= '0' && arg[i] <= '9' && i < 19; i++)
            n = n * 10 + (uint64_t)(arg[i] - '0');
        c->size_max = n;
    } else if (IS("AUTH")) {
        /* "AUTH PLAIN LOGIN" or the old "AUTH=LOGIN PLAIN" */
        const char *p = arg;

        while (*p != '\0') {
            size_t n = 0;

            while (p[n] != '\0' && p[n] != ' ')
                n++;
            if (n == 5 && strncasecmp(p, "PLAIN", 5) == 0)
                c->auth_plain = true;
            else if (n == 5 && strncasecmp(p, "LOGIN", 5) == 0)
                c->auth_login = true;
            p += n;
            while (*p == ' ')
                p++;
        }
    }
#undef IS
}

/* ------------------------------------------------------------ data */

void
psmtp_stuff_init(struct psmtp_stuff *f)
{
    f->bol = true;
    f->cr = false;
    f->empty = true;
}

/* The offset of the first `ch` at or after `from`; len when none. */
static size_t
next_of(const char *in, size_t len, size_t from, char ch)
{
    const char *p = from < len ? memchr(in + from, ch, len - from) : NULL;

    return p != NULL ? (size_t)(p - in) : len;
}

void
psmtp_stuff(struct psmtp_stuff *f, const char *in, size_t len, char *up,
            size_t *uplen, char *copy, size_t *copylen)
{
    char *u = up + *uplen, *c = copy + *copylen;
    /* the next CR and LF at or after i */
    size_t i = 0, cr = next_of(in, len, 0, '\r'),
           lf = next_of(in, len, 0, '\n');

    if (len > 0)
        f->empty = false;
    while (i < len) {
        char ch = in[i];

        if (f->cr) {
            /* CRLF, or a bare CR: a line end either way */
            f->cr = false;
            memcpy(u, "\r\n", 2);
            memcpy(c, "\r\n", 2);
            u += 2;
            c += 2;
            f->bol = true;
            if (ch == '\n') {
                i++;
                continue;
            }
        }
        if (ch == '\r') {
            f->cr = true;
            i++;
            continue;
        }
        if (ch == '\n') {
            memcpy(u, "\r\n", 2); /* a bare LF */
            memcpy(c, "\r\n", 2);
            u += 2;
            c += 2;
            f->bol = true;
            i++;
            continue;
        }
        if (f->bol && ch == '.')
            *u++ = '.';
        f->bol = false;
        {
            size_t j;

            /* memchr, each position found once: a line costs two vector
             * scans instead of a loop over its bytes */
            if (cr < i)
                cr = next_of(in, len, i, '\r');
            if (lf < i)
                lf = next_of(in, len, i, '\n');
            j = cr < lf ? cr : lf;
            memcpy(u, in + i, j - i);
            memcpy(c, in + i, j - i);
            u += j - i;
            c += j - i;
            i = j;
        }
    }
    *uplen = (size_t)(u - up);
    *copylen = (size_t)(c - copy);
}

void
psmtp_stuff_end(struct psmtp_stuff *f, char *up, size_t *uplen, char *copy,
                size_t *copylen)
{
    if (f->cr || (!f->bol && !f->empty)) {
        memcpy(up + *uplen, "\r\n", 2);
        memcpy(copy + *copylen, "\r\n", 2);
        *uplen += 2;
        *copylen += 2;
    }
    f->cr = false;
    f->bol = true;
}
