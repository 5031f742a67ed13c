/* tests/unit/test_smtp_data.c -- the DATA stream: end of data, smuggling,
 * dot-unstuffing, bare CR/LF normalisation, any split of the input */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp.h"

#define S(lit) lit, sizeof(lit) - 1

/* one feed into a buffer of exactly 2 * len + 2 bytes (ASan sees any
 * write past the documented bound); the output is appended to acc, which
 * the caller sized for the whole input (2 * total + 2) */
static size_t
feed1(struct smtp_data *d, const char *in, size_t len, char *acc,
      size_t *acclen)
{
    char *out = malloc(2 * len + 2);
    size_t outlen = 0, used;
    uint64_t before = d->bytes;

    assert_non_null(out);
    used = smtp_data_feed(d, in, len, out, &outlen);
    assert_true(used <= len);
    assert_true(outlen <= 2 * len + 2);
    assert_true(d->bytes - before == outlen);
    if (!d->done)
        assert_int_equal(used, len);
    memcpy(acc + *acclen, out, outlen);
    *acclen += outlen;
    free(out);
    return used;
}

/* feed in pieces of `step` bytes (0: whole); the output is returned in a
 * malloc'd buffer */
static size_t
feed_steps(const char *in, size_t len, size_t step, char **out, size_t *outlen,
           bool *done)
{
    struct smtp_data d;
    size_t pos = 0;

    smtp_data_init(&d);
    *out = malloc(2 * len + 2);
    assert_non_null(*out);
    *outlen = 0;
    if (step == 0)
        step = len;
    while (pos < len && !d.done) {
        size_t n = len - pos < step ? len - pos : step;

        pos += feed1(&d, in + pos, n, *out, outlen);
    }
    assert_true(d.bytes == *outlen);
    *done = d.done;
    return pos;
}

/* the same input fed whole, byte by byte, in 2..7 byte pieces and at every
 * split point gives the expected output and consumption */
static void
check_stream(const char *in, size_t len, const char *want, size_t wantlen,
             size_t wantused, bool wantdone)
{
    char *out;
    size_t outlen, used;
    bool done;

    for (size_t step = 0; step <= 7; step++) {
        used = feed_steps(in, len, step, &out, &outlen, &done);
        assert_int_equal(used, wantused);
        assert_int_equal(done, wantdone);
        assert_int_equal(outlen, wantlen);
        assert_memory_equal(out, want, wantlen);
        free(out);
    }
    if (len > 4096)
        return;
    for (size_t cut = 0; cut <= len; cut++) {
        struct smtp_data d;

        smtp_data_init(&d);
        out = malloc(2 * len + 2);
        assert_non_null(out);
        outlen = 0;
        used = feed1(&d, in, cut, out, &outlen);
        if (!d.done)
            used += feed1(&d, in + cut, len - cut, out, &outlen);
        assert_int_equal(used, wantused);
        assert_int_equal(d.done, wantdone);
        assert_int_equal(outlen, wantlen);
        if (wantlen > 0)
            assert_memory_equal(out, want, wantlen);
        free(out);
    }
}

static void
test_simple_end(void **state)
{
    (void)state;
    check_stream(S("Subject: x\r\n\r\nbody\r\n.\r\n"),
                 S("Subject: x\r\n\r\nbody\r\n"), 23, true);
    /* the rest after the end is the next command */
    check_stream(S("a\r\n.\r\nQUIT\r\n"), S("a\r\n"), 6, true);
    /* an empty message */
    check_stream(S(".\r\nRSET\r\n"), "", 0, 3, true);
    /* not ended yet */
    check_stream(S("a\r\n.\r"), S("a\r\n"), 5, false);
    check_stream(S("a\r\n."), S("a\r\n"), 4, false);
    check_stream(S("a\r\n"), S("a\r\n"), 3, false);
    check_stream(S("a\r"), S("a"), 2, false);
}

static void
test_smuggling(void **state)
{
    static const struct {
        const char *seq;
        size_t len;
        const char *out;
    } variants[] = {
        {S("\n.\n"), "\r\n\r\n"},          {S("\r.\r"), "\r\n\r\n"},
        {S("\r.\n"), "\r\n\r\n"},          {S("\n.\r"), "\r\n\r\n"},
        {S("\n.\r\n"), "\r\n\r\n"},        {S("\r\n.\n"), "\r\n\r\n"},
        {S("\r.\r\n"), "\r\n\r\n"},        {S("\r\n.\r"), "\r\n\r\n"},
        {S("\r\n\0.\r\n"), "\r\n\0.\r\n"},
    };
    static const char head[] = "From: a@example\r\nSubject: t\r\n\r\nbody";
    static const char evil[] = "MAIL FROM:<evil@x>\r\n"
                               "RCPT TO:<victim@example>\r\n"
                               "DATA\r\n"
                               "Subject: smuggled\r\n\r\nevil\r\n";
    static const char end[] = ".\r\nQUIT\r\n";

    (void)state;
    for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
        char in[512], want[512];
        size_t n = 0, w = 0, outlen, used;
        size_t vout = variants[v].seq[2] == '\0' ? 6 : 4;
        char *out;
        bool done;

        memcpy(in + n, head, sizeof(head) - 1);
        n += sizeof(head) - 1;
        memcpy(in + n, variants[v].seq, variants[v].len);
        n += variants[v].len;
        memcpy(in + n, evil, sizeof(evil) - 1);
        n += sizeof(evil) - 1;

        /* up to the smuggled end and beyond: never done */
        used = feed_steps(in, n, 0, &out, &outlen, &done);
        assert_false(done);
        assert_int_equal(used, n);
        free(out);

        memcpy(in + n, end, sizeof(end) - 1);
        n += sizeof(end) - 1;
        memcpy(want + w, head, sizeof(head) - 1);
        w += sizeof(head) - 1;
        memcpy(want + w, variants[v].out, vout);
        w += vout;
        memcpy(want + w, evil, sizeof(evil) - 1);
        w += sizeof(evil) - 1;
        /* exactly one message, ended by the real <CRLF>.<CRLF> */
        check_stream(in, n, want, w, n - 6, true);
    }
}

static void
test_smuggling_at_start(void **state)
{
    (void)state;
    /* the first line is eligible, but a bare LF before it is not */
    check_stream(S("\n.\nx\r\n.\r\n"), S("\r\n\r\nx\r\n"), 9, true);
    check_stream(S("\r.\r\nx\r\n.\r\n"), S("\r\n\r\nx\r\n"), 10, true);
    check_stream(S(".\nx\r\n.\r\n"), S("\r\nx\r\n"), 8, true);
    check_stream(S(".\rx\r\n.\r\n"), S("\r\nx\r\n"), 8, true);
}

static void
test_dot_unstuffing(void **state)
{
    (void)state;
    check_stream(S("..\r\n.\r\n"), S(".\r\n"), 7, true);
    check_stream(S("..foo\r\n.foo\r\n...\r\n.\r\n"), S(".foo\r\nfoo\r\n..\r\n"),
                 21, true);
    /* dots inside a line are content */
    check_stream(S("a.b\r\na.\r\n.\r\n"), S("a.b\r\na.\r\n"), 12, true);
    /* after a bare LF or CR a leading dot is dot-stuffing as well */
    check_stream(S("a\n.b\r\n.\r\n"), S("a\r\nb\r\n"), 9, true);
    check_stream(S("a\r..\r\n.\r\n"), S("a\r\n.\r\n"), 9, true);
    /* ".x" at an eligible line start loses the dot */
    check_stream(S("x\r\n.\rz\r\n.\r\n"), S("x\r\n\r\nz\r\n"), 11, true);
}

static void
test_bare_line_ends(void **state)
{
    (void)state;
    check_stream(S("a\nb\rc\r\nd\r\n.\r\n"), S("a\r\nb\r\nc\r\nd\r\n"), 13,
                 true);
    check_stream(S("a\r\r\nb\r\n.\r\n"), S("a\r\n\r\nb\r\n"), 10, true);
    check_stream(S("a\n\n\r\r\n.\r\n"), S("a\r\n\r\n\r\n\r\n"), 9, true);
    /* a CR at the end of the input is held */
    {
        struct smtp_data d;
        char out[16];
        size_t outlen = 0;

        smtp_data_init(&d);
        assert_int_equal(smtp_data_feed(&d, S("abc\r"), out, &outlen), 4);
        assert_int_equal(outlen, 3);
        assert_int_equal(smtp_data_feed(&d, S("x"), out, &outlen), 1);
        assert_int_equal(outlen, 6);
        assert_memory_equal(out, "abc\r\nx", 6);
        assert_int_equal(smtp_data_feed(&d, S("\r"), out, &outlen), 1);
        assert_int_equal(outlen, 6);
        assert_int_equal(smtp_data_feed(&d, S("\n"), out, &outlen), 1);
        assert_int_equal(outlen, 8);
        assert_memory_equal(out, "abc\r\nx\r\n", 8);
        assert_int_equal(d.bytes, 8);
        assert_false(d.done);
    }
}

static void
test_appends_and_stops(void **state)
{
    struct smtp_data d;
    char out[64];
    size_t outlen = 3;

    (void)state;
    memset(out, 0, sizeof(out));
    memcpy(out, "XYZ", 3); /* NOLINT(bugprone-not-null-terminated-result) */
    smtp_data_init(&d);
    /* *outlen is where the bytes go, and grows */
    assert_int_equal(smtp_data_feed(&d, S("ab\r\n.\r\nNOOP\r\n"), out, &outlen),
                     7);
    assert_true(d.done);
    assert_int_equal(outlen, 7);
    assert_memory_equal(out, "XYZab\r\n", 7);
    assert_int_equal(d.bytes, 4);
    /* nothing more is taken once done */
    assert_int_equal(smtp_data_feed(&d, S("NOOP\r\n"), out, &outlen), 0);
    assert_int_equal(outlen, 7);
    assert_int_equal(d.bytes, 4);
    /* init starts over */
    smtp_data_init(&d);
    assert_false(d.done);
    assert_int_equal(d.bytes, 0);
    outlen = 0;
    assert_int_equal(smtp_data_feed(&d, S(".\r\n"), out, &outlen), 3);
    assert_true(d.done);
    assert_int_equal(outlen, 0);
}

static void
test_output_bound(void **state)
{
    static const char *inputs[] = {"\r\r\r\r\r\r", "\n\n\n\n", "\r\n\r\n",
                                   "\r.\r.\r.\r",  ".\r.\r",   "\n.\r\n.\r"};
    (void)state;
    /* every split of worst-case inputs, each feed into an exact-size
     * heap buffer (feed1 checks the bound and ASan the writes) */
    for (size_t k = 0; k < sizeof(inputs) / sizeof(inputs[0]); k++) {
        size_t len = strlen(inputs[k]);

        for (size_t step = 1; step <= len; step++) {
            char *out;
            size_t outlen;
            bool done;

            feed_steps(inputs[k], len, step, &out, &outlen, &done);
            free(out);
        }
    }
    /* a held CR, then one byte: 3 bytes out of a 1-byte feed */
    {
        struct smtp_data d;
        char acc[32];
        size_t acclen = 0;

        smtp_data_init(&d);
        feed1(&d, S("a\r"), acc, &acclen);
        feed1(&d, S("\n"), acc, &acclen);
        feed1(&d, S("b\r"), acc, &acclen);
        feed1(&d, S("\r"), acc, &acclen);
        feed1(&d, S("\n"), acc, &acclen);
        assert_int_equal(acclen, 8);
        assert_memory_equal(acc, "a\r\nb\r\n\r\n", 8);
    }
}

static void
test_long_line(void **state)
{
    size_t n = (size_t)1024 * 1024;
    char *in = malloc(n + 5);
    char *out;
    size_t outlen, used;
    bool done;

    (void)state;
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
        in[i] = (char)('!' + i % 90);
    /* NOLINTNEXTLINE(bugprone-not-null-terminated-result) */
    memcpy(in + n, "\r\n.\r\n", 5);
    for (size_t step = 0; step <= 65536; step = step ? step * 16 : 1) {
        used = feed_steps(in, n + 5, step == 1 ? 4093 : step, &out, &outlen,
                          &done);
        assert_true(done);
        assert_int_equal(used, n + 5);
        assert_int_equal(outlen, n + 2);
        assert_memory_equal(out, in, n + 2);
        free(out);
    }
    free(in);
}

static void
test_big_header_block(void **state)
{
    char *in = malloc(200000);
    size_t n = 0;

    (void)state;
    assert_non_null(in);
    /* Exchange journal reports carry header blocks over 64 KB */
    for (int i = 0; n < 100000; i++)
        n += (size_t)sprintf(in + n,
                             "X-MS-Exchange-Organization-Header-%05d: "
                             "value with .dots. and a long folded\r\n"
                             "\tcontinuation line %d\r\n",
                             i, i);
    n += (size_t)sprintf(in + n, "\r\nbody\r\n");
    /* NOLINTNEXTLINE(bugprone-not-null-terminated-result) */
    memcpy(in + n, ".\r\n", 3);
    check_stream(in, n + 3, in, n, n + 3, true);
    free(in);
}

static void
test_every_split(void **state)
{
    /* a small message with every special case in it, cut everywhere */
    static const char in[] = "Subject: x\r\n"
                             "\r\n"
                             "..stuffed\r\n"
                             "a\nb\rc\r\n"
                             "x\n.\nx\r.\rx\r.\nx\n.\r"
                             "x\n.\r\nx\r\n.\nx\r.\r\nx\r\n.\r"
                             "z\r\n\0.\r\n"
                             ".\r\r\n"
                             "tail\r\n"
                             ".\r\n"
                             "QUIT\r\n";
    static const char want[] = "Subject: x\r\n"
                               "\r\n"
                               ".stuffed\r\n"
                               "a\r\nb\r\nc\r\n"
                               "x\r\n\r\nx\r\n\r\nx\r\n\r\nx\r\n\r\n"
                               "x\r\n\r\nx\r\n\r\nx\r\n\r\nx\r\n\r\n"
                               "z\r\n\0.\r\n"
                               "\r\n\r\n"
                               "tail\r\n";

    (void)state;
    check_stream(in, sizeof(in) - 1, want, sizeof(want) - 1, sizeof(in) - 1 - 6,
                 true);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_end),
        cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_smuggling_at_start),
        cmocka_unit_test(test_dot_unstuffing),
        cmocka_unit_test(test_bare_line_ends),
        cmocka_unit_test(test_appends_and_stops),
        cmocka_unit_test(test_output_bound),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_big_header_block),
        cmocka_unit_test(test_every_split),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
