/*
 * modules/proxy/proxy_target.h -- the pure part of the proxy: login names
 * `remote_user%target_server%mailbox_id`, target rules (allow_targets and
 * a mailbox's own list) and the classes of addresses refused by default.
 * No core API here: unit-tested and fuzzed on its own.
 */
#ifndef MG_PROXY_TARGET_H
#define MG_PROXY_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXY_USER_MAX    255 /* remote user name */
#define PROXY_HOST_MAX    253 /* DNS name or IP literal, no brackets */
#define PROXY_MAILBOX_MAX 32
#define PROXY_LOGIN_MAX \
    (PROXY_USER_MAX + PROXY_HOST_MAX + 8 + PROXY_MAILBOX_MAX + 2)

/** A parsed proxy login name. */
struct proxy_login {
    char user[PROXY_USER_MAX + 1];
    char host[PROXY_HOST_MAX + 1]; /* lower case; IPv6 without brackets */
    int port;                      /* the given port, or the default */
    bool ip_literal;               /* host is an IPv4 or IPv6 address */
    char mailbox[PROXY_MAILBOX_MAX + 1];
    char upstream[PROXY_HOST_MAX + 9]; /* canonical "host:port", "[v6]:port" */
};

/**
 * Split `name` on its last two '%' into remote user, target server and
 * mailbox id (the user part may itself contain '%'). Returns 0, or -1 with
 * *why set (a static, printable sentence) for a malformed name: an empty
 * part, a control character or space, an overlong part, a bad host, port
 * or mailbox id. `default_port` applies when the target has no port.
 * Returns 1 when the name has fewer than two '%': not a proxy login.
 */
int proxy_login_parse(const char *name, int default_port,
                      struct proxy_login *out, const char **why);

/** Parse a target server: host, IPv4, host:port, [IPv6] or [IPv6]:port
 * (a bare IPv6 literal is accepted too). port_r is 0 when none is given.
 * Returns 0 or -1 with *why. */
int proxy_target_parse(const char *text, char host[PROXY_HOST_MAX + 1],
                       int *port_r, bool *ip_literal_r, const char **why);

/** One entry of allow_targets or of a mailbox's target list: a host name,
 * an IP address or a CIDR network, each optionally with a port. */
struct proxy_rule {
    char host[PROXY_HOST_MAX + 1]; /* "" for an address rule */
    int family;                    /* AF_INET, AF_INET6, 0 for a name */
    uint8_t addr[16];
    unsigned prefix;
    int port; /* 0: any port */
};

/** Returns 0, or -1 with *why. */
int proxy_rule_parse(const char *text, struct proxy_rule *r, const char **why);
/** The rule names this target server (host name rules only). */
bool proxy_rule_match_name(const struct proxy_rule *r, const char *host,
                           int port);
/** The rule covers this resolved address and port (address rules). */
bool proxy_rule_match_addr(const struct proxy_rule *r,
                           const struct sockaddr *sa);

/** Why an address is refused by default ("loopback", "link-local",
 * "private", …), or NULL for a public address. IPv4-mapped, NAT64 and
 * 6to4 IPv6 addresses are judged by the IPv4 address they carry. */
const char *proxy_addr_class(const struct sockaddr *sa);

/** Family and address bytes (IPv4-mapped IPv6 as IPv4) and port of sa;
 * 0 for other families. */
int proxy_addr_bytes(const struct sockaddr *sa, uint8_t addr[16], int *port_r);

#endif /* MG_PROXY_TARGET_H */
