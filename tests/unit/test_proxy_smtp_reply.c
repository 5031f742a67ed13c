/* tests/unit/test_proxy_smtp_reply.c -- the pure part of the SMTP proxy:
 * upstream replies checked line by line, EHLO keywords, dot-stuffing. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy_smtp.h"

static int
add(struct psmtp_reply *r, const char *line, const char **why)
{
    return psmtp_reply_add(r, line, strlen(line), why);
}

static void
test_reply_multiline(void **state)
{
    struct psmtp_reply r = {0};
    struct mg_reply out;
    const char *why = NULL;

    (void)state;
    assert_int_equal(add(&r, "550-5.1.1 first", &why), MG_OK);
    assert_false(r.done);
    assert_int_equal(add(&r, "550-5.1.1 second\x01", &why), MG_OK);
    assert_int_equal(add(&r, "550 last without code", &why), MG_OK);
    assert_true(r.done);
    psmtp_reply_out(&r, "5.0.0", &out);
    assert_int_equal(out.code, 550);
    assert_string_equal(out.ecode, "5.1.1");
    assert_int_equal(out.nlines, 3);
    assert_string_equal(out.lines[0], "first");
    assert_string_equal(out.lines[1], "second?");
    assert_string_equal(out.lines[2], "last without code");
    /* nothing may follow the last line */
    assert_int_equal(add(&r, "250 more", &why), MG_ERROR);
    psmtp_reply_clear(&r);

    assert_int_equal(add(&r, "250", &why), MG_OK);
    assert_true(r.done);
    psmtp_reply_out(&r, "2.0.0", &out);
    assert_string_equal(out.ecode, "2.0.0");
    assert_string_equal(out.lines[0], "");
    psmtp_reply_clear(&r);

    /* an enhanced code of another class is text, not a code */
    assert_int_equal(add(&r, "250 5.1.1 odd", &why), MG_OK);
    psmtp_reply_out(&r, "2.0.0", &out);
    assert_string_equal(out.ecode, "2.0.0");
    assert_string_equal(out.lines[0], "5.1.1 odd");
    psmtp_reply_clear(&r);

    assert_int_equal(add(&r, "354 go", &why), MG_OK);
    psmtp_reply_out(&r, "2.0.0", &out);
    assert_null(out.ecode);
    psmtp_reply_clear(&r);
}

static void
test_reply_hostile(void **state)
{
    static const char *const bad[] = {
        "", "25", "2500 x", "250x", "150 x", "650 x", "2a0 x", "260 x", "-250",
    };
    struct psmtp_reply r = {0};
    const char *why = NULL;
    char line[PSMTP_LINE_MAX + 2];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        assert_int_equal(add(&r, bad[i], &why), MG_ERROR);
        assert_non_null(why);
        psmtp_reply_clear(&r);
    }
    /* the code changes within the reply */
    assert_int_equal(add(&r, "250-a", &why), MG_OK);
    assert_int_equal(add(&r, "251 b", &why), MG_ERROR);
    psmtp_reply_clear(&r);
    /* a continuation without end */
    for (int i = 0; i < PSMTP_REPLY_LINES; i++)
        assert_int_equal(add(&r, "250-more", &why), MG_OK);
    assert_int_equal(add(&r, "250-more", &why), MG_ERROR);
    assert_int_equal(add(&r, "250 end", &why), MG_ERROR);
    psmtp_reply_clear(&r);
    /* an overlong line */
    memset(line, 'x', sizeof(line) - 1);
    memcpy(line, "250 ", 4);
    line[sizeof(line) - 1] = '\0';
    assert_int_equal(add(&r, line, &why), MG_ERROR);
    psmtp_reply_clear(&r);
}

static void
test_caps(void **state)
{
    struct psmtp_caps c = {0};

    (void)state;
    psmtp_caps_line(&c, "SIZE 35882577");
    psmtp_caps_line(&c, "auth=LOGIN");
    psmtp_caps_line(&c, "PIPELINING");
    psmtp_caps_line(&c, "STARTTLSX");
    psmtp_caps_line(&c, "8BITMIME");
    assert_true(c.size);
    assert_int_equal(c.size_max, 35882577);
    assert_true(c.auth_login);
    assert_false(c.auth_plain);
    assert_true(c.pipelining);
    assert_false(c.starttls);
    assert_true(c.eightbit);
    assert_false(c.chunking);
    psmtp_caps_line(&c, "AUTH GSSAPI PLAIN");
    assert_true(c.auth_plain);
}

/* Feed `in` in pieces of `step` bytes; compare both outputs. */
static void
stuff_check(const char *in, size_t step, const char *up, const char *copy)
{
    struct psmtp_stuff f;
    size_t len = strlen(in), ul = 0, cl = 0;
    char *u = malloc(2 * len + 8), *c = malloc(2 * len + 8);

    psmtp_stuff_init(&f);
    for (size_t i = 0; i < len; i += step) {
        size_t n = len - i < step ? len - i : step;

        psmtp_stuff(&f, in + i, n, u, &ul, c, &cl);
    }
    psmtp_stuff_end(&f, u, &ul, c, &cl);
    assert_int_equal(ul, strlen(up));
    assert_memory_equal(u, up, ul);
    assert_int_equal(cl, strlen(copy));
    assert_memory_equal(c, copy, cl);
    free(u);
    free(c);
}

static void
test_stuff(void **state)
{
    (void)state;
    for (size_t step = 1; step <= 7; step++) {
        stuff_check("", step, "", "");
        stuff_check("a\r\n", step, "a\r\n", "a\r\n");
        stuff_check(".a\r\n..b\r\n.\r\n", step, "..a\r\n...b\r\n..\r\n",
                    ".a\r\n..b\r\n.\r\n");
        /* bare LF and bare CR become CRLF; a dot after them is stuffed */
        stuff_check("x\n.\ny\r.\rz", step, "x\r\n..\r\ny\r\n..\r\nz\r\n",
                    "x\r\n.\r\ny\r\n.\r\nz\r\n");
        stuff_check("end\r", step, "end\r\n", "end\r\n");
        stuff_check("a.b\r\n", step, "a.b\r\n", "a.b\r\n");
    }
    /* several line ends of every kind in one piece (the next CR and LF
     * are looked up once and kept) */
    for (size_t step = 1; step <= 48; step++)
        stuff_check("one\r\ntwo\rthree\nfour\r\r\n.five\n\n.\r\nsix seven "
                    "eight\r\n..nine",
                    step,
                    "one\r\ntwo\r\nthree\r\nfour\r\n\r\n..five\r\n\r\n..\r\n"
                    "six seven eight\r\n...nine\r\n",
                    "one\r\ntwo\r\nthree\r\nfour\r\n\r\n.five\r\n\r\n.\r\n"
                    "six seven eight\r\n..nine\r\n");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_multiline),
        cmocka_unit_test(test_reply_hostile),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_stuff),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
