/*
 * modules/smtp/smtp_session.h -- one SMTP session, shared by the files
 * that run it (none of this is seen outside the engine):
 *
 *   smtp_session.c   life of a session: accept, greeting, the input loop,
 *                    timeouts, shutdown, free
 *   smtp_command.c   command dispatch; EHLO, STARTTLS, RSET, NOOP, QUIT, ...
 *   smtp_envelope.c  MAIL and RCPT with the recipient rules; the
 *                    transaction
 *   smtp_body.c      DATA and BDAT: the message data into tee and store
 *   smtp_deliver.c   the end of a message: trace fields, commit,
 *                    smtp.data.end, the final reply
 *   smtp_auth.c      AUTH and the takeover by an smtp.auth handler
 *   smtp_hooks.c     running hooks, suspended runs
 *   smtp_reply.c     replies, and replies kept for later
 *   smtp_util.c      small helpers
 */
#ifndef MG_SMTP_SESSION_H
#define MG_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mailgate/module.h>

#include "smtp.h"
#include "smtp_engine.h"

/* Input taken per step in the data phase; the output of one step is at
 * most twice that plus 2 (smtp_data_feed), below malloc's mmap threshold. */
#define SMTP_IN_CHUNK 32768
#define SMTP_OUT_MAX  (2 * SMTP_IN_CHUNK + 2)
/* AUTH lines may be longer than commands (RFC 4954 §4). */
#define SMTP_AUTH_LINE_MAX 12290
#define SMTP_AUTH_MAX      4096 /* decoded credentials */
/* Replies queued beyond this stop command processing until drained. */
#define SMTP_OUTPUT_MAX (256 * 1024)
#define SMTP_CAPS_MAX   12
#define SMTP_TEXT_MAX   600

/** Where a session is in the protocol. */
enum smtp_sstate {
    SMTP_ST_GREET,    /* before the greeting: delay, smtp.connect */
    SMTP_ST_REFUSED,  /* smtp.connect refused: 503 until QUIT */
    SMTP_ST_INIT,     /* greeted (or after STARTTLS): EHLO/HELO first */
    SMTP_ST_READY,    /* after EHLO/HELO, no transaction */
    SMTP_ST_MAIL,     /* MAIL accepted, no recipient yet */
    SMTP_ST_RCPT,     /* at least one recipient */
    SMTP_ST_DATA,     /* reading the DATA stream */
    SMTP_ST_BDAT_TXN, /* between the BDAT chunks of a transaction */
    SMTP_ST_CHUNK,    /* reading a BDAT chunk */
    SMTP_ST_END,      /* message complete: commit and final reply */
    SMTP_ST_AUTH,     /* AUTH waits for a 334 answer */
    SMTP_ST_TLS,      /* STARTTLS handshake */
};


#define SMTP_CMDSTATES                                                     \
    ((1u << SMTP_ST_INIT) | (1u << SMTP_ST_READY) | (1u << SMTP_ST_MAIL) | \
     (1u << SMTP_ST_RCPT) | (1u << SMTP_ST_BDAT_TXN))
#define SMTP_TXNSTATES ((1u << SMTP_ST_MAIL) | (1u << SMTP_ST_RCPT))

/** What stops input processing. */
enum smtp_wait {
    SMTP_WAIT_NONE = 0,
    SMTP_WAIT_GREET,  /* the greet_delay timer */
    SMTP_WAIT_HOOK,   /* a suspended hook run */
    SMTP_WAIT_STORE,  /* msg_write said MG_AGAIN */
    SMTP_WAIT_COMMIT, /* msg_commit in flight */
    SMTP_WAIT_TLS,    /* the handshake */
};

/** Steps after the message data (end of DATA, or a BDAT chunk). */
enum smtp_fin {
    SMTP_FIN_NONE = 0,
    SMTP_FIN_TEE,    /* the final smtp.data.tee piece */
    SMTP_FIN_BDAT,   /* smtp.bdat for the chunk */
    SMTP_FIN_COMMIT, /* the local copies */
    SMTP_FIN_HOOK,   /* smtp.data.end decides the reply */
};

/** A piece of message data on its way to smtp.data.tee and the store. */
enum smtp_pstage {
    SMTP_PIECE_NONE = 0,
    SMTP_PIECE_TEE,
    SMTP_PIECE_WRITE,
};

/* A handler's reply is used when it has at most this many lines of at
 * most SMTP_REPLY_LINE_MAX octets each (doc/hooks.md); RFC 5321 asks for
 * 512 octets per reply line, code included, and some servers send more. */
#define SMTP_REPLY_LINES_MAX 100
#define SMTP_REPLY_LINE_MAX  998

/** A reply kept for later (a failure inside the data, a hook's answer):
 * copies of every line, freed by smtp_saved_clear(). */
struct smtp_saved {
    int code;
    char *ecode; /* NULL: none */
    char **lines;
    size_t nlines;
};

/** A conn an smtp.auth handler took over: only its SIGTERM is ours. */
struct smtp_takeover {
    struct smtp_takeover *next;
    uint64_t conn_id;
    void (*on_shutdown)(struct mg_conn *c, void *arg);
    void *arg;
};

typedef void (*smtp_cont_fn)(struct smtp_session *s, enum mg_verdict v);

struct smtp_session {
    struct smtp_session *next, *prev; /* hash bucket */
    struct smtp_state *st;
    struct mg_conn *c;
    struct mg_conn *close_c; /* to close once the session is freed */
    uint64_t id;
    enum smtp_sstate state;
    enum smtp_wait wait;
    unsigned depth; /* entry points on the stack */
    bool closed;    /* conn closed: free at the last smtp_leave */
    bool released;  /* no smtp.close: generation gone, or taken over */
    bool blocked;   /* output backlog: wait for MG_CONN_DRAINED */
    bool paused;    /* pause_read(true) is in force */
    bool closing;   /* shutdown asked while busy */
    bool require_tls;
    bool plain_auth; /* allow_plaintext_auth on the listener */
    bool data_timeouts;
    enum mg_tls_mode listener_tls;
    uint64_t greet_timer;
    uint64_t cmd_timer;  /* a command line started and not yet complete */
    uint64_t data_timer; /* the DATA/BDAT phase must end by then */
    uint64_t started_ms;
    unsigned errors;

    /* what the hooks see */
    struct mg_smtp_session view;
    struct mg_hook_call call;
    smtp_cont_fn cont;
    union {
        struct mg_hook_smtp_connect connect;
        struct mg_hook_smtp_ehlo ehlo;
        struct mg_hook_smtp_auth auth;
        struct mg_hook_smtp_mail mail;
        struct mg_hook_smtp_rcpt rcpt;
        struct mg_hook_smtp_data data;
        struct mg_hook_smtp_bdat bdat;
        struct mg_hook_smtp_data_tee tee;
        struct mg_hook_smtp_data_end end;
        struct mg_hook_smtp_close close;
        struct mg_hook_message_stored stored;
    } h;

    /* the session */
    char *helo;
    bool esmtp;
    char *auth_user;
    const char *caps[SMTP_CAPS_MAX];
    bool auth_offered;
    char size_cap[32];
    uint64_t ntxn;

    /* a command waiting for its hook */
    char *pend_name; /* EHLO argument, RCPT path */
    char *pend_params;
    char *pend_mbox;
    bool pend_have_info;
    struct mg_mailbox_info pend_info;
    struct smtp_mail_args mail;
    char auth_mech[8];
    unsigned auth_step; /* LOGIN: 1 = user asked, 2 = password asked */
    char auth_authzid[SMTP_AUTH_MAX + 1];
    char auth_user_buf[SMTP_AUTH_MAX + 1];
    char auth_pass[SMTP_AUTH_MAX + 1];

    /* the transaction */
    char *sender; /* NULL outside a transaction */
    char **rcpts;
    char **rcpt_mbox; /* per recipient: local mailbox id or NULL */
    size_t nrcpts, rcap;
    const char **mboxes;     /* distinct local mailbox ids */
    const char **mbox_rcpts; /* the envelope recipient of each */
    size_t nmboxes;
    bool bdat;       /* the transaction uses BDAT */
    bool data_begun; /* the data phase started: data.end owed */
    bool txn_failed; /* an error inside the data: reply `fail` */
    struct smtp_saved fail;
    struct mg_msg_writer *writer;
    bool write_failed;
    struct smtp_data dstate;
    uint64_t msg_bytes;    /* message bytes (trace fields excluded) */
    uint64_t stored_bytes; /* everything written, trace fields included */
    unsigned nchunks;

    /* the current BDAT chunk */
    uint64_t chunk_size, chunk_left;
    bool chunk_last;
    bool chunk_discard; /* consume only: `chunk_reply` after it */
    struct smtp_saved chunk_reply;

    /* the piece in flight */
    char *obuf; /* SMTP_OUT_MAX bytes, allocated on first use */
    char *trace;
    const char *pdata;
    size_t plen;
    uint64_t poffset;
    bool ptee, plast;
    enum smtp_pstage pstage;

    enum smtp_fin fin;
    struct mg_store_result local;
    char local_error[200];
    bool have_local;
};

/** The core API, set when the first session is accepted. */
extern const struct mg_core_api *smtp_api;

/* smtp_util.c */
void *smtp_alloc(size_t n);
char *smtp_strndup(const char *s, size_t n);
char *smtp_strdup(const char *s);
void smtp_wipe(void *p, size_t n);
void smtp_clean(char *dst, size_t size, const char *src, size_t len);

/* smtp_session.c */
struct smtp_session *smtp_lookup(struct smtp_state *st, uint64_t conn_id);
void smtp_log(struct smtp_session *s, enum mg_log_level level, const char *fmt,
              ...) MG_PRINTF(3, 4);
void smtp_enter_state(struct smtp_session *s, enum smtp_sstate state);
void smtp_set_timeouts(struct smtp_session *s, bool data);
void smtp_close(struct smtp_session *s);
void smtp_enter(struct smtp_session *s);
void smtp_leave(struct smtp_session *s);
void smtp_data_deadline_start(struct smtp_session *s);
void smtp_data_deadline_stop(struct smtp_session *s);
void smtp_process(struct smtp_session *s);

/* smtp_reply.c */
void smtp_reply(struct smtp_session *s, int code, const char *ecode,
                const char *fmt, ...) MG_PRINTF(4, 5);
void smtp_reply_saved(struct smtp_session *s, const struct smtp_saved *r);
void smtp_saved_clear(struct smtp_saved *r);
void smtp_save(struct smtp_saved *r, int code, const char *ecode,
               const char *text);
bool smtp_error(struct smtp_session *s, int code, const char *ecode,
                const char *text);
bool smtp_reply_fits(const struct mg_reply *r, enum mg_verdict v, int want);
void smtp_reply_hook(struct smtp_session *s, enum mg_verdict v, int want,
                     int code, const char *ecode, const char *text);
void smtp_save_hook(struct smtp_session *s, enum mg_verdict v,
                    struct smtp_saved *out);

/* smtp_hooks.c */
void smtp_hook(struct smtp_session *s, const char *hook, void *data,
               smtp_cont_fn cont);
enum mg_verdict smtp_hook_info(struct smtp_session *s, const char *hook,
                               void *data);
void smtp_data_end_error(struct smtp_session *s);

/* smtp_envelope.c */
void smtp_txn_free(struct smtp_session *s);
void smtp_txn_reset(struct smtp_session *s);
void smtp_txn_fail_saved(struct smtp_session *s, struct smtp_saved *r);
void smtp_txn_fail(struct smtp_session *s, int code, const char *ecode,
                   const char *text);
void smtp_cmd_mail(struct smtp_session *s, const struct smtp_command *cmd);
void smtp_rcpt_release(struct smtp_session *s);
void smtp_cmd_rcpt(struct smtp_session *s, const struct smtp_command *cmd);

/* smtp_body.c */
void smtp_piece_set(struct smtp_session *s, const char *data, size_t len,
                    bool tee, bool last);
bool smtp_piece_push(struct smtp_session *s);
bool smtp_data_step(struct smtp_session *s);
bool smtp_chunk_step(struct smtp_session *s);
void smtp_cmd_data(struct smtp_session *s, const struct smtp_command *cmd);
void smtp_cmd_bdat(struct smtp_session *s, const struct smtp_command *cmd);

/* smtp_deliver.c */
bool smtp_begin_store(struct smtp_session *s);
void smtp_finish(struct smtp_session *s);

/* smtp_command.c */
void smtp_cmd_quit(struct smtp_session *s, const struct smtp_command *cmd);
void smtp_command(struct smtp_session *s, const char *line, size_t len);

/* smtp_auth.c */
void smtp_auth_wipe(struct smtp_session *s);
void smtp_cmd_auth(struct smtp_session *s, const struct smtp_command *cmd);
void smtp_auth_line(struct smtp_session *s, const char *line, size_t len);

#endif /* MG_SMTP_SESSION_H */
