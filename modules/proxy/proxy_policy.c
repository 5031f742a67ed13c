/*
 * modules/proxy/proxy_policy.c -- which upstream a session may reach.
 *
 * Checked on the resolved address (the connect filter), so a name that
 * resolves to a loopback, link-local, private or own address is refused
 * like the address itself. `allow_targets` opens refused addresses; a
 * mailbox's own target list narrows the targets it may record from.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

void
proxy_policy_mailbox(struct proxy_policy *p, char *const *targets, size_t n)
{
    p->mbox = calloc(n + 1, sizeof(*p->mbox));
    if (p->mbox == NULL)
        abort();
    p->nmbox = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;

        if (proxy_rule_parse(targets[i], &p->mbox[p->nmbox], &why) == 0)
            p->nmbox++;
    }
    p->had_mbox = n > 0; /* a list that parses to nothing refuses all */
}

void
proxy_policy_free(struct proxy_policy *p)
{
    free(p->mbox);
    p->mbox = NULL;
    p->nmbox = 0;
}

static bool
policy_any_name(const struct proxy_rule *r, size_t n, const char *host,
                int port)
{
    for (size_t i = 0; i < n; i++) {
        if (proxy_rule_match_name(&r[i], host, port))
            return true;
    }
    return false;
}

static bool
policy_any_addr(const struct proxy_rule *r, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++) {
        if (proxy_rule_match_addr(&r[i], sa))
            return true;
    }
    return false;
}

int
proxy_policy_precheck(struct proxy_policy *p)
{
    bool addr_rules = false;

    if (!p->had_mbox)
        return 0;
    if (policy_any_name(p->mbox, p->nmbox, p->login->host, p->login->port))
        return 0;
    for (size_t i = 0; i < p->nmbox; i++)
        addr_rules = addr_rules || p->mbox[i].family != 0;
    if (addr_rules)
        return 0;
    snprintf(p->why, sizeof(p->why),
             "%s is not among this mailbox's proxy targets",
             p->login->upstream);
    return -1;
}

static bool
policy_own(const struct proxy_state *st, const struct sockaddr *sa)
{
    uint8_t a[16], b[16];
    int pa, pb, fa = proxy_addr_bytes(sa, a, &pa);

    for (size_t i = 0; i < st->nown; i++) {
        int fb = proxy_addr_bytes((const struct sockaddr *)&st->own[i], b, &pb);

        if (fa != 0 && fa == fb && memcmp(a, b, fa == AF_INET ? 4 : 16) == 0)
            return true;
    }
    return false;
}

int
proxy_policy_filter(struct proxy_policy *p, const struct sockaddr *sa,
                    socklen_t len)
{
    const struct proxy_state *st = p->st;
    const struct proxy_login *l = p->login;
    const char *cls;
    char text[INET6_ADDRSTRLEN] = "?";
    uint8_t a[16];
    int port, fam;

    (void)len;
    fam = proxy_addr_bytes(sa, a, &port);
    if (fam == 0)
        return MG_DECLINED;
    (void)inet_ntop(fam, a, text, sizeof(text));
    if (p->had_mbox && !policy_any_name(p->mbox, p->nmbox, l->host, l->port) &&
        !policy_any_addr(p->mbox, p->nmbox, sa)) {
        snprintf(p->why, sizeof(p->why),
                 "%s (%s) is not among this mailbox's proxy targets",
                 l->upstream, text);
        return MG_DECLINED;
    }
    cls = proxy_addr_class(sa);
    if (cls == NULL && policy_own(st, sa))
        cls = "one of the gateway's own addresses";
    if (cls == NULL)
        return MG_OK;
    if (policy_any_name(st->allow, st->nallow, l->host, l->port) ||
        policy_any_addr(st->allow, st->nallow, sa))
        return MG_OK;
    snprintf(p->why, sizeof(p->why),
             "target %s resolves to %s, %s: refused (see allow_targets)",
             l->upstream, text, cls);
    return MG_DECLINED;
}

enum mg_verdict
proxy_admit(struct proxy_state *st, uint64_t conn_id, const char *user,
            int default_port, struct proxy_login *login,
            struct proxy_policy *policy, const char **text_r)
{
    const struct mg_core_api *api = st->api;
    struct mg_mailbox_info info;
    const char *why = NULL;
    static char text[480];
    int r = proxy_login_parse(user, default_port, login, &why);

    if (r == 1)
        return MG_PASS;
    if (r != 0) {
        api->log(st->m, MG_LOG_INFO, "conn %llu: malformed proxy login: %s",
                 (unsigned long long)conn_id, why);
        snprintf(text, sizeof(text), "Malformed proxy login: %s", why);
        *text_r = text;
        return MG_PERMFAIL;
    }
    if (api->store == NULL) {
        *text_r = "No store";
        return MG_TEMPFAIL;
    }
    r = api->store->mailbox_get(login->mailbox, &info, &why);
    if (r == MG_DECLINED) {
        *text_r = "Proxy login refused: no such mailbox";
        return MG_PERMFAIL;
    }
    if (r != MG_OK) {
        *text_r = "Mailbox unavailable; try again later";
        return MG_TEMPFAIL;
    }
    if (!info.active || !info.accept_proxy) {
        bool active = info.active;

        api->store->mailbox_info_free(&info);
        *text_r = active ? "This mailbox does not accept proxy sessions"
                         : "This mailbox is suspended";
        return active ? MG_PERMFAIL : MG_TEMPFAIL;
    }
    memset(policy, 0, sizeof(*policy));
    policy->st = st;
    proxy_policy_mailbox(policy, info.targets, info.ntargets);
    api->store->mailbox_info_free(&info);
    return MG_ACCEPT;
}

void
proxy_connect_spec(const struct proxy_state *st,
                   const struct proxy_login *login,
                   struct mg_connect_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->host = login->host;
    spec->port = login->port;
    spec->tls = login->port == 995 || login->port == 465 ? MG_TLS_IMPLICIT
                                                         : MG_TLS_STARTTLS;
    spec->ca_file = st->ca_file;
    spec->connect_timeout_ms = st->connect_ms;
    spec->no_tls_resume = !st->tls_resume;
}

void
proxy_vlog(const struct proxy_state *st, uint64_t conn_id,
           enum mg_log_level level, const char *fmt, va_list ap)
{
    char buf[768];

    (void)vsnprintf(buf, sizeof(buf), fmt, ap);
    st->api->log(st->m, level, "conn %llu: %s", (unsigned long long)conn_id,
                 buf);
}
