/* tests/fuzz/fuzz_proxy_target.c -- libFuzzer target for the proxy's
 * login name, target server and target rule parsers
 *
 * Every line of the input goes through proxy_login_parse and
 * proxy_rule_parse; what they accept must hold their invariants (printable
 * parts, a port in range, the mailbox id's alphabet, a canonical upstream
 * that parses back to the same host and port). Any violation abort()s.
 *
 * Built with -DMG_LIBFUZZER by `make fuzz-proxy`; without it (make check)
 * main() replays the files named on the command line.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_target.h"
#include "fuzz_replay.h"

static void
fuzz_line(const char *line)
{
    struct proxy_login l;
    struct proxy_rule r;
    const char *why = NULL;
    int rc = proxy_login_parse(line, 995, &l, &why);

    if (rc == 0) {
        char host[PROXY_HOST_MAX + 1];
        int port = 0;
        bool ip = false;
        size_t ml = strlen(l.mailbox);

        FUZZ_CHECK(l.user[0] != '\0' && l.host[0] != '\0');
        FUZZ_CHECK(l.port >= 1 && l.port <= 65535);
        FUZZ_CHECK(ml >= 8 && ml <= PROXY_MAILBOX_MAX);
        for (size_t i = 0; i < ml; i++)
            FUZZ_CHECK((l.mailbox[i] >= 'a' && l.mailbox[i] <= 'z') ||
                       (l.mailbox[i] >= '0' && l.mailbox[i] <= '9'));
        for (const char *p = l.user; *p != '\0'; p++)
            FUZZ_CHECK((unsigned char)*p > 0x20 && *p != 0x7f);
        FUZZ_CHECK(proxy_target_parse(l.upstream, host, &port, &ip, &why) == 0);
        FUZZ_CHECK(strcmp(host, l.host) == 0 && port == l.port);
        FUZZ_CHECK(ip == l.ip_literal);
    } else if (rc < 0) {
        FUZZ_CHECK(why != NULL && strpbrk(why, "\r\n") == NULL);
    } else {
        FUZZ_CHECK(rc == 1);
    }
    if (proxy_rule_parse(line, &r, &why) == 0) {
        FUZZ_CHECK(r.port >= 0 && r.port <= 65535);
        FUZZ_CHECK(r.host[0] != '\0' || r.family != 0);
        FUZZ_CHECK(r.prefix <= (r.family == 2 ? 32u : 128u));
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    size_t start = 0;

    if (buf == NULL)
        abort();
    memcpy(buf, data, size);
    buf[size] = '\0';
    for (size_t i = 0; i <= size; i++) {
        if (i == size || buf[i] == '\n' || buf[i] == '\0') {
            buf[i] = '\0';
            fuzz_line(buf + start);
            start = i + 1;
        }
    }
    free(buf);
    return 0;
}
