/* tests/fuzz/fuzz_proxy_smtp.c -- libFuzzer target for the SMTP proxy's
 * pure part (modules/proxy/proxy_smtp_reply.c): what a hostile upstream
 * sends, and the message data on its way upstream.
 *
 * - Every line of the input is an upstream reply line: what
 *   psmtp_reply_add accepts must be a bounded reply of one code, its
 *   text printable, its enhanced code well formed (the OpenSMTPD
 *   CVE-2020-8794 class).
 * - Every line is also an EHLO keyword line for psmtp_caps_line.
 * - The whole input is message data, fed to psmtp_stuff in pieces whose
 *   sizes come from the input itself: the output for the upstream and
 *   for the copy must equal a plain model of the conversion (CR, LF and
 *   CRLF become CRLF, a line starting with "." gets another) whatever the
 *   pieces, and the upstream's data can hold no line "." of its own.
 *
 * Any violation abort()s. Built with -DMG_LIBFUZZER by `make fuzz-proxy`;
 * without it (make check) main() replays the files named on the command
 * line.
 */
#include "config.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_replay.h"
#include "proxy_smtp.h"

/* ---------------------------------------------------------- replies */

static bool
ecode_ok(const char *e, int code)
{
    size_t i = 0, len = strlen(e);

    if (len == 0)
        return true;
    if (len < 5 || e[0] != (char)('0' + code / 100) || e[1] != '.')
        return false;
    for (i = 2; i < len; i++) {
        if (e[i] != '.' && (e[i] < '0' || e[i] > '9'))
            return false;
    }
    return true;
}

static void
reply_check(const struct psmtp_reply *r)
{
    FUZZ_CHECK(r->nlines >= 1 && r->nlines <= PSMTP_REPLY_LINES);
    FUZZ_CHECK(r->code >= 200 && r->code <= 559);
    FUZZ_CHECK(ecode_ok(r->ecode, r->code));
    for (size_t i = 0; i < r->nlines; i++) {
        size_t len = strlen(r->lines[i]);

        FUZZ_CHECK(len <= PSMTP_LINE_MAX);
        FUZZ_CHECK(r->ptrs[i] == r->lines[i]);
        for (size_t j = 0; j < len; j++)
            FUZZ_CHECK(r->lines[i][j] >= 0x20 && r->lines[i][j] <= 0x7e);
    }
}

static void
fuzz_replies(const char *data, size_t size)
{
    struct psmtp_reply r;
    struct mg_reply out;
    size_t start = 0;

    memset(&r, 0, sizeof(r));
    for (size_t i = 0; i <= size; i++) {
        const char *why = NULL;
        size_t len;

        if (i < size && data[i] != '\n')
            continue;
        len = i - start;
        if (len > 0 && data[start + len - 1] == '\r')
            len--;
        if (psmtp_reply_add(&r, data + start, len, &why) != MG_OK) {
            FUZZ_CHECK(why != NULL && strpbrk(why, "\r\n") == NULL);
            psmtp_reply_clear(&r);
        } else if (r.done) {
            reply_check(&r);
            psmtp_reply_out(&r, "2.0.0", &out);
            FUZZ_CHECK(out.code == r.code && out.nlines == r.nlines);
            FUZZ_CHECK((r.code / 100 == 3) == (out.ecode == NULL));
            psmtp_reply_clear(&r);
        } else {
            FUZZ_CHECK(r.nlines <= PSMTP_REPLY_LINES);
        }
        start = i + 1;
    }
    psmtp_reply_clear(&r);
}

static void
fuzz_caps(const char *data, size_t size)
{
    char *line = malloc(size + 1);
    size_t start = 0;

    if (line == NULL)
        abort();
    for (size_t i = 0; i <= size; i++) {
        struct psmtp_caps c;

        if (i < size && data[i] != '\n')
            continue;
        memcpy(line, data + start, i - start);
        line[i - start] = '\0'; /* an embedded NUL ends it sooner */
        memset(&c, 0, sizeof(c));
        psmtp_caps_line(&c, line);
        FUZZ_CHECK(c.size_max < 10000000000000000000ULL);
        FUZZ_CHECK(c.size || c.size_max == 0);
        start = i + 1;
    }
    free(line);
}

/* ------------------------------------------------------------- data */

/* The conversion in one plain pass: the model psmtp_stuff must match. */
static void
stuff_model(const char *in, size_t len, char *up, size_t *uplen, char *copy,
            size_t *copylen)
{
    size_t u = 0, c = 0, i = 0;
    bool bol = true;

    while (i < len) {
        if (in[i] == '\r' || in[i] == '\n') {
            i += in[i] == '\r' && i + 1 < len && in[i + 1] == '\n' ? 2 : 1;
            memcpy(up + u, "\r\n", 2);
            memcpy(copy + c, "\r\n", 2);
            u += 2;
            c += 2;
            bol = true;
            continue;
        }
        if (bol && in[i] == '.')
            up[u++] = '.';
        up[u++] = in[i];
        copy[c++] = in[i];
        bol = false;
        i++;
    }
    if (!bol) {
        memcpy(up + u, "\r\n", 2);
        memcpy(copy + c, "\r\n", 2);
        u += 2;
        c += 2;
    }
    *uplen = u;
    *copylen = c;
}

/* Lines end in CRLF only, and none is a lone "." (the end of the data
 * for the upstream); without the stuffing it is the copy. */
static void
stuff_check_up(const char *up, size_t uplen, const char *copy, size_t copylen)
{
    size_t bol = 0, c = 0;

    for (size_t i = 0; i < uplen; i++) {
        if (up[i] == '\r') {
            FUZZ_CHECK(i + 1 < uplen && up[i + 1] == '\n');
            FUZZ_CHECK(!(i - bol == 1 && up[bol] == '.'));
            i++;
            bol = i + 1;
            continue;
        }
        FUZZ_CHECK(up[i] != '\n');
    }
    FUZZ_CHECK(bol == uplen); /* ends with CRLF, or is empty */
    for (size_t i = 0; i < uplen; i++) {
        if (up[i] == '.' && (i == 0 || up[i - 1] == '\n')) {
            FUZZ_CHECK(i + 1 < uplen && up[i + 1] == '.');
            i++; /* the stuffed one; the original follows */
        }
        FUZZ_CHECK(c < copylen && copy[c] == up[i]);
        c++;
    }
    FUZZ_CHECK(c == copylen);
}

static void
fuzz_stuff(const unsigned char *data, size_t size)
{
    size_t cap = 2 * size + 4, ul = 0, cl = 0, mul = 0, mcl = 0;
    char *up = malloc(cap), *copy = malloc(cap), *mup = malloc(cap),
         *mcopy = malloc(cap);
    struct psmtp_stuff f;
    unsigned seed = size > 0 ? data[0] : 1;

    if (up == NULL || copy == NULL || mup == NULL || mcopy == NULL)
        abort();
    psmtp_stuff_init(&f);
    for (size_t i = 0; i < size;) {
        /* piece sizes 1..64 from a generator seeded by the data */
        size_t n;

        seed = seed * 1103515245u + 12345u;
        n = 1 + (seed >> 16) % 64;
        if (n > size - i)
            n = size - i;
        psmtp_stuff(&f, (const char *)data + i, n, up, &ul, copy, &cl);
        FUZZ_CHECK(ul <= 2 * (i + n) + 2 && cl <= 2 * (i + n) + 2);
        i += n;
    }
    psmtp_stuff_end(&f, up, &ul, copy, &cl);
    FUZZ_CHECK(ul <= cap && cl <= cap);
    stuff_model((const char *)data, size, mup, &mul, mcopy, &mcl);
    FUZZ_CHECK(ul == mul && memcmp(up, mup, ul) == 0);
    FUZZ_CHECK(cl == mcl && memcmp(copy, mcopy, cl) == 0);
    stuff_check_up(up, ul, copy, cl);
    free(up);
    free(copy);
    free(mup);
    free(mcopy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_replies((const char *)data, size);
    fuzz_caps((const char *)data, size);
    fuzz_stuff(data, size);
    return 0;
}
