/*
 * modules/smtp/smtp_engine.h -- between smtp_module.c (settings,
 * listeners) and smtp_session.c (the state machine, with the files of
 * smtp_session.h). Both see the core API; the parsers of smtp.h do not.
 */
#ifndef MG_SMTP_ENGINE_H
#define MG_SMTP_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include <mailgate/module.h>

/** Sessions are found by conn id in a small hash. */
#define SMTP_BUCKETS 256

struct smtp_session;
struct smtp_takeover;

/** The module's state in one generation: its settings and sessions. */
struct smtp_state {
    struct mg_modctx *m;
    const struct mg_core_api *api;
    uint64_t max_message_size;
    bool local_delivery;
    bool log_addresses;
    unsigned max_recipients;
    unsigned max_errors;
    char *hostname;
    char *greeting;
    char *email_domain; /* lower-cased; NULL when not set */
    uint32_t idle_ms;
    uint32_t data_ms;
    uint64_t data_total_ms; /* the whole DATA/BDAT phase; 0 = no limit */
    uint64_t session_ms;
    uint32_t greet_delay_ms;
    struct smtp_session *buckets[SMTP_BUCKETS];
    struct smtp_takeover *taken; /* conns handed to an smtp.auth handler */
};

/** Listener ops .on_accept: a new session greets. */
void smtp_session_accept(struct mg_conn *c,
                         const struct config_setting_t *entry, void *arg);

/** Listener ops .on_shutdown: idle sessions end with 421 4.3.2 now, busy
 * ones after their transaction. */
void smtp_session_shutdown(struct mg_conn *c, void *arg);

/** Free every session (release(): their conns are gone). */
void smtp_sessions_free_all(struct smtp_state *st);

#endif /* MG_SMTP_ENGINE_H */
