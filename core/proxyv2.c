/* core/proxyv2.c -- PROXY protocol v2 header parser (pure, no I/O)
 *
 * Format: haproxy's proxy-protocol.txt, section 2.2. Only the binary v2
 * header is accepted; a v1 text header is refused like any other junk.
 */
#include "config.h"

#include <netinet/in.h>
#include <string.h>

#include "mg.h"

#define PROXYV2_SIGLEN 12
#define PROXYV2_HDRLEN 16
/* the spec's largest header: 16 bytes + 216 of addresses + 320 of TLVs */
#define PROXYV2_MAXBODY 536

#define PROXYV2_CMD_LOCAL 0x0
#define PROXYV2_CMD_PROXY 0x1

#define PROXYV2_AF_UNSPEC 0x0
#define PROXYV2_AF_INET   0x1
#define PROXYV2_AF_INET6  0x2
#define PROXYV2_AF_UNIX   0x3

#define PROXYV2_TP_UNSPEC 0x0
#define PROXYV2_TP_STREAM 0x1
#define PROXYV2_TP_DGRAM  0x2

static const uint8_t proxyv2_sig[PROXYV2_SIGLEN] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void
proxyv2_set4(struct sockaddr_storage *ss, socklen_t *len, const uint8_t *a,
             const uint8_t *port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;

    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, a, 4);
    memcpy(&sin->sin_port, port, 2); /* both in network order */
    *len = sizeof(*sin);
}

static void
proxyv2_set6(struct sockaddr_storage *ss, socklen_t *len, const uint8_t *a,
             const uint8_t *port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    sin6->sin6_family = AF_INET6;
    memcpy(&sin6->sin6_addr, a, 16);
    memcpy(&sin6->sin6_port, port, 2);
    *len = sizeof(*sin6);
}

int
mg_proxyv2_parse(const void *data, size_t len, struct mg_proxy_info *info,
                 size_t *used_r, const char **error_r)
{
    const uint8_t *p = data;
    size_t n = len < PROXYV2_SIGLEN ? len : PROXYV2_SIGLEN;
    unsigned cmd, fam, tp;
    size_t body;

    if (len == 0)
        return MG_AGAIN;
    /* refuse as soon as the bytes seen so far cannot start a header */
    if (memcmp(p, proxyv2_sig, n) != 0) {
        *error_r = "not a PROXY protocol v2 header";
        return MG_ERROR;
    }
    if (len < PROXYV2_SIGLEN + 1)
        return MG_AGAIN;
    if ((p[12] >> 4) != 2) {
        *error_r = mg_error("PROXY protocol version %u is not supported",
                            (unsigned)(p[12] >> 4));
        return MG_ERROR;
    }
    cmd = p[12] & 0x0f;
    if (cmd != PROXYV2_CMD_LOCAL && cmd != PROXYV2_CMD_PROXY) {
        *error_r = mg_error("unknown PROXY protocol command %u", cmd);
        return MG_ERROR;
    }
    if (len < PROXYV2_SIGLEN + 2)
        return MG_AGAIN;
    fam = p[13] >> 4;
    tp = p[13] & 0x0f;
    if (fam > PROXYV2_AF_UNIX || tp > PROXYV2_TP_DGRAM) {
        *error_r = mg_error("unknown PROXY protocol address family 0x%02x",
                            (unsigned)p[13]);
        return MG_ERROR;
    }
    /* LOCAL (health checks by the proxy) carries no addresses worth
     * reading; PROXY must name a TCP peer over IPv4 or IPv6 */
    if (cmd == PROXYV2_CMD_PROXY &&
        ((fam != PROXYV2_AF_INET && fam != PROXYV2_AF_INET6) ||
         tp != PROXYV2_TP_STREAM)) {
        *error_r = mg_error("PROXY protocol address family 0x%02x is not "
                            "TCP over IPv4 or IPv6",
                            (unsigned)p[13]);
        return MG_ERROR;
    }
    if (len < PROXYV2_HDRLEN)
        return MG_AGAIN;
    body = (size_t)p[14] << 8 | p[15];
    if (body > PROXYV2_MAXBODY) {
        *error_r = mg_error("PROXY protocol header too long (%zu bytes)",
                            PROXYV2_HDRLEN + body);
        return MG_ERROR;
    }
    if (cmd == PROXYV2_CMD_PROXY) {
        size_t need = fam == PROXYV2_AF_INET ? 12 : 36;

        if (body < need) {
            *error_r = mg_error("PROXY protocol address block too short "
                                "(%zu bytes, need %zu)",
                                body, need);
            return MG_ERROR;
        }
    }
    if (len < PROXYV2_HDRLEN + body)
        return MG_AGAIN;

    memset(info, 0, sizeof(*info));
    if (cmd == PROXYV2_CMD_LOCAL) {
        info->local = true;
    } else if (fam == PROXYV2_AF_INET) {
        const uint8_t *a = p + PROXYV2_HDRLEN;

        proxyv2_set4(&info->src, &info->srclen, a, a + 8);
        proxyv2_set4(&info->dst, &info->dstlen, a + 4, a + 10);
    } else {
        const uint8_t *a = p + PROXYV2_HDRLEN;

        proxyv2_set6(&info->src, &info->srclen, a, a + 32);
        proxyv2_set6(&info->dst, &info->dstlen, a + 16, a + 34);
    }
    /* TLVs after the addresses (ALPN, authority, CRC, …) are skipped */
    *used_r = PROXYV2_HDRLEN + body;
    return MG_OK;
}
