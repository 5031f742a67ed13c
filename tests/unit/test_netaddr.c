/* tests/unit/test_netaddr.c -- CIDR parsing and matching, sockaddr text */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "mg.h"

static struct sockaddr_storage
sa_make(const char *text, int port)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':') == NULL) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    }
    return ss;
}

static bool
matches(const char *cidr, const char *addr)
{
    struct mg_cidr c;
    const char *err = NULL;
    struct sockaddr_storage ss = sa_make(addr, 25);

    assert_int_equal(mg_cidr_parse(cidr, &c, &err), MG_OK);
    return mg_cidr_match(&c, (struct sockaddr *)&ss);
}

static void
test_parse_good(void **state)
{
    struct mg_cidr c;
    const char *err = NULL;
    const uint8_t net[4] = {192, 0, 2, 0};

    (void)state;
    assert_int_equal(mg_cidr_parse("192.0.2.1", &c, &err), MG_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 32);

    assert_int_equal(mg_cidr_parse("192.0.2.0/24", &c, &err), MG_OK);
    assert_int_equal(c.prefix, 24);
    assert_memory_equal(c.addr, net, 4);

    /* host bits are masked off, not refused */
    assert_int_equal(mg_cidr_parse("192.0.2.77/24", &c, &err), MG_OK);
    assert_memory_equal(c.addr, net, 4);

    assert_int_equal(mg_cidr_parse("0.0.0.0/0", &c, &err), MG_OK);
    assert_int_equal(c.prefix, 0);

    assert_int_equal(mg_cidr_parse("::1", &c, &err), MG_OK);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 128);

    assert_int_equal(mg_cidr_parse("2001:db8::/32", &c, &err), MG_OK);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(mg_cidr_parse("::/0", &c, &err), MG_OK);
    assert_int_equal(mg_cidr_parse("2001:db8::1/128", &c, &err), MG_OK);

    /* a v4-mapped network is stored as IPv4 */
    assert_int_equal(mg_cidr_parse("::ffff:192.0.2.0/120", &c, &err), MG_OK);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 24);
    assert_memory_equal(c.addr, net, 4);
}

static void
test_parse_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "/24",
        "192.0.2.0/33",
        "192.0.2.0/",
        "192.0.2/24",
        "192.0.2.0/-1",
        "192.0.2.0/+8",
        "192.0.2.0/ 8",
        "1.2.3.4.5",
        "example.com",
        "::1/129",
        "2001:db8::/1000",
        "::g",
        "192.0.2.0/24/8",
        "192.0.2.256",
        " 192.0.2.1",
        "192.0.2.0/0x8",
        "1111111111111111111111111111111111111111111111111111111111111111111",
        NULL,
    };
    struct mg_cidr c;

    (void)state;
    for (size_t i = 0; bad[i] != NULL; i++) {
        const char *err = NULL;

        if (mg_cidr_parse(bad[i], &c, &err) != MG_ERROR)
            fail_msg("accepted '%s'", bad[i]);
        assert_non_null(err);
    }
}

static void
test_match(void **state)
{
    (void)state;
    assert_true(matches("192.0.2.0/24", "192.0.2.200"));
    assert_false(matches("192.0.2.0/24", "192.0.3.1"));
    assert_true(matches("192.0.2.128/25", "192.0.2.200"));
    assert_false(matches("192.0.2.128/25", "192.0.2.100"));
    assert_true(matches("10.0.0.0/9", "10.127.255.255"));
    assert_false(matches("10.0.0.0/9", "10.128.0.0"));
    assert_true(matches("0.0.0.0/0", "203.0.113.9"));
    assert_true(matches("127.0.0.1", "127.0.0.1"));
    assert_false(matches("127.0.0.1", "127.0.0.2"));

    assert_true(matches("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(matches("2001:db8::/32", "2001:db9::1"));
    assert_true(matches("::1", "::1"));
    assert_false(matches("::/0", "192.0.2.1")); /* families differ */
    assert_false(matches("0.0.0.0/0", "2001:db8::1"));

    /* an IPv4-mapped IPv6 peer (dual-stack socket) counts as IPv4 */
    assert_true(matches("192.0.2.0/24", "::ffff:192.0.2.9"));
    assert_false(matches("192.0.2.0/24", "::ffff:192.0.3.9"));
    assert_true(matches("::ffff:192.0.2.0/120", "192.0.2.4"));
    assert_true(matches("::ffff:192.0.2.0/120", "::ffff:192.0.2.4"));
}

static void
test_netlist(void **state)
{
    struct mg_netlist l = {0};
    struct mg_cidr c;
    const char *err;
    struct sockaddr_storage a = sa_make("198.51.100.7", 1);
    struct sockaddr_storage b = sa_make("2001:db8::5", 1);
    struct sockaddr_storage x = sa_make("203.0.113.1", 1);

    (void)state;
    assert_false(mg_netlist_match(&l, (struct sockaddr *)&a));
    assert_int_equal(mg_cidr_parse("198.51.100.0/24", &c, &err), MG_OK);
    mg_netlist_add(&l, &c);
    assert_int_equal(mg_cidr_parse("2001:db8::/64", &c, &err), MG_OK);
    mg_netlist_add(&l, &c);
    assert_int_equal(l.n, 2);
    assert_true(mg_netlist_match(&l, (struct sockaddr *)&a));
    assert_true(mg_netlist_match(&l, (struct sockaddr *)&b));
    assert_false(mg_netlist_match(&l, (struct sockaddr *)&x));
    mg_netlist_free(&l);
    assert_int_equal(l.n, 0);
    assert_null(l.v);
    mg_netlist_free(&l);
}

static void
test_text_and_key(void **state)
{
    char buf[64];
    int port = -1;
    uint8_t key[16];
    const uint8_t v4[4] = {192, 0, 2, 9};
    struct sockaddr_storage a = sa_make("192.0.2.9", 2525);
    struct sockaddr_storage m = sa_make("::ffff:192.0.2.9", 587);
    struct sockaddr_storage b = sa_make("2001:db8::1", 465);
    struct sockaddr_storage u;

    (void)state;
    mg_sockaddr_text((struct sockaddr *)&a, buf, sizeof(buf), &port);
    assert_string_equal(buf, "192.0.2.9");
    assert_int_equal(port, 2525);

    mg_sockaddr_text((struct sockaddr *)&m, buf, sizeof(buf), &port);
    assert_string_equal(buf, "192.0.2.9");
    assert_int_equal(port, 587);

    mg_sockaddr_text((struct sockaddr *)&b, buf, sizeof(buf), NULL);
    assert_string_equal(buf, "2001:db8::1");

    memset(&u, 0, sizeof(u));
    u.ss_family = AF_UNIX;
    mg_sockaddr_text((struct sockaddr *)&u, buf, sizeof(buf), &port);
    assert_string_equal(buf, "unix");
    assert_int_equal(port, 0);
    assert_int_equal(mg_sockaddr_key((struct sockaddr *)&u, key), 0);

    /* a too small buffer is not overrun */
    mg_sockaddr_text((struct sockaddr *)&b, buf, 4, NULL);
    assert_true(strlen(buf) < 4);

    assert_int_equal(mg_sockaddr_key((struct sockaddr *)&a, key), 4);
    assert_memory_equal(key, v4, 4);
    assert_int_equal(mg_sockaddr_key((struct sockaddr *)&m, key), 4);
    assert_memory_equal(key, v4, 4);
    assert_int_equal(mg_sockaddr_key((struct sockaddr *)&b, key), 16);
    assert_memory_equal(key, ((struct sockaddr_in6 *)&b)->sin6_addr.s6_addr,
                        16);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),   cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_match),        cmocka_unit_test(test_netlist),
        cmocka_unit_test(test_text_and_key),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
