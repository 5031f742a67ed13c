/*
 * include/mailgate/hooks.h -- the data structs of the hooks.
 *
 * A handler casts `mg_hook_call.data` to the struct of its hook; doc/hooks.md
 * says when each hook runs and what each verdict does. The structs only
 * grow at the end.
 */
#ifndef MG_HOOKS_H
#define MG_HOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mailgate/module.h>

struct mg_smtp_session {
    uint64_t conn_id;
    const struct mg_peer *peer; /* address, TLS state, listener */
    enum mg_tls_mode
        listener_tls;      /* the listener's mode (IMPLICIT = 465-style) */
    const char *helo;      /* last EHLO/HELO argument, NULL before */
    bool esmtp;            /* EHLO (true) or HELO */
    const char *auth_user; /* user a handler authenticated with
                              keep_engine, else NULL */
    /* the current transaction (after MAIL): */
    uint64_t transaction;              /* 1 for the session's first MAIL, … */
    const char *sender;                /* reverse-path without <>; "" for <>;
                                          NULL outside a transaction */
    size_t nrcpts;                     /* accepted recipients so far */
    const char *const *rcpts;          /* forward-paths without <> */
    const char *const *rcpt_mailboxes; /* per recipient: the local mailbox
                                       id, or NULL when a handler accepted it */
};

struct mg_pop3_session {
    uint64_t conn_id;
    const struct mg_peer *peer;
    enum mg_tls_mode listener_tls;
    const char *user; /* logged-in mailbox id, NULL before */
};

struct mg_hook_smtp_connect {
    const struct mg_smtp_session *s;
};

struct mg_hook_smtp_ehlo {
    const struct mg_smtp_session *s; /* s->helo is not yet updated */
    const char *name;                /* the argument as sent */
    bool esmtp;                      /* EHLO (true) or HELO */
    const char *const *caps;         /* capability lines the engine will
                                        advertise, NULL-terminated */
};

struct mg_hook_smtp_auth {
    const struct mg_smtp_session *s;
    const char *mechanism;   /* "PLAIN" or "LOGIN" */
    const char *authzid;     /* PLAIN authorization identity, "" if none */
    const char *user;        /* authentication identity */
    const char *password;    /* secret: never log it; the engine wipes it
                                after the run */
    const char *const *caps; /* the capability lines the engine advertised
                                in its last EHLO reply, NULL-terminated */

    /* out, with MG_ACCEPT: either a takeover ... */
    mg_conn_fn handler; /* the conn's new handler */
    void *handler_arg;
    /* called instead of the engine's on_shutdown at SIGTERM (with
       handler_arg); NULL = the engine closes the conn with 421 4.3.2 */
    void (*on_shutdown)(struct mg_conn *c, void *arg);
    /* ... or: authenticated, and the engine keeps the session */
    bool keep_engine;
};

struct mg_hook_smtp_mail {
    const struct mg_smtp_session *s;
    const char *sender; /* reverse-path without <>, "" for <> */
    const char *params; /* the ESMTP parameters as sent, "" if none */
    uint64_t size;      /* SIZE=, 0 when not given */
    bool body_8bit;     /* BODY=8BITMIME */
    bool smtputf8;      /* SMTPUTF8 */
};

struct mg_hook_smtp_rcpt {
    const struct mg_smtp_session *s;
    const char *rcpt;       /* forward-path without <> */
    const char *params;     /* ESMTP parameters as sent, "" if none */
    const char *mailbox_id; /* the local mailbox the address names
                               (<id>@<email_domain>), or NULL */
    const struct mg_mailbox_info *mailbox; /* its state; NULL when unknown
                                 or when there is no store */
};

struct mg_hook_smtp_data {
    const struct mg_smtp_session *s;
};

struct mg_hook_smtp_bdat {
    const struct mg_smtp_session *s;
    uint64_t chunk_size; /* this chunk's size as declared */
    uint64_t total;      /* message bytes so far, this chunk included */
    unsigned chunk;      /* 1 for the transaction's first BDAT, … */
    bool last;           /* BDAT … LAST */
};

struct mg_hook_smtp_data_tee {
    const struct mg_smtp_session *s;
    const void *data; /* this piece; valid until the run ends */
    size_t len;
    uint64_t offset; /* of data[0] within the message */
    bool last;       /* the final piece (len may be 0): the
                        message is complete */
    bool bdat;       /* the data came with BDAT */
};

struct mg_hook_smtp_data_end {
    const struct mg_smtp_session *s;
    int status;    /* MG_OK: the message is complete;
                      MG_ERROR: the transaction failed */
    uint64_t size; /* message bytes received */
    /* the engine's local delivery: NULL when no recipient is local */
    const struct mg_store_result *local;
};

/* The session has ended (the client left, was disconnected, or the daemon
 * stopped); informational. */
struct mg_hook_smtp_close {
    const struct mg_smtp_session *s;
};

struct mg_hook_pop3_connect {
    const struct mg_pop3_session *s;
};

struct mg_hook_pop3_login {
    const struct mg_pop3_session *s;
    const char *mechanism; /* "USER" (USER/PASS) or "PLAIN" */
    const char *authzid;   /* PLAIN authorization identity, "" if none */
    const char *user;
    const char *password;    /* secret: never log it; wiped after the run */
    const char *const *caps; /* the CAPA lines the engine advertised,
                                NULL-terminated */

    /* out, with MG_ACCEPT (takeover): */
    mg_conn_fn handler;
    void *handler_arg;
    void (*on_shutdown)(struct mg_conn *c, void *arg); /* NULL: the engine
                                 closes the conn at SIGTERM */
};

struct mg_hook_pop3_retr_tee {
    const struct mg_pop3_session *s;
    unsigned msgno;   /* the message number in the session */
    const void *data; /* this piece; valid until the run ends */
    size_t len;
    uint64_t offset; /* of data[0] within the message */
    bool last;       /* the final piece (len may be 0) */
    bool relayed;    /* fired by a relaying module */
};

struct mg_hook_message_stored {
    const char *mailbox_id;
    uint64_t msg_id;
    uint64_t size;      /* bytes of the stored message (plaintext) */
    const char *source; /* "smtp", "proxy-smtp" or "proxy-pop3" */
};

struct mg_hook_config_reload {
    uint64_t old_generation; /* id of the generation being replaced */
    uint64_t new_generation; /* id of the generation now running */
    const char *file;        /* the configuration file */
};

struct mg_hook_cert_changed {
    const char *cert;        /* certificate chain file (PEM), absolute */
    const char *key;         /* private key file (PEM), absolute */
    const char *source;      /* "reload" or "acme" */
    const char *description; /* "subject, not after" of the new
                                certificate, for logs */
};

#endif /* MG_HOOKS_H */
