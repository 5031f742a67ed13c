/* tests/unit/test_smtp_parse.c -- command lines, paths, ESMTP parameters,
 * BDAT, address split and HELO names */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp.h"

/* ------------------------------------------------------------ helpers */

static struct smtp_command
cmd_ok(const char *line, size_t len)
{
    struct smtp_command c;
    struct smtp_error err;

    assert_int_equal(smtp_parse_command(line, len, &c, &err), MG_OK);
    return c;
}

static void
cmd_err(const char *line, size_t len, int code, const char *ecode)
{
    struct smtp_command c;
    struct smtp_error err;

    memset(&err, 0, sizeof(err));
    assert_int_equal(smtp_parse_command(line, len, &c, &err), MG_ERROR);
    assert_int_equal(err.code, code);
    assert_string_equal(err.ecode, ecode);
    assert_non_null(err.text);
}

static struct smtp_mail_args
mail_ok(const char *arg)
{
    struct smtp_mail_args m;
    struct smtp_error err;

    if (smtp_parse_mail(arg, strlen(arg), &m, &err) != MG_OK)
        fail_msg("MAIL %s refused: %d %s %s", arg, err.code, err.ecode,
                 err.text);
    return m;
}

static void
mail_errn(const char *arg, size_t len, int code, const char *ecode)
{
    struct smtp_mail_args m;
    struct smtp_error err;

    memset(&err, 0, sizeof(err));
    if (smtp_parse_mail(arg, len, &m, &err) != MG_ERROR)
        fail_msg("MAIL %.*s accepted", (int)len, arg);
    if (err.code != code || strcmp(err.ecode, ecode) != 0)
        fail_msg("MAIL %.*s: got %d %s (%s), want %d %s", (int)len, arg,
                 err.code, err.ecode, err.text, code, ecode);
}

static void
mail_err(const char *arg, int code, const char *ecode)
{
    mail_errn(arg, strlen(arg), code, ecode);
}

static struct smtp_rcpt_args
rcpt_ok(const char *arg)
{
    struct smtp_rcpt_args r;
    struct smtp_error err;

    if (smtp_parse_rcpt(arg, strlen(arg), &r, &err) != MG_OK)
        fail_msg("RCPT %s refused: %d %s %s", arg, err.code, err.ecode,
                 err.text);
    return r;
}

static void
rcpt_err(const char *arg, int code, const char *ecode)
{
    struct smtp_rcpt_args r;
    struct smtp_error err;

    memset(&err, 0, sizeof(err));
    if (smtp_parse_rcpt(arg, strlen(arg), &r, &err) != MG_ERROR)
        fail_msg("RCPT %s accepted", arg);
    if (err.code != code || strcmp(err.ecode, ecode) != 0)
        fail_msg("RCPT %s: got %d %s (%s), want %d %s", arg, err.code,
                 err.ecode, err.text, code, ecode);
}

/* ------------------------------------------------------------ commands */

static void
test_command_verbs(void **state)
{
    static const struct {
        const char *verb;
        enum smtp_cmd cmd;
    } verbs[] = {
        {"HELO", SMTP_CMD_HELO},         {"EHLO", SMTP_CMD_EHLO},
        {"MAIL", SMTP_CMD_MAIL},         {"RCPT", SMTP_CMD_RCPT},
        {"DATA", SMTP_CMD_DATA},         {"BDAT", SMTP_CMD_BDAT},
        {"RSET", SMTP_CMD_RSET},         {"NOOP", SMTP_CMD_NOOP},
        {"QUIT", SMTP_CMD_QUIT},         {"VRFY", SMTP_CMD_VRFY},
        {"EXPN", SMTP_CMD_EXPN},         {"HELP", SMTP_CMD_HELP},
        {"STARTTLS", SMTP_CMD_STARTTLS}, {"AUTH", SMTP_CMD_AUTH},
        {"ehlo", SMTP_CMD_EHLO},         {"StartTls", SMTP_CMD_STARTTLS},
        {"mAiL", SMTP_CMD_MAIL},
    };
    struct smtp_command c;

    (void)state;
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        c = cmd_ok(verbs[i].verb, strlen(verbs[i].verb));
        assert_int_equal(c.cmd, verbs[i].cmd);
        assert_ptr_equal(c.verb, verbs[i].verb);
        assert_int_equal(c.verblen, strlen(verbs[i].verb));
        assert_string_equal(c.arg, "");
        assert_int_equal(c.arglen, 0);
    }
    /* a prefix or an extension of a verb is not that verb */
    assert_int_equal(cmd_ok("EHL", 3).cmd, SMTP_CMD_UNKNOWN);
    assert_int_equal(cmd_ok("EHLOX", 5).cmd, SMTP_CMD_UNKNOWN);
    assert_int_equal(cmd_ok("STARTTLSX", 9).cmd, SMTP_CMD_UNKNOWN);
    c = cmd_ok("XYZZY foo", 9);
    assert_int_equal(c.cmd, SMTP_CMD_UNKNOWN);
    assert_int_equal(c.verblen, 5);
    assert_int_equal(c.arglen, 3);
    /* GET / HTTP/1.1 (ALPACA) is just an unknown verb */
    assert_int_equal(cmd_ok("GET / HTTP/1.1", 14).cmd, SMTP_CMD_UNKNOWN);
}

static void
test_command_args(void **state)
{
    struct smtp_command c;
    const char *l;

    (void)state;
    l = "MAIL FROM:<a@b> SIZE=10";
    c = cmd_ok(l, strlen(l));
    assert_int_equal(c.cmd, SMTP_CMD_MAIL);
    assert_ptr_equal(c.arg, l + 5);
    assert_int_equal(c.arglen, strlen(l) - 5);

    /* trailing spaces are trimmed; "EHLO " has an empty argument */
    c = cmd_ok("EHLO ", 5);
    assert_int_equal(c.cmd, SMTP_CMD_EHLO);
    assert_int_equal(c.arglen, 0);
    c = cmd_ok("EHLO host.example   ", 20);
    assert_int_equal(c.cmd, SMTP_CMD_EHLO);
    assert_int_equal(c.arglen, 12);
    assert_memory_equal(c.arg, "host.example", 12);
    c = cmd_ok("QUIT \t ", 7);
    assert_int_equal(c.cmd, SMTP_CMD_QUIT);
    assert_int_equal(c.arglen, 0);

    /* only one SP separates: the second one belongs to the argument */
    c = cmd_ok("MAIL  FROM:<>", 13);
    assert_int_equal(c.cmd, SMTP_CMD_MAIL);
    assert_memory_equal(c.arg, " FROM:<>", 8);

    /* the verb ends at SP only: "EHLO\tx" is an unknown verb (→ 500) */
    c = cmd_ok("EHLO\tx", 6);
    assert_int_equal(c.cmd, SMTP_CMD_UNKNOWN);
    assert_int_equal(c.verblen, 6);

    /* the length is honoured, not a NUL */
    c = cmd_ok("DATAXXXX", 4);
    assert_int_equal(c.cmd, SMTP_CMD_DATA);
}

static void
test_command_refused(void **state)
{
    char big[64];

    (void)state;
    cmd_err("", 0, 500, "5.5.2");
    cmd_err("   ", 3, 500, "5.5.2");
    cmd_err(" NOOP", 5, 500, "5.5.2");
    cmd_err("EHLO x\0y", 8, 500, "5.5.2");
    cmd_err("\0", 1, 500, "5.5.2");
    cmd_err("EHLO x\ry", 8, 500, "5.5.2");
    cmd_err("EHLO x\r", 7, 500, "5.5.2");
    cmd_err("RSET\nMAIL FROM:<a@b>", 20, 500, "5.5.2");
    /* the verb limit is 16 bytes */
    memset(big, 'A', sizeof(big));
    assert_int_equal(cmd_ok(big, 16).cmd, SMTP_CMD_UNKNOWN);
    cmd_err(big, 17, 500, "5.5.2");
    cmd_err(big, sizeof(big), 500, "5.5.2");
}

/* ---------------------------------------------------------------- MAIL */

static void
test_mail_valid(void **state)
{
    struct smtp_mail_args m;

    (void)state;
    m = mail_ok("FROM:<user@example.com>");
    assert_string_equal(m.path, "user@example.com");
    assert_false(m.has_size);
    assert_int_equal(m.body, SMTP_BODY_NONE);
    assert_false(m.smtputf8);

    m = mail_ok("FROM:<>");
    assert_string_equal(m.path, "");
    m = mail_ok("from:<>");
    assert_string_equal(m.path, "");
    /* common clients put a space after the colon */
    m = mail_ok("FROM: <a@b.example>");
    assert_string_equal(m.path, "a@b.example");
    m = mail_ok("From:<First.Last+tag@Sub-1.Example.COM>");
    assert_string_equal(m.path, "First.Last+tag@Sub-1.Example.COM");
    m = mail_ok("FROM:<!#$%&'*+-/=?^_`{|}~@x>");
    assert_string_equal(m.path, "!#$%&'*+-/=?^_`{|}~@x");
    /* quoted local parts keep their quotes; '>' and '@' inside them */
    m = mail_ok("FROM:<\"john doe\"@example.com>");
    assert_string_equal(m.path, "\"john doe\"@example.com");
    m = mail_ok("FROM:<\"a>b@c\\\"d\"@example.com> SIZE=1");
    assert_string_equal(m.path, "\"a>b@c\\\"d\"@example.com");
    assert_true(m.has_size);
    /* source routes are accepted and dropped */
    m = mail_ok("FROM:<@a.example,@b.example:u@d.example>");
    assert_string_equal(m.path, "u@d.example");
    m = mail_ok("FROM:<@relay:u@d>");
    assert_string_equal(m.path, "u@d");
    /* address literals */
    m = mail_ok("FROM:<u@[192.0.2.1]>");
    assert_string_equal(m.path, "u@[192.0.2.1]");
    m = mail_ok("FROM:<u@[IPv6:2001:db8::1]>");
    assert_string_equal(m.path, "u@[IPv6:2001:db8::1]");
    m = mail_ok("FROM:<u@[ipv6:::ffff:192.0.2.1]>");
    assert_string_equal(m.path, "u@[ipv6:::ffff:192.0.2.1]");
    /* empty atoms in the local part are tolerated (legacy senders) */
    m = mail_ok("FROM:<a..b.@docomo.example>");
    assert_string_equal(m.path, "a..b.@docomo.example");
    /* a local part of exactly 64 and a path of exactly 512 */
    {
        char arg[700], want[600];

        memset(want, 'l', 64);
        memcpy(want + 64, "@example.com", sizeof("@example.com"));
        (void)snprintf(arg, sizeof(arg), "FROM:<%s>", want);
        m = mail_ok(arg);
        assert_string_equal(m.path, want);

        /* @<domain of 255>: 64 + 1 + 255 = 320 ≤ 512 */
        memset(want, 'l', 64);
        want[64] = '@';
        for (int i = 0; i < 4; i++) {
            memset(want + 65 + (size_t)i * 64, 'd', 63);
            want[65 + (size_t)i * 64 + 63] = '.';
        }
        want[65 + 255] = '\0'; /* 4 labels of 63: a domain of 255 */
        (void)snprintf(arg, sizeof(arg), "FROM:<%s>", want);
        m = mail_ok(arg);
        assert_int_equal(strlen(m.path), 320);
    }
}

static void
test_mail_params(void **state)
{
    struct smtp_mail_args m;

    (void)state;
    m = mail_ok("FROM:<a@b> SIZE=12345 BODY=8BITMIME");
    assert_true(m.has_size);
    assert_int_equal(m.size, 12345);
    assert_int_equal(m.body, SMTP_BODY_8BITMIME);
    m = mail_ok("FROM:<a@b> size=0 body=7bit");
    assert_true(m.has_size);
    assert_int_equal(m.size, 0);
    assert_int_equal(m.body, SMTP_BODY_7BIT);
    /* 2^63 is the largest SIZE */
    m = mail_ok("FROM:<a@b> SIZE=9223372036854775808");
    assert_true(m.size == UINT64_C(9223372036854775808));
    m = mail_ok("FROM:<a@b> SIZE=00000000000000000000000042");
    assert_int_equal(m.size, 42);
    m = mail_ok("FROM:<> SMTPUTF8");
    assert_true(m.smtputf8);
    /* DSN parameters and AUTH= are checked and ignored */
    m = mail_ok("FROM:<a@b> RET=HDRS ENVID=QQ314159+2B+3Dx AUTH=<>");
    assert_string_equal(m.path, "a@b");
    m = mail_ok("FROM:<a@b> ret=full envid=abc auth=user+40example.com");
    assert_string_equal(m.path, "a@b");
    /* several spaces and trailing spaces between parameters */
    m = mail_ok("FROM:<a@b>  SIZE=5   BODY=7BIT  ");
    assert_int_equal(m.size, 5);
    assert_int_equal(m.body, SMTP_BODY_7BIT);
}

static void
test_mail_utf8(void **state)
{
    struct smtp_mail_args m;

    (void)state;
    m = mail_ok("FROM:<j\xc3\xb6rg@b\xc3\xbc"
                "cher.example> SMTPUTF8");
    assert_string_equal(m.path, "j\xc3\xb6rg@b\xc3\xbc"
                                "cher.example");
    assert_true(m.smtputf8);
    m = mail_ok("FROM:<\"\xe2\x82\xac x\"@example> SMTPUTF8 BODY=8BITMIME");
    assert_true(m.smtputf8);
    /* non-ASCII needs SMTPUTF8 */
    mail_err("FROM:<j\xc3\xb6rg@example>", 553, "5.6.7");
    mail_err("FROM:<a@b\xc3\xbc"
             "cher.example> BODY=8BITMIME",
             553, "5.6.7");
    /* invalid UTF-8 is never a mailbox */
    mail_err("FROM:<j\xc3rg@example> SMTPUTF8", 553, "5.1.7");
    mail_err("FROM:<j\xc0\xafrg@example> SMTPUTF8", 553, "5.1.7");
    mail_err("FROM:<a\xed\xa0\x80@example> SMTPUTF8", 553, "5.1.7");
    mail_err("FROM:<a\xf4\x90\x80\x80@example> SMTPUTF8", 553, "5.1.7");
    mail_err("FROM:<a\xff@example> SMTPUTF8", 553, "5.1.7");
}

static void
test_mail_attacks(void **state)
{
    char buf[12000];

    (void)state;
    /* OpenSMTPD CVE-2020-7247 */
    mail_err("FROM:<;sleep 10;>", 553, "5.1.7");
    mail_err("FROM:<;sleep 10;@example.com>", 553, "5.1.7");
    mail_err("FROM:<a;b@example.com>", 553, "5.1.7");
    /* backquotes are atext: valid, and never given to a shell */
    assert_string_equal(mail_ok("FROM:<`id`@example.com>").path,
                        "`id`@example.com");
    /* NUL and other control characters */
    mail_errn("FROM:<a\0@b>", 11, 501, "5.5.2");
    mail_err("FROM:<a\x01@b>", 501, "5.5.2");
    mail_err("FROM:<a@b>\tSIZE=1", 501, "5.5.2");
    mail_err("FROM:<a@b\x7f>", 501, "5.5.2");
    /* missing FROM: or <> */
    mail_err("", 501, "5.5.4");
    mail_err("FROM:", 501, "5.5.4");
    mail_err("FROM:a@b", 501, "5.5.4");
    mail_err("FROM:<a@b", 501, "5.5.4");
    mail_err("FROM <a@b>", 501, "5.5.4");
    mail_err("FROM :<a@b>", 501, "5.5.4");
    mail_err("TO:<a@b>", 501, "5.5.4");
    mail_err("FROMX:<a@b>", 501, "5.5.4");
    mail_err("FROM:<a@b>SIZE=1", 501, "5.5.4");
    mail_err("FROM:<a@b>>", 501, "5.5.4");
    /* not mailboxes */
    mail_err("FROM:<a>", 553, "5.1.7");
    mail_err("FROM:<Postmaster>", 553, "5.1.7");
    mail_err("FROM:<@b>", 553, "5.1.7");
    mail_err("FROM:<a@>", 553, "5.1.7");
    mail_err("FROM:<a@@b>", 553, "5.1.7");
    mail_err("FROM:<a b@c>", 553, "5.1.7");
    mail_err("FROM:<a@b c>", 553, "5.1.7");
    mail_err("FROM:<a@-b.example>", 553, "5.1.7");
    mail_err("FROM:<a@b-.example>", 553, "5.1.7");
    mail_err("FROM:<a@b..example>", 553, "5.1.7");
    mail_err("FROM:<a@b.example.>", 553, "5.1.7");
    mail_err("FROM:<a@b_c.example>", 553, "5.1.7");
    mail_err("FROM:<.@b>", 553, "5.1.7");
    mail_err("FROM:<\"unterminated@b>", 501, "5.5.4");
    mail_err("FROM:<\"a\"b@c>", 553, "5.1.7");
    assert_string_equal(mail_ok("FROM:<\"\"@c>").path, "\"\"@c");
    mail_err("FROM:<@a,b:u@d>", 553, "5.1.7");
    mail_err("FROM:<@a:>", 553, "5.1.7");
    mail_err("FROM:<@a,@:u@d>", 553, "5.1.7");
    mail_err("FROM:<u@[1.2.3]>", 553, "5.1.7");
    mail_err("FROM:<u@[1.2.3.256]>", 553, "5.1.7");
    mail_err("FROM:<u@[1.2.3.4.5]>", 553, "5.1.7");
    mail_err("FROM:<u@[1.2.3.4]x>", 553, "5.1.7");
    mail_err("FROM:<u@[IPv6:2001:db8::g]>", 553, "5.1.7");
    mail_err("FROM:<u@[IPv6:1:2:3:4:5:6:7:8:9]>", 553, "5.1.7");
    mail_err("FROM:<u@[]>", 553, "5.1.7");
    /* 1 KB local part: the path exceeds 512 */
    memset(buf, 'a', 1024);
    (void)snprintf(buf + 1024, 100, "@b>");
    {
        char arg[1200];

        (void)snprintf(arg, sizeof(arg), "FROM:<%.1027s", buf);
        mail_err(arg, 501, "5.5.4");
    }
    /* 65-byte local part, 256-byte domain, 64-byte label */
    {
        char arg[700];

        memset(buf, 'a', 65);
        (void)snprintf(arg, sizeof(arg), "FROM:<%.65s@b>", buf);
        mail_err(arg, 553, "5.1.7");
        memset(buf, 'd', 64);
        (void)snprintf(arg, sizeof(arg), "FROM:<a@%.64s.example>", buf);
        mail_err(arg, 553, "5.1.7");
        for (int i = 0; i < 256; i++)
            buf[i] = (i % 50 == 49) ? '.' : 'd';
        (void)snprintf(arg, sizeof(arg), "FROM:<a@%.256s>", buf);
        mail_err(arg, 553, "5.1.7");
        /* a path of 513 */
        memset(buf, 'a', 513);
        buf[60] = '@';
        (void)snprintf(arg, sizeof(arg), "FROM:<%.513s>", buf);
        mail_err(arg, 501, "5.5.4");
    }
}

static void
test_mail_param_attacks(void **state)
{
    char arg[12000];
    size_t n;

    (void)state;
    /* Exim CVE-2020-28022 family */
    mail_err("FROM:<a@b> SIZE=99999999999999999999", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=18446744073709551616", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=9223372036854775809", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=-1", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=+1", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=1k", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE= 1", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=1 SIZE=1", 501, "5.5.4");
    mail_err("FROM:<a@b> BODY=7BIT BODY=8BITMIME", 501, "5.5.4");
    mail_err("FROM:<a@b> BODY=8BITMIME body=8bitmime", 501, "5.5.4");
    mail_err("FROM:<a@b> BODY=BINARYMIME", 555, "5.5.4");
    mail_err("FROM:<a@b> BODY=", 501, "5.5.4");
    mail_err("FROM:<a@b> BODY", 501, "5.5.4");
    mail_err("FROM:<a@b> X=\"", 555, "5.5.4");
    mail_err("FROM:<a@b> XFOO", 555, "5.5.4");
    mail_err("FROM:<a@b> =", 501, "5.5.4");
    mail_err("FROM:<a@b> =x", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=1=", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE==1", 501, "5.5.4");
    mail_err("FROM:<a@b> -X=1", 501, "5.5.4");
    mail_err("FROM:<a@b> X_Y=1", 501, "5.5.4");
    mail_err("FROM:<a@b> SMTPUTF8=yes", 501, "5.5.4");
    mail_err("FROM:<a@b> SMTPUTF8 SMTPUTF8", 501, "5.5.4");
    mail_err("FROM:<a@b> RET=ALL", 501, "5.5.4");
    mail_err("FROM:<a@b> RET=FULL RET=FULL", 501, "5.5.4");
    mail_err("FROM:<a@b> ENVID=a+2", 501, "5.5.4");
    mail_err("FROM:<a@b> ENVID=a+zz", 501, "5.5.4");
    mail_err("FROM:<a@b> ENVID", 501, "5.5.4");
    mail_err("FROM:<a@b> AUTH", 501, "5.5.4");
    mail_err("FROM:<a@b> SIZE=\xc3\xa9", 501, "5.5.4");
    /* 10 KB parameter list: refused by length before anything else */
    n = (size_t)snprintf(arg, sizeof(arg), "FROM:<a@b>");
    while (n + 8 < 10240)
        n += (size_t)snprintf(arg + n, sizeof(arg) - n, " X%05zu", n);
    mail_err(arg, 501, "5.5.4");
    /* and a list of valid parameters of the same size */
    n = (size_t)snprintf(arg, sizeof(arg), "FROM:<a@b>");
    while (n + 12 < 10240)
        n += (size_t)snprintf(arg + n, sizeof(arg) - n, " SIZE=1");
    mail_err(arg, 501, "5.5.4");
}

/* ---------------------------------------------------------------- RCPT */

static void
test_rcpt(void **state)
{
    struct smtp_rcpt_args r;

    (void)state;
    r = rcpt_ok("TO:<mbx1@archive.example>");
    assert_string_equal(r.path, "mbx1@archive.example");
    r = rcpt_ok("to: <MBX1@Archive.Example>");
    assert_string_equal(r.path, "MBX1@Archive.Example");
    r = rcpt_ok("TO:<Postmaster>");
    assert_string_equal(r.path, "Postmaster");
    r = rcpt_ok("TO:<postmaster>");
    assert_string_equal(r.path, "postmaster");
    r = rcpt_ok("TO:<@hop1,@hop2:u@d.example>");
    assert_string_equal(r.path, "u@d.example");
    r = rcpt_ok("TO:<u@[IPv6:::1]>");
    assert_string_equal(r.path, "u@[IPv6:::1]");
    r = rcpt_ok("TO:<\"x y\"@d>");
    assert_string_equal(r.path, "\"x y\"@d");
    r = rcpt_ok("TO:<a@b> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b");
    assert_string_equal(r.path, "a@b");
    r = rcpt_ok("TO:<a@b> notify=never");
    assert_string_equal(r.path, "a@b");
    r = rcpt_ok("TO:<c@d> NOTIFY=DELAY ORCPT=utf-8;a\\x{40}b");
    assert_string_equal(r.path, "c@d");
    /* non-ASCII is the session's to judge (it knows about SMTPUTF8) */
    r = rcpt_ok("TO:<j\xc3\xb6rg@example>");
    assert_string_equal(r.path, "j\xc3\xb6rg@example");

    rcpt_err("TO:<>", 553, "5.1.3");
    rcpt_err("TO:<Postmaster@>", 553, "5.1.3");
    rcpt_err("TO:<postmasters>", 553, "5.1.3");
    rcpt_err("TO:<;sleep 10;>", 553, "5.1.3");
    rcpt_err("TO:a@b", 501, "5.5.4");
    rcpt_err("FROM:<a@b>", 501, "5.5.4");
    rcpt_err("TO:<a@b> SIZE=1", 555, "5.5.4");
    rcpt_err("TO:<a@b> BODY=7BIT", 555, "5.5.4");
    rcpt_err("TO:<a@b> NOTIFY=NEVER,SUCCESS", 501, "5.5.4");
    rcpt_err("TO:<a@b> NOTIFY=SUCCESS,", 501, "5.5.4");
    rcpt_err("TO:<a@b> NOTIFY=ALWAYS", 501, "5.5.4");
    rcpt_err("TO:<a@b> NOTIFY=DELAY NOTIFY=DELAY", 501, "5.5.4");
    rcpt_err("TO:<a@b> ORCPT=rfc822", 501, "5.5.4");
    rcpt_err("TO:<a@b> ORCPT=;a@b", 501, "5.5.4");
    rcpt_err("TO:<a@b> ORCPT=rfc822;", 501, "5.5.4");
    rcpt_err("TO:<a@b> ORCPT=rfc822;a ORCPT=rfc822;a", 501, "5.5.4");
    rcpt_err("TO:<a@b> X=\"", 555, "5.5.4");
    rcpt_err("TO:<a\x01@b>", 501, "5.5.2");
    {
        struct smtp_rcpt_args rr;
        struct smtp_error err;

        assert_int_equal(smtp_parse_rcpt("TO:<a\0@b>", 10, &rr, &err),
                         MG_ERROR);
        assert_int_equal(err.code, 501);
    }
}

/* ---------------------------------------------------------------- BDAT */

static void
bdat_err(const char *arg)
{
    uint64_t size = 7;
    bool last = true;
    struct smtp_error err;

    memset(&err, 0, sizeof(err));
    if (smtp_parse_bdat(arg, strlen(arg), &size, &last, &err) != MG_ERROR)
        fail_msg("BDAT %s accepted", arg);
    assert_int_equal(err.code, 501);
    assert_string_equal(err.ecode, "5.5.4");
}

static void
test_bdat(void **state)
{
    uint64_t size;
    bool last;
    struct smtp_error err;

    (void)state;
    assert_int_equal(smtp_parse_bdat("1000", 4, &size, &last, &err), MG_OK);
    assert_int_equal(size, 1000);
    assert_false(last);
    assert_int_equal(smtp_parse_bdat("0 LAST", 6, &size, &last, &err), MG_OK);
    assert_int_equal(size, 0);
    assert_true(last);
    assert_int_equal(smtp_parse_bdat("42 last", 7, &size, &last, &err), MG_OK);
    assert_int_equal(size, 42);
    assert_true(last);
    assert_int_equal(
        smtp_parse_bdat("9223372036854775808", 19, &size, &last, &err), MG_OK);
    assert_true(size == UINT64_C(1) << 63);
    bdat_err("");
    bdat_err("LAST");
    bdat_err("-1");
    bdat_err("1x");
    bdat_err("10 LASTX");
    bdat_err("10 LAST LAST");
    bdat_err("10 FIRST");
    bdat_err("9223372036854775809");
    bdat_err("99999999999999999999999");
    bdat_err(" 10");
}

/* ---------------------------------------------------------- split/HELO */

static void
test_split_address(void **state)
{
    char local[65], domain[256];

    (void)state;
    assert_int_equal(smtp_split_address("Mbx1@Archive.EXAMPLE", local,
                                        sizeof(local), domain, sizeof(domain)),
                     MG_OK);
    assert_string_equal(local, "Mbx1");
    assert_string_equal(domain, "archive.example");
    /* at the last '@' */
    assert_int_equal(smtp_split_address("\"a@b\"@C.d", local, sizeof(local),
                                        domain, sizeof(domain)),
                     MG_OK);
    assert_string_equal(local, "\"a@b\"");
    assert_string_equal(domain, "c.d");
    assert_int_equal(smtp_split_address("u@[IPv6:::1]", local, sizeof(local),
                                        domain, sizeof(domain)),
                     MG_OK);
    assert_string_equal(domain, "[ipv6:::1]");
    assert_int_equal(smtp_split_address("Postmaster", local, sizeof(local),
                                        domain, sizeof(domain)),
                     MG_ERROR);
    assert_int_equal(
        smtp_split_address("", local, sizeof(local), domain, sizeof(domain)),
        MG_ERROR);
    assert_int_equal(
        smtp_split_address("@d", local, sizeof(local), domain, sizeof(domain)),
        MG_ERROR);
    assert_int_equal(
        smtp_split_address("u@", local, sizeof(local), domain, sizeof(domain)),
        MG_ERROR);
    /* too long for the buffers (the terminator counts) */
    assert_int_equal(
        smtp_split_address("abcd@ef", local, 5, domain, sizeof(domain)), MG_OK);
    assert_int_equal(
        smtp_split_address("abcde@ef", local, 5, domain, sizeof(domain)),
        MG_ERROR);
    assert_int_equal(
        smtp_split_address("a@efg", local, sizeof(local), domain, 3), MG_ERROR);
}

static void
test_helo(void **state)
{
    char out[16];
    struct smtp_error err;

    (void)state;
    assert_int_equal(smtp_parse_helo("mx.example", 10, out, sizeof(out), &err),
                     MG_OK);
    assert_string_equal(out, "mx.example");
    assert_int_equal(smtp_parse_helo("[192.0.2.1]", 11, out, sizeof(out), &err),
                     MG_OK);
    assert_string_equal(out, "[192.0.2.1]");
    assert_int_equal(smtp_parse_helo("my_host", 7, out, sizeof(out), &err),
                     MG_OK);
    /* copied up to outsz - 1 */
    assert_int_equal(
        smtp_parse_helo("a-very-long-host.example", 24, out, sizeof(out), &err),
        MG_OK);
    assert_string_equal(out, "a-very-long-hos");

    memset(&err, 0, sizeof(err));
    assert_int_equal(smtp_parse_helo("", 0, out, sizeof(out), &err), MG_ERROR);
    assert_int_equal(err.code, 501);
    assert_string_equal(err.ecode, "5.5.4");
    assert_int_equal(smtp_parse_helo("a b", 3, out, sizeof(out), &err),
                     MG_ERROR);
    assert_int_equal(smtp_parse_helo("a\tb", 3, out, sizeof(out), &err),
                     MG_ERROR);
    assert_int_equal(smtp_parse_helo("a\0b", 3, out, sizeof(out), &err),
                     MG_ERROR);
    assert_int_equal(smtp_parse_helo("h\xc3\xa9", 3, out, sizeof(out), &err),
                     MG_ERROR);
    assert_int_equal(err.code, 501);
    assert_string_equal(out, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_verbs),
        cmocka_unit_test(test_command_args),
        cmocka_unit_test(test_command_refused),
        cmocka_unit_test(test_mail_valid),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_mail_utf8),
        cmocka_unit_test(test_mail_attacks),
        cmocka_unit_test(test_mail_param_attacks),
        cmocka_unit_test(test_rcpt),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_split_address),
        cmocka_unit_test(test_helo),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
