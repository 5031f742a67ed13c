/*
 * modules/pop3/pop3_engine.h -- the session shared by pop3_session.c
 * (state machine, transaction commands), pop3_auth.c (logins) and
 * pop3_retr.c (RETR/TOP). Only these and pop3_module.c see the core API.
 */
#ifndef MG_POP3_ENGINE_H
#define MG_POP3_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include <mailgate/module.h>

#include "pop3.h"

/** Sessions are found by conn id in a small hash. */
#define POP3_BUCKETS  256
#define POP3_CAPS_MAX 12

struct pop3_session;
struct pop3_takeover;

/** The module's state in one generation: its settings and sessions. */
struct pop3_state {
    struct mg_modctx *m;
    const struct mg_core_api *api;
    char *email_domain; /* lower-cased; NULL when not set */
    char *greeting;
    unsigned max_errors;
    uint32_t idle_ms;
    uint64_t session_ms;
    uint32_t auth_delay_ms;    /* extra wait before a failed login's answer */
    unsigned throttle_addr;    /* failures per address per window */
    unsigned throttle_mailbox; /* per (address, mailbox) per window */
    uint32_t throttle_window_s;
    char **throttle_exempt; /* CIDR strings */
    size_t nthrottle_exempt;
    bool log_addresses;
    struct pop3_session *buckets[POP3_BUCKETS];
    struct pop3_takeover *taken; /* conns handed to a pop3.login handler */
};

/** Where a session is in the protocol (RFC 1939 §3). */
enum pop3_sstate {
    POP3_ST_GREET,  /* pop3.connect runs */
    POP3_ST_AUTH,   /* AUTHORIZATION */
    POP3_ST_SASL,   /* AUTH PLAIN waits for the client's response */
    POP3_ST_LOGIN,  /* pop3.login, the key unlock, the listing */
    POP3_ST_TRANS,  /* TRANSACTION */
    POP3_ST_RETR,   /* streaming a RETR/TOP response */
    POP3_ST_UPDATE, /* QUIT: the deletions commit */
    POP3_ST_TLS,    /* STLS handshake */
};

/** What stops input processing. */
enum pop3_wait {
    POP3_WAIT_NONE = 0,
    POP3_WAIT_HOOK,   /* a suspended hook run */
    POP3_WAIT_UNLOCK, /* key_unlock on the worker pool */
    POP3_WAIT_DELAY,  /* the failed-login delay */
    POP3_WAIT_READ,   /* msg_read said MG_AGAIN */
    POP3_WAIT_COMMIT, /* msg_delete in flight */
    POP3_WAIT_TLS,    /* the handshake */
};

typedef void (*pop3_cont_fn)(struct pop3_session *s, enum mg_verdict v);

struct pop3_session {
    struct pop3_session *next, *prev; /* hash bucket */
    struct pop3_state *st;
    struct mg_conn *c;
    struct mg_conn *close_c; /* to close once the session is freed */
    uint64_t id;
    enum pop3_sstate state;
    enum pop3_wait wait;
    unsigned depth;  /* entry points on the stack */
    bool closed;     /* conn closed: free at the last pop3_leave */
    bool blocked;    /* output backlog: wait for MG_CONN_DRAINED */
    bool closing;    /* shutdown asked while busy */
    bool plain_auth; /* allow_plaintext_auth on the listener */
    enum mg_tls_mode listener_tls;
    uint64_t cmd_timer; /* a command line started and not yet complete */
    uint64_t delay_timer;
    uint64_t started_ms;
    unsigned errors;
    char addr[64]; /* peer address (throttling) */

    /* what the hooks see */
    struct mg_pop3_session view;
    struct mg_hook_call call;
    pop3_cont_fn cont;
    union {
        struct mg_hook_pop3_connect connect;
        struct mg_hook_pop3_login login;
        struct mg_hook_pop3_retr_tee tee;
    } h;
    const char *caps[POP3_CAPS_MAX];

    /* AUTHORIZATION */
    char user[POP3_ARG_MAX + 1]; /* USER argument, "" before */
    bool have_user;
    char mech[8];                        /* "USER" or "PLAIN" */
    char sasl[POP3_SECRET_MAX + 1];      /* decoded PLAIN response */
    char pass[POP3_SECRET_MAX + 1];      /* PASS argument */
    const char *login_user, *login_pass; /* into user/sasl/pass */
    const char *login_authzid;

    /* TRANSACTION */
    char mailbox[33]; /* the logged-in mailbox id */
    char thname[41];  /* the login name as throttled (id or name) */
    struct mg_mbox_key *key;
    bool locked; /* holds the mailbox's IN-USE lock */
    struct mg_msg_entry *msgs;
    bool *deleted;
    uint32_t nmsgs, ndeleted;
    uint64_t bytes, deleted_bytes;

    /* the RETR/TOP response in flight */
    struct mg_msg_reader *reader;
    uint32_t rmsg;   /* 1-based */
    bool rtee;       /* RETR (tee'd), not TOP */
    bool rstarted;   /* the +OK line was sent */
    bool rend;       /* the last piece was read */
    bool rstage_tee; /* the piece waits for its tee run */
    const char *rdata;
    size_t rlen;
    uint64_t roffset;
    struct pop3_stuff stuff;
    char *obuf;
};

/** The core API (set at the first accept; modules have one per process). */
extern const struct mg_core_api *pop3_api;

/* ---------------------------------------------------- pop3_session.c */

void pop3_session_accept(struct mg_conn *c,
                         const struct config_setting_t *entry, void *arg);
void pop3_session_shutdown(struct mg_conn *c, void *arg);
void pop3_sessions_free_all(struct pop3_state *st);

/** A completion's session, or NULL when it or its conn is gone. */
struct pop3_session *pop3_lookup(struct pop3_state *st, uint64_t conn_id);
void pop3_enter(struct pop3_session *s);
void pop3_leave(struct pop3_session *s);
void pop3_close(struct pop3_session *s);
void pop3_enter_state(struct pop3_session *s, enum pop3_sstate state);
/** Handle buffered input until none is left or the session waits. */
void pop3_process(struct pop3_session *s);
void pop3_log(struct pop3_session *s, enum mg_log_level level, const char *fmt,
              ...) MG_PRINTF(3, 4);
/** "+OK text" / "-ERR [code] text"; code may be NULL. */
void pop3_reply(struct pop3_session *s, bool ok, const char *code,
                const char *fmt, ...) MG_PRINTF(4, 5);
/** An -ERR the client caused: counts towards max_errors. */
void pop3_error(struct pop3_session *s, const char *code, const char *text);
/** A hook's reply (if it set one) or the default. */
void pop3_reply_hook(struct pop3_session *s, enum mg_verdict v,
                     const char *code, const char *text);
/** Run a hook; `cont` gets the verdict now or after a suspend. */
void pop3_hook(struct pop3_session *s, const char *hook, void *data,
               pop3_cont_fn cont);
void pop3_view_update(struct pop3_session *s);
void pop3_wipe(void *p, size_t n);
void pop3_caps_build(struct pop3_session *s);
/** The undeleted message a number argument names, or NULL after -ERR. */
const struct mg_msg_entry *pop3_message(struct pop3_session *s, const char *arg,
                                        size_t len, uint32_t *n_r);
bool pop3_auth_allowed(const struct pop3_session *s);

/* ------------------------------------------------------ pop3_trans.c */

void pop3_cmd_stat(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_list(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_uidl(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_dele(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_rset(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_noop(struct pop3_session *s, const struct pop3_command *cmd);
/** QUIT: in TRANSACTION with deletions, the UPDATE state. */
void pop3_cmd_quit(struct pop3_session *s, const struct pop3_command *cmd);

/* ------------------------------------------------------- pop3_auth.c */

void pop3_cmd_user(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_pass(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_auth(struct pop3_session *s, const struct pop3_command *cmd);
/** A line in the AUTH PLAIN exchange (state POP3_ST_SASL). */
void pop3_sasl_line(struct pop3_session *s, const char *line, size_t len);
/** Let go of the login: key, IN-USE lock, listing, secrets. */
void pop3_auth_free(struct pop3_session *s);
/** The IN-USE lock passes from the session to the UPDATE in flight. */
void pop3_auth_lock_handover(struct pop3_session *s);
/** Release a lock handed over to an UPDATE. */
void pop3_auth_lock_release(const char *mailbox);
/** Conns a pop3.login handler took over: only their SIGTERM is ours. */
bool pop3_takeover_shutdown(struct pop3_state *st, struct mg_conn *c,
                            uint64_t id);
void pop3_takeovers_free(struct pop3_state *st);

/* ------------------------------------------------------- pop3_retr.c */

void pop3_cmd_retr(struct pop3_session *s, const struct pop3_command *cmd);
void pop3_cmd_top(struct pop3_session *s, const struct pop3_command *cmd);
/** Go on with the response (after a read, a drain or a tee run). */
void pop3_retr_step(struct pop3_session *s);
void pop3_retr_free(struct pop3_session *s);

/* --------------------------------------------------- pop3_throttle.c */

/** True when logins from the peer (for this mailbox or name) must wait. */
bool pop3_throttled(const struct pop3_state *st, const struct mg_peer *p,
                    const char *mailbox);
void pop3_throttle_fail(const struct pop3_state *st, const struct mg_peer *p,
                        const char *mailbox);
void pop3_throttle_success(const struct pop3_state *st, const struct mg_peer *p,
                           const char *mailbox);
/** True when `net` is an IP address or a CIDR network. */

#endif /* MG_POP3_ENGINE_H */
