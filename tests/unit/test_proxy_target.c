/* tests/unit/test_proxy_target.c -- proxy login names, target servers,
 * target rules and the address classes the default policy refuses */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy_target.h"

static struct proxy_login
login_ok(const char *name)
{
    struct proxy_login l;
    const char *why = NULL;

    assert_int_equal(proxy_login_parse(name, 995, &l, &why), 0);
    return l;
}

static void
login_bad(const char *name)
{
    struct proxy_login l;
    const char *why = NULL;

    assert_int_equal(proxy_login_parse(name, 995, &l, &why), -1);
    assert_non_null(why);
    assert_null(strpbrk(why, "\r\n"));
}

static void
test_login_split(void **state)
{
    struct proxy_login l;
    const char *why = NULL;

    (void)state;
    l = login_ok("alice%pop.example.com%abcdefgh12345678");
    assert_string_equal(l.user, "alice");
    assert_string_equal(l.host, "pop.example.com");
    assert_int_equal(l.port, 995);
    assert_false(l.ip_literal);
    assert_string_equal(l.mailbox, "abcdefgh12345678");
    assert_string_equal(l.upstream, "pop.example.com:995");
    /* the user part keeps its own '%' signs: split on the last two */
    l = login_ok("a%b%c%Mail.Example.COM:1110%ABCDEFGH");
    assert_string_equal(l.user, "a%b%c");
    assert_string_equal(l.host, "mail.example.com");
    assert_int_equal(l.port, 1110);
    assert_string_equal(l.mailbox, "abcdefgh");
    l = login_ok("bob@example.com%192.0.2.7%abcdefgh");
    assert_true(l.ip_literal);
    assert_string_equal(l.upstream, "192.0.2.7:995");
    l = login_ok("u%[2001:DB8::1]:110%abcdefgh");
    assert_string_equal(l.host, "2001:db8::1");
    assert_int_equal(l.port, 110);
    assert_true(l.ip_literal);
    assert_string_equal(l.upstream, "[2001:db8::1]:110");
    l = login_ok("u%[::1]%abcdefgh");
    assert_int_equal(l.port, 995);
    /* fewer than two '%': not a proxy login */
    assert_int_equal(proxy_login_parse("abcdefgh", 995, &l, &why), 1);
    assert_int_equal(proxy_login_parse("a%abcdefgh", 995, &l, &why), 1);
}

static void
test_login_malformed(void **state)
{
    char big[600];

    (void)state;
    login_bad("%host%abcdefgh");
    login_bad("user%%abcdefgh");
    login_bad("user%host%");
    login_bad("user%host%short");
    login_bad("user%host%abcdefgh!");
    login_bad("user%host:0%abcdefgh");
    login_bad("user%host:65536%abcdefgh");
    login_bad("user%host:%abcdefgh");
    login_bad("user%host:12a%abcdefgh");
    login_bad("user%ho st%abcdefgh");
    login_bad("us\rer%host%abcdefgh");
    login_bad("user%ho\nst%abcdefgh");
    login_bad("user%-host%abcdefgh");
    login_bad("user%host..com%abcdefgh");
    login_bad("user%[::1%abcdefgh");
    login_bad("user%[zz::1]:110%abcdefgh");
    login_bad("user%::1:110x%abcdefgh");
    login_bad("user%[::1]x%abcdefgh");
    memset(big, 'a', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    memcpy(big + 300, "%h%abcdefgh", 12); /* a 300-character user */
    login_bad(big);
    memset(big, 'a', sizeof(big));
    big[0] = 'u';
    big[1] = '%';
    memcpy(big + 580, "%abcdefgh", 10); /* a 578-character host */
    login_bad(big);
}

static void
sa4(struct sockaddr_storage *ss, const char *a, int port)
{
    struct sockaddr_in *s = (struct sockaddr_in *)ss;

    memset(ss, 0, sizeof(*ss));
    s->sin_family = AF_INET;
    s->sin_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET, a, &s->sin_addr), 1);
}

static void
sa6(struct sockaddr_storage *ss, const char *a, int port)
{
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    s->sin6_family = AF_INET6;
    s->sin6_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET6, a, &s->sin6_addr), 1);
}

static const char *
class4(const char *a)
{
    struct sockaddr_storage ss;

    sa4(&ss, a, 995);
    return proxy_addr_class((struct sockaddr *)&ss);
}

static const char *
class6(const char *a)
{
    struct sockaddr_storage ss;

    sa6(&ss, a, 995);
    return proxy_addr_class((struct sockaddr *)&ss);
}

static void
test_addr_class(void **state)
{
    (void)state;
    assert_non_null(class4("127.0.0.1"));
    assert_non_null(class4("127.255.0.9"));
    assert_non_null(class4("169.254.169.254"));
    assert_non_null(class4("10.1.2.3"));
    assert_non_null(class4("172.16.0.1"));
    assert_non_null(class4("172.31.255.255"));
    assert_null(class4("172.32.0.1"));
    assert_non_null(class4("192.168.1.1"));
    assert_non_null(class4("100.64.0.1"));
    assert_non_null(class4("0.0.0.0"));
    assert_non_null(class4("224.0.0.1"));
    assert_non_null(class4("255.255.255.255"));
    assert_null(class4("8.8.8.8"));
    assert_null(class4("198.51.100.7"));
    assert_non_null(class6("::1"));
    assert_non_null(class6("::"));
    assert_non_null(class6("fe80::1"));
    assert_non_null(class6("fd00::1"));
    assert_non_null(class6("ff02::1"));
    assert_non_null(class6("::ffff:127.0.0.1"));
    assert_non_null(class6("::ffff:169.254.169.254"));
    assert_non_null(class6("64:ff9b::a9fe:a9fe")); /* NAT64 169.254.169.254 */
    assert_non_null(class6("2002:7f00:1::1"));     /* 6to4 of 127.0.0.1 */
    assert_null(class6("2001:4860:4860::8888"));
    assert_null(class6("::ffff:8.8.8.8"));
}

static void
test_rules(void **state)
{
    struct proxy_rule r;
    struct sockaddr_storage ss;
    const char *why = NULL;

    (void)state;
    assert_int_equal(proxy_rule_parse("127.0.0.1", &r, &why), 0);
    sa4(&ss, "127.0.0.1", 1110);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    sa6(&ss, "::ffff:127.0.0.1", 1110);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    sa4(&ss, "127.0.0.2", 1110);
    assert_false(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    assert_false(proxy_rule_match_name(&r, "127.0.0.1", 995));

    assert_int_equal(proxy_rule_parse("127.0.0.1:1110", &r, &why), 0);
    sa4(&ss, "127.0.0.1", 1110);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    sa4(&ss, "127.0.0.1", 995);
    assert_false(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));

    assert_int_equal(proxy_rule_parse("192.168.0.0/16", &r, &why), 0);
    sa4(&ss, "192.168.44.3", 995);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    sa4(&ss, "192.169.0.1", 995);
    assert_false(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));

    assert_int_equal(proxy_rule_parse("fd00::/8", &r, &why), 0);
    sa6(&ss, "fd12::5", 995);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    sa4(&ss, "10.0.0.1", 995);
    assert_false(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));

    assert_int_equal(proxy_rule_parse("Mail.LAN", &r, &why), 0);
    assert_true(proxy_rule_match_name(&r, "mail.lan", 995));
    assert_true(proxy_rule_match_name(&r, "mail.lan", 110));
    assert_false(proxy_rule_match_name(&r, "mail.lan2", 995));
    sa4(&ss, "10.0.0.1", 995);
    assert_false(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));
    assert_int_equal(proxy_rule_parse("mail.lan:110", &r, &why), 0);
    assert_false(proxy_rule_match_name(&r, "mail.lan", 995));
    assert_int_equal(proxy_rule_parse("[::1]:110", &r, &why), 0);
    sa6(&ss, "::1", 110);
    assert_true(proxy_rule_match_addr(&r, (struct sockaddr *)&ss));

    assert_int_equal(proxy_rule_parse("", &r, &why), -1);
    assert_int_equal(proxy_rule_parse("10.0.0.0/33", &r, &why), -1);
    assert_int_equal(proxy_rule_parse("10.0.0.0/", &r, &why), -1);
    assert_int_equal(proxy_rule_parse("bad host", &r, &why), -1);
    assert_int_equal(proxy_rule_parse("host:99999", &r, &why), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login_split),
        cmocka_unit_test(test_login_malformed),
        cmocka_unit_test(test_addr_class),
        cmocka_unit_test(test_rules),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
