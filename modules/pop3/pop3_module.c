/*
 * modules/pop3/pop3_module.c -- the pop3 module's descriptor, settings and
 * listeners. The sessions live in pop3_session.c.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "pop3.h"
#include "pop3_engine.h"

static const struct mg_setting pop3_settings[] = {
    {.name = "greeting", .type = MG_SET_STRING},
    {.name = "idle_timeout", .type = MG_SET_INT, .min = 1, .max = 86400},
    {.name = "max_session_time", .type = MG_SET_INT, .min = 0, .max = 604800},
    {.name = "max_errors", .type = MG_SET_INT, .min = 1, .max = 1000},
    {.name = "auth_failure_delay", .type = MG_SET_INT, .min = 0, .max = 10000},
    {.name = "auth_throttle_address",
     .type = MG_SET_INT,
     .min = 1,
     .max = 1000000},
    {.name = "auth_throttle_mailbox",
     .type = MG_SET_INT,
     .min = 1,
     .max = 1000000},
    {.name = "auth_throttle_window",
     .type = MG_SET_INT,
     .min = 1,
     .max = 86400},
    {.name = "auth_throttle_exempt", .type = MG_SET_STRINGS},
    {.name = NULL},
};

/* the core's listener settings (allow_plaintext_auth, …) suffice */
static const struct mg_setting pop3_listener_settings[] = {
    {.name = NULL},
};

static const char *const pop3_alpn[] = {"pop3", NULL};

static const struct mg_listener_ops pop3_ops = {
    .protocol = "pop3",
    .alpn = pop3_alpn,
    .refuse_line = "-ERR [SYS/TEMP] Too many connections, try again later",
    .settings = pop3_listener_settings,
    .on_accept = pop3_session_accept,
    .on_shutdown = pop3_session_shutdown,
};

static const struct mg_listen_default pop3_defaults[] = {
    {NULL, 110, MG_TLS_STARTTLS},
    {NULL, 995, MG_TLS_IMPLICIT},
    {NULL, 0, MG_TLS_NONE},
};

static char *
pop3_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p == NULL)
        abort();
    memcpy(p, s, n);
    return p;
}

/* A greeting ends up in a reply line: printable ASCII only. */
static bool
pop3_printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    }
    return true;
}

static void
pop3_release(void *state)
{
    struct pop3_state *st = state;

    pop3_sessions_free_all(st);
    for (size_t i = 0; i < st->nthrottle_exempt; i++)
        free(st->throttle_exempt[i]);
    free(st->throttle_exempt);
    free(st->greeting);
    free(st->email_domain);
    free(st);
}

static int
pop3_exempt_load(struct pop3_state *st, const struct config_setting_t *sect,
                 char *err, size_t errsz)
{
    const struct mg_core_api *api = st->api;
    const char *net, *neterr = NULL;
    size_t n = 0;

    while (api->setting_strings(sect, "auth_throttle_exempt", (unsigned)n) !=
           NULL)
        n++;
    st->throttle_exempt = calloc(n + 1, sizeof(char *));
    if (st->throttle_exempt == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        net = api->setting_strings(sect, "auth_throttle_exempt", (unsigned)i);
        if (api->net_match(net, NULL, &neterr) != 0) {
            snprintf(err, errsz, "pop3: %s: auth_throttle_exempt: %s",
                     api->setting_where(sect, "auth_throttle_exempt"), neterr);
            return MG_ERROR;
        }
        st->throttle_exempt[i] = pop3_strdup(net);
        st->nthrottle_exempt = i + 1;
    }
    return MG_OK;
}

static int
pop3_configure(struct mg_modctx *m, const struct mg_core_api *api,
               const struct config_setting_t *sect, void **state_r,
               const char **error_r)
{
    static char err[512];
    struct pop3_state *st;
    const char *s;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api) ||
        api->conn->size < sizeof(struct mg_conn_api)) {
        *error_r = "pop3: the core's module API is too old";
        return MG_ERROR;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        abort();
    st->m = m;
    st->api = api;
    pop3_api = api;
    st->idle_ms = (uint32_t)api->setting_int(sect, "idle_timeout", 600) * 1000u;
    st->session_ms =
        (uint64_t)api->setting_int(sect, "max_session_time", 0) * 1000u;
    st->max_errors = (unsigned)api->setting_int(sect, "max_errors", 10);
    st->auth_delay_ms =
        (uint32_t)api->setting_int(sect, "auth_failure_delay", 1000);
    st->throttle_addr =
        (unsigned)api->setting_int(sect, "auth_throttle_address", 20);
    st->throttle_mailbox =
        (unsigned)api->setting_int(sect, "auth_throttle_mailbox", 5);
    st->throttle_window_s =
        (uint32_t)api->setting_int(sect, "auth_throttle_window", 900);

    s = api->setting_string(sect, "greeting", "mailgate POP3 ready");
    if (!pop3_printable(s) || s[0] == '<') {
        /* '<' would read as an APOP timestamp (RFC 1939 §7) */
        snprintf(err, sizeof(err),
                 "pop3: %s: greeting must be printable ASCII and not start "
                 "with '<'",
                 api->setting_where(sect, "greeting"));
        goto fail;
    }
    st->greeting = pop3_strdup(s);
    s = api->email_domain();
    if (s != NULL && s[0] != '\0')
        st->email_domain = pop3_strdup(s);
    if (pop3_exempt_load(st, sect, err, sizeof(err)) != MG_OK)
        goto fail;
    if (api->listen(m, sect, pop3_defaults, &pop3_ops, st, error_r) != MG_OK) {
        pop3_release(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;

fail:
    *error_r = err;
    pop3_release(st);
    return MG_ERROR;
}

static int
pop3_start(void *state, const char **error_r)
{
    struct pop3_state *st = state;

    /* checked here, not in configure(): --check-config opens no store */
    if (st->api->store == NULL) {
        *error_r = "pop3 needs the store, and this process has none";
        return MG_ERROR;
    }
    st->api->log(st->m, MG_LOG_DEBUG, "started (idle_timeout %u s)",
                 (unsigned)(st->idle_ms / 1000));
    return MG_OK;
}

static void
pop3_stop(void *state)
{
    struct pop3_state *st = state;

    st->api->log(st->m, MG_LOG_DEBUG, "stopped");
}

MG_MODULE_EXPORT(pop3) = {
    MG_MODULE_V1,
    .name = "pop3",
    .description = "POP3 engine: the archiver collects and deletes its mail",
    .settings = pop3_settings,
    .configure = pop3_configure,
    .start = pop3_start,
    .stop = pop3_stop,
    .release = pop3_release,
};
