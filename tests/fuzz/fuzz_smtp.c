/* tests/fuzz/fuzz_smtp.c -- libFuzzer target for the smtp parsers and the
 * DATA stream
 *
 * Every line of the input goes through smtp_parse_command and then through
 * every argument parser; the whole input is also fed to the DATA stream
 * whole, in two parts (split at data[0] % size) and byte by byte, and the
 * result is compared with a line-based reference model. Any violated
 * invariant abort()s.
 *
 * Built with -DMG_LIBFUZZER by `make fuzz-smtp`; without it (make check)
 * main() replays the files named on the command line.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"
#include "fuzz_replay.h"

static void
fuzz_check_error(const struct smtp_error *err)
{
    FUZZ_CHECK(err->code == 500 || err->code == 501 || err->code == 552 ||
               err->code == 553 || err->code == 555);
    FUZZ_CHECK(err->ecode != NULL && err->text != NULL);
    FUZZ_CHECK(strlen(err->ecode) == 5 && err->ecode[0] == '5');
    FUZZ_CHECK(strpbrk(err->text, "\r\n") == NULL);
}

/* a parsed path: bounded, terminated, free of control characters */
static void
fuzz_check_path(const char *path)
{
    size_t n = strnlen(path, SMTP_PATH_MAX + 1);

    FUZZ_CHECK(n <= SMTP_PATH_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)path[i] >= 32 && path[i] != 127);
}

static void
fuzz_split(const char *path)
{
    char local[SMTP_LOCAL_MAX + 3], domain[SMTP_DOMAIN_MAX + 1];

    if (smtp_split_address(path, local, sizeof(local), domain,
                           sizeof(domain)) == MG_OK) {
        FUZZ_CHECK(local[0] != '\0' && domain[0] != '\0');
        FUZZ_CHECK(strlen(local) + 1 + strlen(domain) <= strlen(path));
        for (const char *p = domain; *p != '\0'; p++)
            FUZZ_CHECK(*p < 'A' || *p > 'Z');
    }
}

static void
fuzz_line(const char *line, size_t len)
{
    struct smtp_command cmd;
    struct smtp_mail_args mail;
    struct smtp_rcpt_args rcpt;
    struct smtp_error err;
    char helo[256], path[SMTP_PATH_MAX + 1];
    uint64_t size;
    bool last;
    const char *arg = line;
    size_t arglen = len;

    if (smtp_parse_command(line, len, &cmd, &err) == MG_OK) {
        FUZZ_CHECK(cmd.verb == line && cmd.verblen > 0 && cmd.verblen <= 16);
        FUZZ_CHECK(cmd.arglen == 0 ||
                   (cmd.arg > line && cmd.arg + cmd.arglen <= line + len));
        FUZZ_CHECK(memchr(line, '\0', len) == NULL);
        FUZZ_CHECK(memchr(line, '\r', len) == NULL);
        arg = cmd.arg;
        arglen = cmd.arglen;
    } else {
        fuzz_check_error(&err);
        FUZZ_CHECK(err.code == 500);
    }

    /* every parser sees every argument, whatever the verb */
    if (smtp_parse_mail(arg, arglen, &mail, &err) == MG_OK) {
        fuzz_check_path(mail.path);
        FUZZ_CHECK(!mail.has_size || mail.size <= (UINT64_C(1) << 63));
        fuzz_split(mail.path);
    } else
        fuzz_check_error(&err);
    if (smtp_parse_rcpt(arg, arglen, &rcpt, &err) == MG_OK) {
        fuzz_check_path(rcpt.path);
        FUZZ_CHECK(rcpt.path[0] != '\0');
        fuzz_split(rcpt.path);
    } else
        fuzz_check_error(&err);
    if (smtp_parse_bdat(arg, arglen, &size, &last, &err) == MG_OK)
        FUZZ_CHECK(size <= (UINT64_C(1) << 63));
    else
        fuzz_check_error(&err);
    if (smtp_parse_helo(arg, arglen, helo, sizeof(helo), &err) == MG_OK)
        FUZZ_CHECK(helo[0] != '\0' && strlen(helo) < sizeof(helo));
    else
        fuzz_check_error(&err);
    /* the split itself on raw text */
    if (arglen <= SMTP_PATH_MAX) {
        memcpy(path, arg, arglen);
        path[arglen] = '\0';
        fuzz_split(path);
    }
}

/* The specification of the DATA stream, written as lines: a line ends with
 * CRLF, a bare LF or a bare CR (a CR at the very end is still pending);
 * "." after a CRLF (or first) and ended by CRLF is the end; every other
 * line loses a leading dot and is written with CRLF. */
static size_t
fuzz_data_model(const char *in, size_t len, char *out, size_t *outlen,
                bool *done)
{
    size_t i = 0, o = 0;
    bool eligible = true;

    *done = false;
    while (i < len) {
        size_t s = i, e, next;
        enum {
            T_NONE,
            T_CRLF,
            T_LF,
            T_CR
        } term = T_NONE;

        while (i < len && in[i] != '\r' && in[i] != '\n')
            i++;
        e = i;
        if (i == len || (in[i] == '\r' && i + 1 == len)) {
            next = len; /* no end yet, or a pending CR */
        } else if (in[i] == '\n') {
            term = T_LF;
            next = i + 1;
        } else if (in[i + 1] == '\n') {
            term = T_CRLF;
            next = i + 2;
        } else {
            term = T_CR;
            next = i + 1;
        }
        if (eligible && term == T_CRLF && e - s == 1 && in[s] == '.') {
            *done = true;
            *outlen = o;
            return next;
        }
        if (s < e && in[s] == '.')
            s++;
        memcpy(out + o, in + s, e - s);
        o += e - s;
        if (term != T_NONE) {
            out[o++] = '\r';
            out[o++] = '\n';
        }
        eligible = term == T_CRLF;
        i = next;
    }
    *outlen = o;
    return len;
}

/* feed `in` in the pieces given by cuts[] (ascending, ending with len) */
static size_t
fuzz_data_feed(const char *in, size_t len, const size_t *cuts, size_t ncuts,
               char *out, size_t *outlen, bool *done)
{
    struct smtp_data d;
    size_t pos = 0;

    FUZZ_CHECK(ncuts > 0 && cuts[ncuts - 1] == len);
    smtp_data_init(&d);
    *outlen = 0;
    for (size_t k = 0; k < ncuts && !d.done; k++) {
        size_t n = cuts[k] - pos, before = *outlen, used;

        used = smtp_data_feed(&d, in + pos, n, out, outlen);
        FUZZ_CHECK(used <= n);
        FUZZ_CHECK(*outlen - before <= 2 * n + 2);
        FUZZ_CHECK(d.done || used == n);
        pos += used;
    }
    FUZZ_CHECK(d.bytes == *outlen);
    *done = d.done;
    return pos;
}

static void
fuzz_data(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *a, *b, *m;
    size_t alen, blen, mlen, ause, buse, muse, cuts[2];
    bool adone, bdone, mdone;

    if (size == 0)
        return;
    a = malloc(2 * size + 2);
    b = malloc(2 * size + 2);
    m = malloc(2 * size + 2);
    if (a == NULL || b == NULL || m == NULL)
        abort();

    cuts[0] = size;
    ause = fuzz_data_feed(in, size, cuts, 1, a, &alen, &adone);

    /* output well formed: every CR is followed by LF and every LF preceded
     * by CR (bare ones are normalised; a pending CR is not written) */
    for (size_t i = 0; i < alen; i++) {
        if (a[i] == '\r')
            FUZZ_CHECK(i + 1 < alen && a[i + 1] == '\n');
        if (a[i] == '\n')
            FUZZ_CHECK(i > 0 && a[i - 1] == '\r');
    }
    if (adone) {
        FUZZ_CHECK(ause >= 3 && memcmp(in + ause - 3, ".\r\n", 3) == 0);
        FUZZ_CHECK(ause == 3 ||
                   (ause >= 5 && in[ause - 5] == '\r' && in[ause - 4] == '\n'));
    }

    muse = fuzz_data_model(in, size, m, &mlen, &mdone);
    FUZZ_CHECK(muse == ause && mdone == adone && mlen == alen);
    FUZZ_CHECK(memcmp(m, a, alen) == 0);

    cuts[0] = data[0] % size;
    cuts[1] = size;
    buse = fuzz_data_feed(in, size, cuts, 2, b, &blen, &bdone);
    FUZZ_CHECK(buse == ause && bdone == adone && blen == alen);
    FUZZ_CHECK(memcmp(a, b, alen) == 0);

    if (size <= 4096) {
        struct smtp_data d;

        smtp_data_init(&d);
        blen = 0;
        for (buse = 0; buse < size && !d.done; buse++)
            FUZZ_CHECK(smtp_data_feed(&d, in + buse, 1, b, &blen) == 1);
        FUZZ_CHECK(buse == ause && d.done == adone && blen == alen);
        FUZZ_CHECK(memcmp(a, b, alen) == 0);
        /* a feed after the end consumes nothing */
        if (d.done) {
            FUZZ_CHECK(smtp_data_feed(&d, "x", 1, b, &blen) == 0);
            FUZZ_CHECK(blen == alen);
        }
    }
    free(a);
    free(b);
    free(m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;

    /* lines end at CRLF or LF; what is left is the last line */
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;

        if (le > p && nl != NULL && le[-1] == '\r')
            le--;
        fuzz_line(p, (size_t)(le - p));
        p = nl != NULL ? nl + 1 : end;
    }
    fuzz_data(data, size);
    return 0;
}
