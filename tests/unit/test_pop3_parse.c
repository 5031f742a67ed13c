/* tests/unit/test_pop3_parse.c -- command lines, message numbers, TOP
 * arguments, login names, SASL PLAIN and the dot-stuffing encoder */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pop3.h"

#define S(lit) lit, sizeof(lit) - 1

/* ------------------------------------------------------------ commands */

static struct pop3_command
cmd_ok(const char *line, size_t len)
{
    struct pop3_command c;
    const char *why = NULL;

    assert_int_equal(pop3_parse_command(line, len, &c, &why), MG_OK);
    return c;
}

static void
cmd_err(const char *line, size_t len)
{
    struct pop3_command c;
    const char *why = NULL;

    assert_int_equal(pop3_parse_command(line, len, &c, &why), MG_ERROR);
    assert_non_null(why);
    assert_null(strpbrk(why, "\r\n"));
}

static void
test_commands(void **state)
{
    struct pop3_command c;

    (void)state;
    c = cmd_ok(S("CAPA"));
    assert_int_equal(c.cmd, POP3_CMD_CAPA);
    assert_int_equal(c.arglen, 0);
    assert_string_equal(c.arg, "");
    c = cmd_ok(S("retr 1"));
    assert_int_equal(c.cmd, POP3_CMD_RETR);
    assert_int_equal(c.arglen, 1);
    assert_memory_equal(c.arg, "1", 1);
    c = cmd_ok(S("Top 1 10  "));
    assert_int_equal(c.cmd, POP3_CMD_TOP);
    assert_int_equal(c.arglen, 4);
    c = cmd_ok(S("NOOP "));
    assert_int_equal(c.cmd, POP3_CMD_NOOP);
    assert_int_equal(c.arglen, 0);
    /* the password keeps its spaces */
    c = cmd_ok(S("PASS  pass word "));
    assert_int_equal(c.cmd, POP3_CMD_PASS);
    assert_int_equal(c.arglen, 11);
    assert_memory_equal(c.arg, " pass word ", 11);
    c = cmd_ok(S("XTND foo"));
    assert_int_equal(c.cmd, POP3_CMD_UNKNOWN);
    assert_int_equal(c.verblen, 4);
    for (int i = POP3_CMD_CAPA; i <= POP3_CMD_QUIT; i++) {
        static const char *const v[] = {
            "",     "CAPA", "STLS", "USER", "PASS", "AUTH", "APOP", "STAT",
            "LIST", "UIDL", "TOP",  "RETR", "DELE", "RSET", "NOOP", "QUIT"};

        c = cmd_ok(v[i], strlen(v[i]));
        assert_int_equal(c.cmd, i);
    }
}

static void
test_command_refusals(void **state)
{
    (void)state;
    cmd_err(S(""));
    cmd_err(S(" NOOP"));
    cmd_err(S("NO\0OP"));
    cmd_err(S("NOOP\0"));
    cmd_err(S("USER a\0b"));
    cmd_err(S("QU\rIT"));
    cmd_err(S("NOOP\n"));
    cmd_err(S("RETR\t1"));
    cmd_err(S("R3TR 1"));
    cmd_err(S("VERYLONGVERB"));
    cmd_err(S("\x80\x81"));
}

static void
test_msgno(void **state)
{
    uint32_t n = 0;

    (void)state;
    assert_int_equal(pop3_parse_msgno(S("1"), &n), MG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(pop3_parse_msgno(S("4294967295"), &n), MG_OK);
    assert_int_equal(n, UINT32_MAX);
    assert_int_equal(pop3_parse_msgno(S("007"), &n), MG_OK);
    assert_int_equal(n, 7);
    assert_int_equal(pop3_parse_msgno(S("0"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("4294967296"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("4294967297"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("999999999999999999999999999999"), &n),
                     MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S(""), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("-1"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("+1"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("1 2"), &n), MG_ERROR);
    assert_int_equal(pop3_parse_msgno(S("1x"), &n), MG_ERROR);
}

static void
test_top(void **state)
{
    uint32_t n = 0;
    uint64_t lines = 0;

    (void)state;
    assert_int_equal(pop3_parse_top(S("1 10"), &n, &lines), MG_OK);
    assert_int_equal(n, 1);
    assert_int_equal(lines, 10);
    assert_int_equal(pop3_parse_top(S("3 0"), &n, &lines), MG_OK);
    assert_int_equal(lines, 0);
    assert_int_equal(pop3_parse_top(S("2 99999999999999999999999"), &n, &lines),
                     MG_OK);
    assert_true(lines == UINT64_MAX);
    assert_int_equal(pop3_parse_top(S("1 -5"), &n, &lines), MG_ERROR);
    assert_int_equal(pop3_parse_top(S("1"), &n, &lines), MG_ERROR);
    assert_int_equal(pop3_parse_top(S("1 "), &n, &lines), MG_ERROR);
    assert_int_equal(pop3_parse_top(S("0 1"), &n, &lines), MG_ERROR);
    assert_int_equal(pop3_parse_top(S("1  1"), &n, &lines), MG_ERROR);
    assert_int_equal(pop3_parse_top(S("1 1 1"), &n, &lines), MG_ERROR);
}

static void
test_login_names(void **state)
{
    char id[33];

    (void)state;
    assert_int_equal(pop3_login_mailbox(S("abcdefgh12345678"), "ex.test", id),
                     MG_OK);
    assert_string_equal(id, "abcdefgh12345678");
    assert_int_equal(
        pop3_login_mailbox(S("ABCDEFGH12345678@Ex.Test"), "ex.test", id),
        MG_OK);
    assert_string_equal(id, "abcdefgh12345678");
    assert_int_equal(
        pop3_login_mailbox(S("abcdefgh@other.test"), "ex.test", id),
        MG_DECLINED);
    assert_int_equal(pop3_login_mailbox(S("abcdefgh@ex.test"), NULL, id),
                     MG_DECLINED);
    assert_int_equal(pop3_login_mailbox(S("short"), "ex.test", id),
                     MG_DECLINED);
    assert_int_equal(
        pop3_login_mailbox(S("abcdefgh1234567890123456789012345"), NULL, id),
        MG_DECLINED);
    assert_int_equal(pop3_login_mailbox(S("abcd-efgh"), NULL, id), MG_DECLINED);
    assert_int_equal(pop3_login_mailbox(S("user%host%abcdefgh"), NULL, id),
                     MG_DECLINED);
    assert_int_equal(pop3_login_mailbox(S("@ex.test"), "ex.test", id),
                     MG_DECLINED);
}

static void
test_sasl_plain(void **state)
{
    char out[64];
    const char *z, *u, *p;

    (void)state;
    /* "\0user\0pass" */
    assert_int_equal(
        pop3_sasl_plain(S("AHVzZXIAcGFzcw=="), out, sizeof(out), &z, &u, &p),
        MG_OK);
    assert_string_equal(z, "");
    assert_string_equal(u, "user");
    assert_string_equal(p, "pass");
    /* "admin\0user\0pass" */
    assert_int_equal(pop3_sasl_plain(S("YWRtaW4AdXNlcgBwYXNz"), out,
                                     sizeof(out), &z, &u, &p),
                     MG_OK);
    assert_string_equal(z, "admin");
    assert_string_equal(u, "user");
    assert_string_equal(p, "pass");
    /* refusals: empty, "=", bad base64, one NUL, three NULs, empty parts */
    assert_int_equal(pop3_sasl_plain(S(""), out, sizeof(out), &z, &u, &p),
                     MG_ERROR);
    assert_int_equal(pop3_sasl_plain(S("="), out, sizeof(out), &z, &u, &p),
                     MG_ERROR);
    assert_int_equal(
        pop3_sasl_plain(S("AHVz!XIAcGFzcw=="), out, sizeof(out), &z, &u, &p),
        MG_ERROR);
    assert_int_equal(
        pop3_sasl_plain(S("dXNlcgBwYXNz"), out, sizeof(out), &z, &u, &p),
        MG_ERROR);
    assert_int_equal(
        pop3_sasl_plain(S("AHUAcABx"), out, sizeof(out), &z, &u, &p), MG_ERROR);
    assert_int_equal(
        pop3_sasl_plain(S("AABwYXNz"), out, sizeof(out), &z, &u, &p), MG_ERROR);
    assert_int_equal(
        pop3_sasl_plain(S("AHVzZXIA"), out, sizeof(out), &z, &u, &p), MG_ERROR);
    /* larger than the buffer */
    assert_int_equal(pop3_sasl_plain(S("AHVzZXIAcGFzcw=="), out, 8, &z, &u, &p),
                     MG_ERROR);
}

/* ---------------------------------------------------------- stuffing */

static char *
stuff_all(const char *in, size_t len, uint64_t limit, size_t piece,
          size_t *outlen)
{
    char *out = malloc(2 * len + 8);
    struct pop3_stuff st;
    size_t o = 0, i = 0;

    assert_non_null(out);
    pop3_stuff_init(&st, limit);
    while (i < len && !st.done) {
        size_t n = len - i < piece ? len - i : piece;

        i += pop3_stuff_feed(&st, in + i, n, out, &o);
    }
    o += pop3_stuff_end(&st, out + o);
    out[o] = '\0';
    *outlen = o;
    return out;
}

static void
stuff_is(const char *in, uint64_t limit, const char *want)
{
    for (size_t piece = 1; piece <= strlen(in) + 1; piece++) {
        size_t olen;
        char *out = stuff_all(in, strlen(in), limit, piece, &olen);

        assert_string_equal(out, want);
        free(out);
    }
}

static void
test_stuffing(void **state)
{
    (void)state;
    stuff_is("", POP3_ALL_LINES, ".\r\n");
    stuff_is("a\r\n", POP3_ALL_LINES, "a\r\n.\r\n");
    stuff_is(".\r\n", POP3_ALL_LINES, "..\r\n.\r\n");
    stuff_is("H: x\r\n\r\n.a\r\n..b\r\nc.\r\n.", POP3_ALL_LINES,
             "H: x\r\n\r\n..a\r\n...b\r\nc.\r\n..\r\n.\r\n");
    /* no final CRLF: one is added */
    stuff_is("a\r\nb", POP3_ALL_LINES, "a\r\nb\r\n.\r\n");
    /* a bare LF ends a line for stuffing; the end still gets a CRLF */
    stuff_is("a\n.b\n", POP3_ALL_LINES, "a\n..b\n\r\n.\r\n");
    stuff_is("a\r\n\r", POP3_ALL_LINES, "a\r\n\r\r\n.\r\n");
}

static void
test_top_lines(void **state)
{
    const char *msg = "H: 1\r\nH: 2\r\n\r\nb1\r\n.b2\r\nb3\r\n";

    (void)state;
    stuff_is(msg, 0, "H: 1\r\nH: 2\r\n\r\n.\r\n");
    stuff_is(msg, 1, "H: 1\r\nH: 2\r\n\r\nb1\r\n.\r\n");
    stuff_is(msg, 2, "H: 1\r\nH: 2\r\n\r\nb1\r\n..b2\r\n.\r\n");
    stuff_is(msg, 3, "H: 1\r\nH: 2\r\n\r\nb1\r\n..b2\r\nb3\r\n.\r\n");
    stuff_is(msg, 1000, "H: 1\r\nH: 2\r\n\r\nb1\r\n..b2\r\nb3\r\n.\r\n");
    /* no body separator: the whole message */
    stuff_is("H: 1\r\nH: 2\r\n", 0, "H: 1\r\nH: 2\r\n.\r\n");
    /* bare LF header end */
    stuff_is("H: 1\n\nb1\nb2\n", 1, "H: 1\n\nb1\n\r\n.\r\n");
    /* an unterminated last body line */
    stuff_is("H: 1\r\n\r\nb1", 5, "H: 1\r\n\r\nb1\r\n.\r\n");
}

/* A plain oracle for RETR: a '.' first on a line is doubled; the end is
 * [CRLF] ".CRLF". Random inputs of dots, CRs, LFs and letters, fed in
 * random pieces, must give the same bytes. */
static void
test_stuffing_random(void **state)
{
    static const char alphabet[] = ".\r\na";
    char in[256], want[600];

    (void)state;
    srand(1939);
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)rand() % sizeof(in), w = 0;

        for (size_t i = 0; i < len; i++) {
            in[i] = alphabet[rand() % 4];
            if (in[i] == '.' && (i == 0 || in[i - 1] == '\n'))
                want[w++] = '.';
            want[w++] = in[i];
        }
        /* the encoder starts as if after a CRLF: nothing is added to an
         * empty message */
        char before_last = len >= 2 ? in[len - 2] : len == 1 ? '\n' : '\r';
        char last = len >= 1 ? in[len - 1] : '\n';

        if (before_last != '\r' || last != '\n') {
            want[w++] = '\r';
            want[w++] = '\n';
        }
        memcpy(want + w, ".\r\n", 4);

        size_t olen;
        char *out = stuff_all(in, len, POP3_ALL_LINES,
                              1 + (size_t)rand() % (len + 1), &olen);

        bool same = olen == w + 3 && memcmp(out, want, w + 3) == 0;

        free(out);
        assert_true(same);
    }
}

static void
test_stuffing_bound(void **state)
{
    /* every byte a dot line: the worst case is 2 * len */
    char in[64], out[128];
    struct pop3_stuff st;
    size_t olen = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(in); i += 2) {
        in[i] = '.';
        in[i + 1] = '\n';
    }
    pop3_stuff_init(&st, POP3_ALL_LINES);
    assert_int_equal(pop3_stuff_feed(&st, in, sizeof(in), out, &olen),
                     sizeof(in));
    assert_int_equal(olen, sizeof(in) * 3 / 2);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_command_refusals),
        cmocka_unit_test(test_msgno),
        cmocka_unit_test(test_top),
        cmocka_unit_test(test_login_names),
        cmocka_unit_test(test_sasl_plain),
        cmocka_unit_test(test_stuffing),
        cmocka_unit_test(test_top_lines),
        cmocka_unit_test(test_stuffing_bound),
        cmocka_unit_test(test_stuffing_random),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
