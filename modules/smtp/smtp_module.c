/*
 * modules/smtp/smtp_module.c -- the smtp module's descriptor, settings and
 * listeners. The sessions live in smtp_session.c and the files of
 * smtp_session.h.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mailgate/module.h>

#include "smtp.h"
#include "smtp_engine.h"

#define SMTP_GIB ((int64_t)1 << 30)
/* The slowest link data_total_timeout allows for by default: 1 Mbit/s. */
#define SMTP_MIN_RATE 131072u

static const struct mg_setting smtp_settings[] = {
    {.name = "max_message_size",
     .type = MG_SET_INT,
     .min = 1024,
     .max = 4 * SMTP_GIB},
    {.name = "local_delivery", .type = MG_SET_BOOL},
    {.name = "max_recipients", .type = MG_SET_INT, .min = 100, .max = 100000},
    {.name = "max_errors", .type = MG_SET_INT, .min = 1, .max = 1000},
    {.name = "greeting", .type = MG_SET_STRING},
    {.name = "hostname", .type = MG_SET_STRING},
    {.name = "idle_timeout", .type = MG_SET_INT, .min = 1, .max = 86400},
    {.name = "data_timeout", .type = MG_SET_INT, .min = 1, .max = 86400},
    {.name = "data_total_timeout", .type = MG_SET_INT, .min = 0, .max = 604800},
    {.name = "max_session_time", .type = MG_SET_INT, .min = 0, .max = 604800},
    {.name = "greet_delay", .type = MG_SET_INT, .min = 0, .max = 10000},
    {.name = "log_addresses", .type = MG_SET_BOOL},
    {.name = NULL},
};

static const struct mg_setting smtp_listener_settings[] = {
    {.name = "require_tls", .type = MG_SET_BOOL},
    {.name = NULL},
};

static const char *const smtp_alpn[] = {"smtp", NULL};

static const struct mg_listener_ops smtp_ops = {
    .protocol = "smtp",
    .alpn = smtp_alpn,
    .refuse_line = "421 4.7.0 Too many connections, try again later",
    .settings = smtp_listener_settings,
    .on_accept = smtp_session_accept,
    .on_shutdown = smtp_session_shutdown,
};

static const struct mg_listen_default smtp_defaults[] = {
    {NULL, 25, MG_TLS_STARTTLS},
    {NULL, 465, MG_TLS_IMPLICIT},
    {NULL, 587, MG_TLS_STARTTLS},
    {NULL, 0, MG_TLS_NONE},
};

static char *
smtp_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p == NULL)
        abort();
    memcpy(p, s, n);
    return p;
}

/* A setting that ends up in replies and trace fields: printable ASCII
 * only (a reply line must not carry CR/LF). */
static bool
smtp_printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return false;
    }
    return true;
}

static void
smtp_release(void *state)
{
    struct smtp_state *st = state;

    smtp_sessions_free_all(st);
    free(st->hostname);
    free(st->greeting);
    free(st->email_domain);
    free(st);
}

static int
smtp_configure(struct mg_modctx *m, const struct mg_core_api *api,
               const struct config_setting_t *sect, void **state_r,
               const char **error_r)
{
    static char err[512];
    struct smtp_state *st;
    char host[256], def_greeting[320];
    int64_t def_total;
    const char *s;

    if (api->abi_version != MG_ABI_VERSION ||
        api->size < sizeof(struct mg_core_api) ||
        api->conn->size < sizeof(struct mg_conn_api)) {
        *error_r = "smtp: the core's module API is too old";
        return MG_ERROR;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        abort();
    st->m = m;
    st->api = api;
    st->max_message_size =
        (uint64_t)api->setting_int(sect, "max_message_size", 209715200);
    st->local_delivery = api->setting_bool(sect, "local_delivery", true);
    st->log_addresses = api->setting_bool(sect, "log_addresses", false);
    st->max_recipients =
        (unsigned)api->setting_int(sect, "max_recipients", 1000);
    st->max_errors = (unsigned)api->setting_int(sect, "max_errors", 10);
    st->idle_ms = (uint32_t)api->setting_int(sect, "idle_timeout", 300) * 1000u;
    st->data_ms = (uint32_t)api->setting_int(sect, "data_timeout", 600) * 1000u;
    st->session_ms =
        (uint64_t)api->setting_int(sect, "max_session_time", 3600) * 1000u;
    /* default: data_timeout plus the largest message at 1 Mbit/s, so that
     * a journaling MTA on a slow link still gets its 200 MiB through */
    def_total = (int64_t)(st->data_ms / 1000u) +
                (int64_t)(st->max_message_size / SMTP_MIN_RATE);
    st->data_total_ms =
        (uint64_t)api->setting_int(sect, "data_total_timeout", def_total) *
        1000u;
    st->greet_delay_ms = (uint32_t)api->setting_int(sect, "greet_delay", 0);

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    s = api->setting_string(sect, "hostname", host);
    if (s[0] == '\0' || strchr(s, ' ') != NULL || !smtp_printable(s)) {
        snprintf(err, sizeof(err),
                 "smtp: %s: hostname must be a name without spaces",
                 api->setting_where(sect, "hostname"));
        goto fail;
    }
    st->hostname = smtp_strdup(s);
    snprintf(def_greeting, sizeof(def_greeting), "%s ESMTP mailgate",
             st->hostname);
    s = api->setting_string(sect, "greeting", def_greeting);
    if (!smtp_printable(s)) {
        snprintf(err, sizeof(err), "smtp: %s: greeting must be printable ASCII",
                 api->setting_where(sect, "greeting"));
        goto fail;
    }
    st->greeting = smtp_strdup(s);

    s = api->email_domain();
    if (s != NULL && s[0] != '\0') {
        st->email_domain = smtp_strdup(s);
        for (char *p = st->email_domain; *p != '\0'; p++) {
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        }
    }
    if (st->local_delivery) {
        if (st->email_domain == NULL) {
            snprintf(err, sizeof(err),
                     "smtp: set email_domain at the top level of the "
                     "configuration (mail for <mailbox-id>@<email_domain> is "
                     "delivered), or local_delivery = false");
            goto fail;
        }
    }
    if (api->listen(m, sect, smtp_defaults, &smtp_ops, st, error_r) != MG_OK) {
        smtp_release(st);
        return MG_ERROR;
    }
    *state_r = st;
    return MG_OK;

fail:
    *error_r = err;
    smtp_release(st);
    return MG_ERROR;
}

static int
smtp_start(void *state, const char **error_r)
{
    struct smtp_state *st = state;

    /* checked here, not in configure(): --check-config opens no store */
    if (st->local_delivery && st->api->store == NULL) {
        *error_r = "local_delivery needs the store, and this process has "
                   "none (set local_delivery = false for a proxy-only "
                   "deployment)";
        return MG_ERROR;
    }
    st->api->log(st->m, MG_LOG_DEBUG,
                 "started (max_message_size %llu, local_delivery %s)",
                 (unsigned long long)st->max_message_size,
                 st->local_delivery ? "yes" : "no");
    return MG_OK;
}

static void
smtp_stop(void *state)
{
    struct smtp_state *st = state;

    st->api->log(st->m, MG_LOG_DEBUG, "stopped");
}

MG_MODULE_EXPORT(smtp) = {
    MG_MODULE_V1,
    .name = "smtp",
    .description = "SMTP engine: journal mail into mailboxes",
    .settings = smtp_settings,
    .configure = smtp_configure,
    .start = smtp_start,
    .stop = smtp_stop,
    .release = smtp_release,
};
