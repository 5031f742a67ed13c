/* tests/unit/test_proxyv2.c -- PROXY protocol v2 header parser */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "mg.h"

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* header: signature, ver/cmd, fam, body (length set from blen) */
static size_t
hdr(uint8_t *out, uint8_t vercmd, uint8_t fam, const uint8_t *body, size_t blen)
{
    memcpy(out, sig, 12);
    out[12] = vercmd;
    out[13] = fam;
    out[14] = (uint8_t)(blen >> 8);
    out[15] = (uint8_t)blen;
    if (blen > 0)
        memmove(out + 16, body, blen);
    return 16 + blen;
}

/* 192.0.2.1:40000 -> 198.51.100.2:25 */
static const uint8_t body4[12] = {192, 0, 2,    1,    198,  51,
                                  100, 2, 0x9c, 0x40, 0x00, 0x19};

static void
body6(uint8_t *b)
{
    inet_pton(AF_INET6, "2001:db8::1", b);
    inet_pton(AF_INET6, "2001:db8::2", b + 16);
    b[32] = 0xc3; /* 50000 */
    b[33] = 0x50;
    b[34] = 0x01; /* 465 */
    b[35] = 0xd1;
}

static void
expect_error(const uint8_t *buf, size_t len)
{
    struct mg_proxy_info info;
    size_t used = 0;
    const char *err = NULL;

    assert_int_equal(mg_proxyv2_parse(buf, len, &info, &used, &err), MG_ERROR);
    assert_non_null(err);
}

static void
test_v4(void **state)
{
    uint8_t buf[64];
    size_t n = hdr(buf, 0x21, 0x11, body4, sizeof(body4));
    struct mg_proxy_info info;
    size_t used = 0;
    const char *err = NULL;
    const struct sockaddr_in *src, *dst;
    char text[64];

    (void)state;
    buf[n] = 'E'; /* the protocol's first byte stays unconsumed */
    assert_int_equal(mg_proxyv2_parse(buf, n + 1, &info, &used, &err), MG_OK);
    assert_int_equal(used, 28);
    assert_false(info.local);
    src = (const struct sockaddr_in *)&info.src;
    dst = (const struct sockaddr_in *)&info.dst;
    assert_int_equal(src->sin_family, AF_INET);
    assert_int_equal(info.srclen, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(src->sin_port), 40000);
    assert_int_equal(ntohs(dst->sin_port), 25);
    inet_ntop(AF_INET, &src->sin_addr, text, sizeof(text));
    assert_string_equal(text, "192.0.2.1");
    inet_ntop(AF_INET, &dst->sin_addr, text, sizeof(text));
    assert_string_equal(text, "198.51.100.2");
}

static void
test_v6(void **state)
{
    uint8_t buf[64], b[36];
    size_t n;
    struct mg_proxy_info info;
    size_t used = 0;
    const char *err = NULL;
    const struct sockaddr_in6 *src, *dst;
    char text[64];

    (void)state;
    body6(b);
    n = hdr(buf, 0x21, 0x21, b, sizeof(b));
    assert_int_equal(mg_proxyv2_parse(buf, n, &info, &used, &err), MG_OK);
    assert_int_equal(used, 52);
    src = (const struct sockaddr_in6 *)&info.src;
    dst = (const struct sockaddr_in6 *)&info.dst;
    assert_int_equal(src->sin6_family, AF_INET6);
    assert_int_equal(info.dstlen, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(src->sin6_port), 50000);
    assert_int_equal(ntohs(dst->sin6_port), 465);
    inet_ntop(AF_INET6, &src->sin6_addr, text, sizeof(text));
    assert_string_equal(text, "2001:db8::1");
    inet_ntop(AF_INET6, &dst->sin6_addr, text, sizeof(text));
    assert_string_equal(text, "2001:db8::2");
}

static void
test_local(void **state)
{
    uint8_t buf[64];
    size_t n;
    struct mg_proxy_info info;
    size_t used = 0;
    const char *err = NULL;

    (void)state;
    n = hdr(buf, 0x20, 0x00, NULL, 0);
    assert_int_equal(mg_proxyv2_parse(buf, n, &info, &used, &err), MG_OK);
    assert_true(info.local);
    assert_int_equal(used, 16);

    /* LOCAL may carry addresses: they are ignored */
    n = hdr(buf, 0x20, 0x11, body4, sizeof(body4));
    assert_int_equal(mg_proxyv2_parse(buf, n, &info, &used, &err), MG_OK);
    assert_true(info.local);
    assert_int_equal(used, 28);
}

static void
test_tlvs(void **state)
{
    uint8_t body[12 + 3 + 5 + 3 + 2], buf[64];
    size_t n;
    struct mg_proxy_info info;
    size_t used = 0;
    const char *err = NULL;

    (void)state;
    memcpy(body, body4, 12);
    /* PP2_TYPE_ALPN "smtp\0"-ish, then a NOOP TLV */
    memcpy(body + 12, "\x01\x00\x05smtp!", 8);
    memcpy(body + 20, "\x04\x00\x02xx", 5);
    n = hdr(buf, 0x21, 0x11, body, sizeof(body));
    assert_int_equal(mg_proxyv2_parse(buf, n, &info, &used, &err), MG_OK);
    assert_int_equal(used, n);
    assert_int_equal(ntohs(((struct sockaddr_in *)&info.src)->sin_port), 40000);
}

static void
test_truncated(void **state)
{
    uint8_t buf[64], b[36];
    size_t n;

    (void)state;
    body6(b);
    n = hdr(buf, 0x21, 0x21, b, sizeof(b));
    for (size_t len = 0; len < n; len++) {
        struct mg_proxy_info info;
        size_t used = 0;
        const char *err = NULL;

        if (mg_proxyv2_parse(buf, len, &info, &used, &err) != MG_AGAIN)
            fail_msg("length %zu: not MG_AGAIN", len);
    }
    n = hdr(buf, 0x20, 0x00, NULL, 0);
    for (size_t len = 0; len < n; len++) {
        struct mg_proxy_info info;
        size_t used = 0;
        const char *err = NULL;

        if (mg_proxyv2_parse(buf, len, &info, &used, &err) != MG_AGAIN)
            fail_msg("LOCAL length %zu: not MG_AGAIN", len);
    }
}

static void
test_bad(void **state)
{
    uint8_t buf[700];
    size_t n;

    (void)state;
    /* wrong signature: refused from the first byte that differs */
    n = hdr(buf, 0x21, 0x11, body4, sizeof(body4));
    buf[5] ^= 0xff;
    for (size_t len = 6; len <= n; len++)
        expect_error(buf, len);
    expect_error((const uint8_t *)"E", 1);
    expect_error((const uint8_t *)"EHLO x\r\n", 8);

    /* version 1 or 3 in the binary header */
    n = hdr(buf, 0x11, 0x11, body4, sizeof(body4));
    expect_error(buf, 13);
    expect_error(buf, n);
    n = hdr(buf, 0x31, 0x11, body4, sizeof(body4));
    expect_error(buf, n);

    /* command 2..15 */
    n = hdr(buf, 0x22, 0x11, body4, sizeof(body4));
    expect_error(buf, 13);
    expect_error(buf, n);
    n = hdr(buf, 0x2f, 0x11, body4, sizeof(body4));
    expect_error(buf, n);

    /* families: unknown, UNIX, UDP, UNSPEC with PROXY */
    n = hdr(buf, 0x21, 0x41, body4, sizeof(body4));
    expect_error(buf, 14);
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x13, body4, sizeof(body4));
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x12, body4, sizeof(body4));
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x31, body4, sizeof(body4));
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x00, NULL, 0);
    expect_error(buf, n);

    /* lengths: too short for the family, longer than the cap */
    n = hdr(buf, 0x21, 0x11, body4, 11);
    expect_error(buf, 16);
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x21, body4, 12); /* v6 needs 36 */
    expect_error(buf, n);
    memset(buf + 16, 0, 537);
    memcpy(buf + 16, body4, 12);
    n = hdr(buf, 0x21, 0x11, buf + 16, 537);
    expect_error(buf, 16); /* refused before the body arrives */
    expect_error(buf, n);
    n = hdr(buf, 0x21, 0x11, buf + 16, 536); /* the cap itself is fine */
    {
        struct mg_proxy_info info;
        size_t used = 0;
        const char *err = NULL;

        assert_int_equal(mg_proxyv2_parse(buf, n, &info, &used, &err), MG_OK);
        assert_int_equal(used, 16 + 536);
    }
    buf[14] = 0xff;
    buf[15] = 0xff;
    expect_error(buf, 16);
}

static void
test_v1(void **state)
{
    static const char v1[] =
        "PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\nEHLO x\r\n";
    static const char v1u[] = "PROXY UNKNOWN\r\n";

    (void)state;
    expect_error((const uint8_t *)v1, strlen(v1));
    expect_error((const uint8_t *)v1, 1);
    expect_error((const uint8_t *)v1u, strlen(v1u));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v4),        cmocka_unit_test(test_v6),
        cmocka_unit_test(test_local),     cmocka_unit_test(test_tlvs),
        cmocka_unit_test(test_truncated), cmocka_unit_test(test_bad),
        cmocka_unit_test(test_v1),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
