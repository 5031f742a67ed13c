/* modules/smtp/smtp_data.c -- the DATA byte stream: end of data,
 * dot-unstuffing and bare CR/LF normalisation (no I/O)
 *
 * Only <CRLF>.<CRLF> with real CRLFs ends the data. A line start reached
 * through a bare LF or a bare CR is not eligible, so none of the smuggling
 * variants (\n.\n, \r.\r, \r.\n, \n.\r, \n.\r\n, \r\n.\n, \r.\r\n, \r\n.\r,
 * \r\n\0.\r\n) ends a message: they stay content, with their line ends
 * written as CRLF (Postfix's smtpd_forbid_bare_newline = normalize), since
 * refusing them with a 5xx would lose a journal copy.
 *
 * *outlen is in/out: bytes are appended at out + *outlen.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include "smtp.h"

enum {
    SMTP_DATA_BOL = 0,  /* line start after a real CRLF, or the first line */
    SMTP_DATA_TEXT,     /* inside a line */
    SMTP_DATA_CR,       /* a CR is pending (not written yet) */
    SMTP_DATA_BOL_BARE, /* line start after a bare LF/CR: never the end */
    SMTP_DATA_DOT,      /* "." at an eligible line start, pending */
    SMTP_DATA_DOTCR,    /* ".\r" at an eligible line start, pending */
    SMTP_DATA_DONE,
};

void
smtp_data_init(struct smtp_data *d)
{
    d->state = SMTP_DATA_BOL;
    d->done = false;
    d->bytes = 0;
}

/* The index of the next c at or after i, or len. */
static size_t
smtp_data_next(const char *in, size_t i, size_t len, char c)
{
    const char *p = memchr(in + i, c, len - i);

    return p != NULL ? (size_t)(p - in) : len;
}

size_t
smtp_data_feed(struct smtp_data *d, const char *in, size_t len, char *out,
               size_t *outlen)
{
    char *o = out + *outlen, *o0 = o;
    int st = d->state;
    size_t i = 0, ncr = SIZE_MAX, nlf = SIZE_MAX;

    while (i < len && st != SMTP_DATA_DONE) {
        switch (st) {
        case SMTP_DATA_TEXT: {
            size_t j;

            /* the common case: copy up to the next line end at once. The
             * next CR and LF are found with memchr and remembered, so a
             * buffer of bare-LF lines is not rescanned for a CR per line */
            if (ncr == SIZE_MAX || ncr < i)
                ncr = smtp_data_next(in, i, len, '\r');
            if (nlf == SIZE_MAX || nlf < i)
                nlf = smtp_data_next(in, i, len, '\n');
            j = ncr < nlf ? ncr : nlf;
            memcpy(o, in + i, j - i);
            o += j - i;
            i = j;
            if (i == len)
                break;
            if (in[i++] == '\n') {
                /* bare LF: written as CRLF, the next line is not eligible */
                *o++ = '\r';
                *o++ = '\n';
                st = SMTP_DATA_BOL_BARE;
            } else
                st = SMTP_DATA_CR;
            break;
        }
        case SMTP_DATA_BOL:
            if (in[i] == '.') {
                i++;
                st = SMTP_DATA_DOT;
            } else
                st = SMTP_DATA_TEXT;
            break;
        case SMTP_DATA_BOL_BARE:
            /* a leading dot is still dot-stuffing, but ".\n" or ".\r"
             * here is an empty line of content */
            if (in[i] == '.')
                i++;
            st = SMTP_DATA_TEXT;
            break;
        case SMTP_DATA_CR:
            *o++ = '\r';
            *o++ = '\n';
            if (in[i] == '\n') {
                i++;
                st = SMTP_DATA_BOL;
            } else
                st = SMTP_DATA_BOL_BARE; /* bare CR; in[i] comes next */
            break;
        case SMTP_DATA_DOT:
            /* the dot is dropped: ".x" is "x", ".\n" an empty line */
            if (in[i] == '\r') {
                i++;
                st = SMTP_DATA_DOTCR;
            } else
                st = SMTP_DATA_TEXT;
            break;
        case SMTP_DATA_DOTCR:
            if (in[i] == '\n') {
                i++;
                st = SMTP_DATA_DONE;
                break;
            }
            /* "." ended by a bare CR: an empty line of content */
            *o++ = '\r';
            *o++ = '\n';
            st = SMTP_DATA_BOL_BARE;
            break;
        default:
            st = SMTP_DATA_DONE;
            break;
        }
    }
    d->state = st;
    d->done = st == SMTP_DATA_DONE;
    d->bytes += (uint64_t)(o - o0);
    *outlen += (size_t)(o - o0);
    return i;
}
