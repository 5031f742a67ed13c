/*
 * modules/proxy/proxy_target.c -- login names, target servers, target
 * rules and the address classes the default policy refuses. Pure code:
 * nothing here touches the network or the core.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "proxy_target.h"

static bool
target_ctl_or_space(unsigned char ch)
{
    return ch <= 0x20 || ch == 0x7f;
}

static char
target_lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

/* A DNS name: labels of letters, digits, '-' and '_' (seen in the wild),
 * 1..63 characters, not starting or ending with '-'. */
static bool
target_host_name_valid(const char *h, size_t len)
{
    size_t label = 0;

    if (len == 0 || len > PROXY_HOST_MAX || h[0] == '.' || h[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];

        if (ch == '.') {
            if (label == 0 || h[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            return false;
        if (label == 0 && ch == '-')
            return false;
        if (++label > 63)
            return false;
    }
    return h[len - 1] != '-';
}

static int
target_port_parse(const char *p, size_t len, int *port_r)
{
    int port = 0;

    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        port = port * 10 + (p[i] - '0');
    }
    if (port < 1 || port > 65535)
        return -1;
    *port_r = port;
    return 0;
}

int
proxy_target_parse(const char *text, char host[PROXY_HOST_MAX + 1], int *port_r,
                   bool *ip_literal_r, const char **why)
{
    size_t len = strlen(text), hlen;
    const char *h = text, *colon;
    unsigned char buf[16];
    char tmp[PROXY_HOST_MAX + 1];

    *port_r = 0;
    *ip_literal_r = false;
    if (len == 0) {
        *why = "the target server is empty";
        return -1;
    }
    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (close == NULL) {
            *why = "the target server has '[' without ']'";
            return -1;
        }
        h = text + 1;
        hlen = (size_t)(close - h);
        if (close[1] != '\0') {
            if (close[1] != ':' ||
                target_port_parse(close + 2, strlen(close + 2), port_r) != 0) {
                *why = "the target server's port is not a number in 1..65535";
                return -1;
            }
        }
        if (hlen == 0 || hlen > PROXY_HOST_MAX) {
            *why = "the target server's IPv6 address is malformed";
            return -1;
        }
        memcpy(tmp, h, hlen);
        tmp[hlen] = '\0';
        if (inet_pton(AF_INET6, tmp, buf) != 1) {
            *why = "the target server's IPv6 address is malformed";
            return -1;
        }
        for (size_t i = 0; i <= hlen; i++)
            host[i] = target_lower(tmp[i]);
        *ip_literal_r = true;
        return 0;
    }
    colon = strchr(text, ':');
    if (colon != NULL && strchr(colon + 1, ':') != NULL) {
        /* a bare IPv6 literal (no port possible without brackets) */
        if (len > PROXY_HOST_MAX || inet_pton(AF_INET6, text, buf) != 1) {
            *why = "the target server is malformed (write IPv6 as [addr]:port)";
            return -1;
        }
        for (size_t i = 0; i <= len; i++)
            host[i] = target_lower(text[i]);
        *ip_literal_r = true;
        return 0;
    }
    hlen = colon != NULL ? (size_t)(colon - text) : len;
    if (colon != NULL &&
        target_port_parse(colon + 1, strlen(colon + 1), port_r) != 0) {
        *why = "the target server's port is not a number in 1..65535";
        return -1;
    }
    if (!target_host_name_valid(text, hlen)) {
        *why = "the target server is not a valid host name or address";
        return -1;
    }
    for (size_t i = 0; i < hlen; i++)
        host[i] = target_lower(text[i]);
    host[hlen] = '\0';
    *ip_literal_r = inet_pton(AF_INET, host, buf) == 1;
    return 0;
}

static bool
target_mailbox_valid(const char *id, size_t len)
{
    if (len < 8 || len > PROXY_MAILBOX_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = target_lower(id[i]);

        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')))
            return false;
    }
    return true;
}

int
proxy_login_parse(const char *name, int default_port, struct proxy_login *out,
                  const char **why)
{
    const char *p2 = strrchr(name, '%'), *p1 = NULL;
    char target[PROXY_HOST_MAX + 9];
    size_t ulen, tlen, mlen;
    int port;

    memset(out, 0, sizeof(*out));
    for (const char *q = name; p2 != NULL && q < p2; q++) {
        if (*q == '%')
            p1 = q;
    }
    if (p1 == NULL)
        return 1;
    for (const char *q = name; *q != '\0'; q++) {
        if (target_ctl_or_space((unsigned char)*q)) {
            *why = "the login name contains a control character or space";
            return -1;
        }
    }
    ulen = (size_t)(p1 - name);
    tlen = (size_t)(p2 - p1 - 1);
    mlen = strlen(p2 + 1);
    if (ulen == 0 || tlen == 0 || mlen == 0) {
        *why = "the login name has an empty part (user%server%mailbox)";
        return -1;
    }
    if (ulen > PROXY_USER_MAX) {
        *why = "the remote user name is too long";
        return -1;
    }
    if (tlen >= sizeof(target)) {
        *why = "the target server is too long";
        return -1;
    }
    if (!target_mailbox_valid(p2 + 1, mlen)) {
        *why = "the mailbox id is malformed";
        return -1;
    }
    memcpy(out->user, name, ulen);
    memcpy(target, p1 + 1, tlen);
    target[tlen] = '\0';
    if (proxy_target_parse(target, out->host, &port, &out->ip_literal, why) !=
        0)
        return -1;
    out->port = port != 0 ? port : default_port;
    for (size_t i = 0; i < mlen; i++)
        out->mailbox[i] = target_lower(p2[1 + i]);
    (void)snprintf(out->upstream, sizeof(out->upstream),
                   strchr(out->host, ':') != NULL ? "[%s]:%d" : "%s:%d",
                   out->host, out->port);
    return 0;
}

/* ----------------------------------------------------------- rules */

int
proxy_rule_parse(const char *text, struct proxy_rule *r, const char **why)
{
    char host[PROXY_HOST_MAX + 1], tmp[PROXY_HOST_MAX + 1];
    const char *slash = strrchr(text, '/');
    bool ip = false;
    int port = 0;
    long prefix = -1;

    memset(r, 0, sizeof(*r));
    if (slash != NULL) {
        /* CIDR: address/len, no port */
        size_t alen = (size_t)(slash - text);
        char *end = NULL;

        if (alen == 0 || alen > PROXY_HOST_MAX || slash[1] == '\0') {
            *why = "malformed CIDR network";
            return -1;
        }
        memcpy(tmp, text, alen);
        tmp[alen] = '\0';
        prefix = 0;
        for (end = (char *)slash + 1; *end >= '0' && *end <= '9'; end++) {
            prefix = prefix * 10 + (*end - '0');
            if (prefix > 128)
                break;
        }
        if (*end != '\0') {
            *why = "malformed CIDR prefix length";
            return -1;
        }
        if (inet_pton(AF_INET, tmp, r->addr) == 1 && prefix <= 32) {
            r->family = AF_INET;
        } else if (inet_pton(AF_INET6, tmp, r->addr) == 1) {
            r->family = AF_INET6;
        } else {
            *why = "malformed CIDR network";
            return -1;
        }
        r->prefix = (unsigned)prefix;
        return 0;
    }
    if (proxy_target_parse(text, host, &port, &ip, why) != 0)
        return -1;
    r->port = port;
    if (!ip) {
        memcpy(r->host, host, sizeof(r->host));
        return 0;
    }
    if (inet_pton(AF_INET, host, r->addr) == 1) {
        r->family = AF_INET;
        r->prefix = 32;
    } else if (inet_pton(AF_INET6, host, r->addr) == 1) {
        r->family = AF_INET6;
        r->prefix = 128;
    } else {
        *why = "malformed address";
        return -1;
    }
    /* an IPv4-mapped IPv6 rule is the IPv4 address */
    if (r->family == AF_INET6 && r->prefix == 128 &&
        memcmp(r->addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
        memmove(r->addr, r->addr + 12, 4);
        memset(r->addr + 4, 0, 12);
        r->family = AF_INET;
        r->prefix = 32;
    }
    return 0;
}

bool
proxy_rule_match_name(const struct proxy_rule *r, const char *host, int port)
{
    if (r->host[0] == '\0')
        return false;
    if (r->port != 0 && r->port != port)
        return false;
    return strcmp(r->host, host) == 0; /* both lower case */
}

int
proxy_addr_bytes(const struct sockaddr *sa, uint8_t addr[16], int *port_r)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

        memset(addr, 0, 16);
        memcpy(addr, &sin->sin_addr, 4);
        *port_r = ntohs(sin->sin_port);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *a = sin6->sin6_addr.s6_addr;

        *port_r = ntohs(sin6->sin6_port);
        if (memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
            memset(addr, 0, 16);
            memcpy(addr, a + 12, 4);
            return AF_INET;
        }
        memcpy(addr, a, 16);
        return AF_INET6;
    }
    *port_r = 0;
    return 0;
}

static bool
target_prefix_match(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    unsigned full = prefix / 8, rest = prefix % 8;

    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    return ((a[full] ^ b[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

bool
proxy_rule_match_addr(const struct proxy_rule *r, const struct sockaddr *sa)
{
    uint8_t a[16];
    int port, fam = proxy_addr_bytes(sa, a, &port);

    if (r->family == 0 || fam != r->family)
        return false;
    if (r->port != 0 && r->port != port)
        return false;
    return target_prefix_match(a, r->addr, r->prefix);
}

/* ---------------------------------------------------- address classes */

struct target_net {
    uint8_t addr[16];
    unsigned prefix;
    const char *why;
};

static const struct target_net target_v4[] = {
    {{0}, 8, "an unspecified (0.0.0.0/8) address"},
    {{10}, 8, "a private address"},
    {{100, 64}, 10, "a shared (carrier-grade NAT) address"},
    {{127}, 8, "a loopback address"},
    {{169, 254}, 16, "a link-local address"},
    {{172, 16}, 12, "a private address"},
    {{192, 0, 0}, 24, "a special-purpose address"},
    {{192, 168}, 16, "a private address"},
    {{198, 18}, 15, "a benchmarking address"},
    {{224}, 4, "a multicast address"},
    {{240}, 4, "a reserved address"},
};

static const struct target_net target_v6[] = {
    {{0}, 127, "an unspecified or loopback address"},
    {{0xfc}, 7, "a unique-local (private) address"},
    {{0xfe, 0x80}, 10, "a link-local address"},
    {{0xfe, 0xc0}, 10, "a site-local address"},
    {{0xff}, 8, "a multicast address"},
};

static const char *
target_v4_class(const uint8_t *a)
{
    for (size_t i = 0; i < sizeof(target_v4) / sizeof(target_v4[0]); i++) {
        if (target_prefix_match(a, target_v4[i].addr, target_v4[i].prefix))
            return target_v4[i].why;
    }
    return NULL;
}

const char *
proxy_addr_class(const struct sockaddr *sa)
{
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b};
    uint8_t a[16];
    int port, fam = proxy_addr_bytes(sa, a, &port);

    if (fam == AF_INET)
        return target_v4_class(a);
    if (fam != AF_INET6)
        return "not an IP address";
    for (size_t i = 0; i < sizeof(target_v6) / sizeof(target_v6[0]); i++) {
        if (target_prefix_match(a, target_v6[i].addr, target_v6[i].prefix))
            return target_v6[i].why;
    }
    /* addresses that carry an IPv4 address: judged by it */
    if (memcmp(a, nat64, 12) == 0)
        return target_v4_class(a + 12);
    if (a[0] == 0x20 && a[1] == 0x02)
        return target_v4_class(a + 2);
    return NULL;
}
