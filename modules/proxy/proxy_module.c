/*
 * modules/proxy/proxy_module.c -- the proxy module's descriptor, settings
 * and hook registration. It has no listeners of its own: the pop3 engine
 * hands it `user%server%mailbox` logins through pop3.login, the smtp
 * engine through smtp.auth (proxy_smtp.c).
 */
#include "config.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy.h"
#include "proxy_smtp.h"

static const struct mg_setting proxy_settings[] = {
    {.name = "ca_file", .type = MG_SET_STRING},
    {.name = "allow_targets", .type = MG_SET_STRINGS},
    {.name = "connect_timeout", .type = MG_SET_INT, .min = 1, .max = 600},
    {.name = "upstream_timeout", .type = MG_SET_INT, .min = 1, .max = 3600},
    {.name = "idle_timeout", .type = MG_SET_INT, .min = 1, .max = 86400},
    {.name = "max_session_time", .type = MG_SET_INT, .min = 0, .max = 604800},
    {.name = "tls_session_cache", .type = MG_SET_BOOL},
    /* bytes; 0 turns record-ahead off */
    {.name = "prefetch_max_size",
     .type = MG_SET_INT,
     .min = 0,
     .max = 64 * 1024 * 1024},
    {.name = NULL},
};

static void
proxy_release(void *state)
{
    struct proxy_state *st = state;

    free(st->ca_file);
    free(st->allow);
    free(st->own);
    free(st);
}

/* The gateway's own addresses: a target resolving to one is refused like
 * loopback (the proxy must not be turned on the gateway itself). */
static void
proxy_own_addresses(struct proxy_state *st)
{
    struct ifaddrs *ifa = NULL;
    size_t n = 0;

    if (getifaddrs(&ifa) != 0)
        return;
    for (struct ifaddrs *i = ifa; i != NULL; i = i->ifa_next)
        n++;
    st->own = calloc(n + 1, sizeof(*st->own));
    if (st->own == NULL)
        abort();
    for (struct ifaddrs *i = ifa; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr == NULL)
            continue;
        if (i->ifa_addr->sa_family == AF_INET)
            memcpy(&st->own[st->nown++], i->ifa_addr,
                   sizeof(struct sockaddr_in));
        else if (i->ifa_addr->sa_family == AF_INET6)
            memcpy(&st->own[st->nown++], i->ifa_addr,
                   sizeof(struct sockaddr_in6));
    }
    freeifaddrs(ifa);
}

static int
proxy_allow_load(struct proxy_state *st, const struct config_setting_t *sect,
                 char *err, size_t errsz)
{
    const struct mg_core_api *api = st->api;
    size_t n = 0;

    while (api->setting_strings(sect, "allow_targets", (unsigned)n) != NULL)
        n++;
    st->allow = calloc(n + 1, sizeof(*st->allow));
    if (st->allow == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        const char *t =
            api->setting_strings(sect, "allow_targets", (unsigned)i);
        const char *why = NULL;

        if (proxy_rule_parse(t, &st->allow[i], &why) != 0) {
            snprintf(err, errsz,
                     "proxy: %s: allow_targets: \"%.80s\": %s (a host, "
                     "host:port, IP address or CIDR network)",
                     api->setting_where(sect, "allow_targets"), t, why);
            return MG_ERROR;
        }
        st->nallow = i + 1;
    }
    return MG_OK;
}

static int
proxy_configure(struct mg_modctx *m, const struct mg_core_api *api,
                const struct config_setting_t *sect, void **state_r,
                const char **error_r)
{
    static char err[512];
    struct proxy_state *st;
    const char *s;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api) ||
        api->conn->size < sizeof(struct mg_conn_api)) {
        *error_r = "proxy: the core's module API is too old";
        return MG_ERROR;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        abort();
    st->m = m;
    st->api = api;
    st->connect_ms =
        (uint32_t)api->setting_int(sect, "connect_timeout", 30) * 1000u;
    st->upstream_ms =
        (uint32_t)api->setting_int(sect, "upstream_timeout", 120) * 1000u;
    st->idle_ms = (uint32_t)api->setting_int(sect, "idle_timeout", 600) * 1000u;
    st->session_ms =
        (uint64_t)api->setting_int(sect, "max_session_time", 0) * 1000u;
    st->prefetch_max =
        (uint64_t)api->setting_int(sect, "prefetch_max_size", 1024 * 1024);
    st->tls_resume = api->setting_bool(sect, "tls_session_cache", true);
    s = api->setting_string(sect, "ca_file", NULL);
    if (s != NULL && s[0] != '\0') {
        if (access(s, R_OK) != 0) {
            snprintf(err, sizeof(err),
                     "proxy: %s: ca_file %.200s cannot be "
                     "read",
                     api->setting_where(sect, "ca_file"), s);
            goto fail;
        }
        st->ca_file = strdup(s);
        if (st->ca_file == NULL)
            abort();
    }
    if (proxy_allow_load(st, sect, err, sizeof(err)) != MG_OK)
        goto fail;
    proxy_own_addresses(st);
    if (gethostname(st->hostname, sizeof(st->hostname) - 1) != 0 ||
        st->hostname[0] == '\0')
        snprintf(st->hostname, sizeof(st->hostname), "localhost");
    for (char *p = st->hostname; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p > 0x7e)
            *p = '-';
    }
    if (api->hook_add(m, "pop3.login", 50, proxy_pop3_login, st, error_r) !=
            MG_OK ||
        proxy_smtp_hooks(m, api, st, error_r) != MG_OK) {
        proxy_release(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;

fail:
    *error_r = err;
    proxy_release(st);
    return MG_ERROR;
}

static int
proxy_start(void *state, const char **error_r)
{
    struct proxy_state *st = state;
    const struct mg_store_api *store = st->api->store;

    /* checked here, not in configure(): --check-config opens no store */
    if (store == NULL ||
        store->size < offsetof(struct mg_store_api, dedup_put) +
                          sizeof(store->dedup_put)) {
        *error_r = "proxy needs the store with its de-duplication index";
        return MG_ERROR;
    }
    st->api->log(st->m, MG_LOG_DEBUG,
                 "started (%zu allow_targets entries, %zu own addresses)",
                 st->nallow, st->nown);
    return MG_OK;
}

static void
proxy_stop(void *state)
{
    struct proxy_state *st = state;

    st->api->log(st->m, MG_LOG_DEBUG, "stopped");
}

MG_MODULE_EXPORT(proxy) = {
    MG_MODULE_V1,
    .name = "proxy",
    .description = "recording proxy: user%server%mailbox logins relayed to "
                   "the user's own server, every retrieved message archived",
    .settings = proxy_settings,
    .configure = proxy_configure,
    .start = proxy_start,
    .stop = proxy_stop,
    .release = proxy_release,
};
