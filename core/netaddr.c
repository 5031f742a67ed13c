/* core/netaddr.c -- CIDR networks, address lists, sockaddr helpers */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"

/* longest accepted text: an IPv6 literal with an IPv4 tail and "/128" */
#define NETADDR_TEXT_MAX 64

static const uint8_t netaddr_v4mapped[12] = {0, 0, 0, 0, 0,    0,
                                             0, 0, 0, 0, 0xff, 0xff};

/* The family and address bytes of sa, IPv4-mapped IPv6 turned into IPv4;
 * 0 for families other than AF_INET and AF_INET6. */
static int
netaddr_extract(const struct sockaddr *sa, uint8_t addr[16], int *port_r)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

        memcpy(addr, &sin->sin_addr, 4);
        *port_r = ntohs(sin->sin_port);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

        *port_r = ntohs(sin6->sin6_port);
        if (memcmp(sin6->sin6_addr.s6_addr, netaddr_v4mapped, 12) == 0) {
            memcpy(addr, sin6->sin6_addr.s6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(addr, sin6->sin6_addr.s6_addr, 16);
        return AF_INET6;
    }
    *port_r = 0;
    return 0;
}

/* Zero every bit of addr beyond the first `prefix` bits. */
static void
netaddr_mask(uint8_t *addr, size_t len, unsigned prefix)
{
    for (size_t i = 0; i < len; i++) {
        unsigned bits = prefix > i * 8 ? prefix - (unsigned)i * 8 : 0;

        if (bits >= 8)
            continue;
        addr[i] &= (uint8_t)(0xff00u >> bits);
    }
}

/* Host bits beyond the prefix are accepted and masked off
 * ("192.0.2.7/24" is 192.0.2.0/24): an operator writing a host address
 * with its network's length means the network. */
int
mg_cidr_parse(const char *s, struct mg_cidr *out, const char **error_r)
{
    char text[NETADDR_TEXT_MAX];
    const char *slash = strchr(s, '/');
    size_t alen = slash != NULL ? (size_t)(slash - s) : strlen(s);
    unsigned maxprefix, prefix;

    memset(out, 0, sizeof(*out));
    if (alen == 0 || alen >= sizeof(text)) {
        *error_r = mg_error("'%.80s' is not an IP address or network", s);
        return MG_ERROR;
    }
    memcpy(text, s, alen);
    text[alen] = '\0';
    if (inet_pton(AF_INET, text, out->addr) == 1) {
        out->family = AF_INET;
        maxprefix = 32;
    } else if (inet_pton(AF_INET6, text, out->addr) == 1) {
        out->family = AF_INET6;
        maxprefix = 128;
    } else {
        *error_r = mg_error("'%.80s' is not an IP address or network", s);
        return MG_ERROR;
    }

    prefix = maxprefix;
    if (slash != NULL) {
        const char *p = slash + 1;

        /* digits only: no sign, no spaces, no hex */
        if (*p == '\0' || strlen(p) > 3) {
            *error_r = mg_error("'%.80s': bad prefix length", s);
            return MG_ERROR;
        }
        prefix = 0;
        for (; *p != '\0'; p++) {
            if (*p < '0' || *p > '9') {
                *error_r = mg_error("'%.80s': bad prefix length", s);
                return MG_ERROR;
            }
            prefix = prefix * 10 + (unsigned)(*p - '0');
        }
        if (prefix > maxprefix) {
            *error_r = mg_error("'%.80s': prefix length %u is out of range "
                                "0..%u",
                                s, prefix, maxprefix);
            return MG_ERROR;
        }
    }

    /* ::ffff:a.b.c.d/96+n is the IPv4 network a.b.c.d/n; peers are
     * matched as IPv4 too, so store it that way */
    if (out->family == AF_INET6 && prefix >= 96 &&
        memcmp(out->addr, netaddr_v4mapped, 12) == 0) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->family = AF_INET;
        prefix -= 96;
    }
    out->prefix = prefix;
    netaddr_mask(out->addr, out->family == AF_INET ? 4 : 16, prefix);
    return MG_OK;
}

bool
mg_cidr_match(const struct mg_cidr *c, const struct sockaddr *sa)
{
    uint8_t addr[16];
    int port;
    int family = netaddr_extract(sa, addr, &port);

    if (family == 0 || family != c->family)
        return false;
    netaddr_mask(addr, family == AF_INET ? 4 : 16, c->prefix);
    return memcmp(addr, c->addr, family == AF_INET ? 4 : 16) == 0;
}

bool
mg_netlist_match(const struct mg_netlist *l, const struct sockaddr *sa)
{
    for (size_t i = 0; i < l->n; i++) {
        if (mg_cidr_match(&l->v[i], sa))
            return true;
    }
    return false;
}

void
mg_netlist_add(struct mg_netlist *l, const struct mg_cidr *c)
{
    l->v = mg_xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = *c;
}

void
mg_netlist_free(struct mg_netlist *l)
{
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

void
mg_sockaddr_text(const struct sockaddr *sa, char *buf, size_t size, int *port_r)
{
    uint8_t addr[16];
    int port;
    int family = netaddr_extract(sa, addr, &port);

    if (port_r != NULL)
        *port_r = port;
    if (size == 0)
        return;
    if (family == 0) {
        snprintf(buf, size, "%s", sa->sa_family == AF_UNIX ? "unix" : "?");
        return;
    }
    if (inet_ntop(family, addr, buf, (socklen_t)size) == NULL)
        snprintf(buf, size, "?");
}

size_t
mg_sockaddr_key(const struct sockaddr *sa, uint8_t key[16])
{
    int port;
    int family = netaddr_extract(sa, key, &port);

    if (family == AF_INET)
        return 4;
    if (family == AF_INET6)
        return 16;
    return 0;
}
