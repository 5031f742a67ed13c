/*
 * modules/proxy/proxy_smtp.h -- the SMTP half of the recording proxy.
 *
 * The smtp engine keeps the client session (smtp.auth with keep_engine):
 * it parses every command and the message data, and the proxy answers
 * through the per-command hooks with what its upstream said:
 *
 *   proxy_smtp.c           smtp.auth (login, mailbox checks, policy), the
 *                          session list, the end of a session
 *   proxy_smtp_upstream.c  the upstream: connect, EHLO, STARTTLS (or 465),
 *                          EHLO again, AUTH PLAIN or LOGIN; replies read
 *                          and checked; commands sent
 *   proxy_smtp_relay.c     MAIL, RCPT, DATA/BDAT: relayed, the message
 *                          streamed upstream and into the mailbox as a
 *                          pending copy, published only on the upstream's
 *                          2xx
 *   proxy_smtp_reply.c     the pure part: reply lines checked and
 *                          collected, the data stream dot-stuffed
 */
#ifndef MG_PROXY_SMTP_H
#define MG_PROXY_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy.h"

/* an upstream reply: at most this many lines of at most this many octets
 * (RFC 5321 §4.5.3.1.5 says 512; servers send somewhat more) */
#define PSMTP_REPLY_LINES 100
#define PSMTP_LINE_MAX    998
#define PSMTP_PIECE       (64 * 1024)
/* Message data bound upstream is held until more than this has gathered:
 * a small message (or the tail of a big one) then goes with the final "."
 * in one write once the copy is committed, and small pieces go together;
 * more goes at once, so that the upstream takes a big message in while
 * the copy is being committed. */
#define PSMTP_HOLD (8 * 1024)

/** One upstream reply being read (proxy_smtp_reply.c). */
struct psmtp_reply {
    int code;  /* 0 before the first line */
    bool done; /* the last line was read */
    size_t nlines;
    char *lines[PSMTP_REPLY_LINES]; /* the text, printable ASCII only */
    char ecode[16];                 /* "2.1.0"; "" when none was sent */
    const char *ptrs[PSMTP_REPLY_LINES];
};

/** Add one line (without CRLF). MG_OK (check r->done), or MG_ERROR with
 * *why for a line that is not a reply line, a code that differs from the
 * first line's, or a reply that goes on past PSMTP_REPLY_LINES. */
int psmtp_reply_add(struct psmtp_reply *r, const char *line, size_t len,
                    const char **why);
void psmtp_reply_clear(struct psmtp_reply *r);
/** The reply as the engine writes it: code, enhanced code (the upstream's,
 * or `def_ecode` when it sent none) and every line. */
void psmtp_reply_out(struct psmtp_reply *r, const char *def_ecode,
                     struct mg_reply *out);

/** The message data on its way upstream (DATA) and into the copy. */
struct psmtp_stuff {
    bool bol;   /* at the start of a line */
    bool cr;    /* a CR is pending */
    bool empty; /* nothing yet */
};

void psmtp_stuff_init(struct psmtp_stuff *f);
/** Convert `len` bytes: `up` gets them dot-stuffed, `copy` unstuffed;
 * bare CR and bare LF become CRLF in both. Each output needs room for
 * 2 * len + 2 bytes; *uplen and *copylen are advanced. */
void psmtp_stuff(struct psmtp_stuff *f, const char *in, size_t len, char *up,
                 size_t *uplen, char *copy, size_t *copylen);
/** The end: a pending CR, and a CRLF when the data does not end with one
 * (room for 2 bytes each). The terminating "." is not written. */
void psmtp_stuff_end(struct psmtp_stuff *f, char *up, size_t *uplen, char *copy,
                     size_t *copylen);

/** What the upstream offers (its EHLO reply). */
struct psmtp_caps {
    bool starttls, auth_plain, auth_login, size, pipelining, chunking;
    bool eightbit, smtputf8, enhanced;
    uint64_t size_max; /* 0: none given */
};

/** Parse one EHLO keyword line into c. */
void psmtp_caps_line(struct psmtp_caps *c, const char *line);

/** Where the upstream connection is. */
enum psmtp_phase {
    PS_CONNECT,
    PS_GREETING,
    PS_EHLO1,
    PS_STARTTLS,
    PS_TLS,
    PS_EHLO2,
    PS_AUTH_PLAIN,
    PS_AUTH_LOGIN, /* AUTH LOGIN sent: 334 for the user name */
    PS_AUTH_USER,  /* user name sent: 334 for the password */
    PS_AUTH_PASS,  /* password sent: 235 */
    PS_READY,      /* logged in, no command in flight */
    PS_RSET,       /* RSET before a new MAIL */
    PS_MAIL,
    PS_RCPT,
    PS_DATA,   /* DATA sent, waiting for 354 */
    PS_STREAM, /* message data going out */
    PS_DOT,    /* the final "." sent */
    PS_QUIT,
    PS_GONE, /* the upstream connection is closed */
};

/** What a suspended hook run waits for. */
enum psmtp_wait {
    PW_NONE = 0,
    PW_LOGIN, /* smtp.auth */
    PW_MAIL,  /* smtp.mail */
    PW_RCPT,  /* smtp.rcpt */
    PW_TEE,   /* a tee piece waits for the upstream's 354 (DATA sent at
                 the client's DATA or its first BDAT piece), the store or
                 the upstream's queue */
    PW_END,   /* smtp.data.end: commit, dot, publish/discard */
};

/** How a held copy is settled at the end of the data. */
enum psmtp_settle {
    PSET_SENT,     /* the upstream took it: publish */
    PSET_REFUSED,  /* the upstream refused it: discard */
    PSET_UNKNOWN,  /* the upstream went away after the ".": publish */
    PSET_NOT_SENT, /* the upstream went away before the ".": discard */
};

struct psmtp_session {
    struct psmtp_session *next;
    struct proxy_state *st;
    uint64_t id;      /* the client conn */
    uint64_t call_id; /* the suspended run, when wait != PW_NONE */
    enum psmtp_wait wait;
    struct mg_conn *up;
    enum psmtp_phase phase;
    struct proxy_login login;
    struct proxy_policy policy;
    unsigned depth;
    bool dead;       /* freed at the last leave */
    bool connecting; /* connect() will call back */
    bool reading;    /* in the upstream's read loop */
    char peer[64];
    char peer_tls[96];
    char helo[256];
    char *pass;
    size_t passlen;
    char authzid[256];
    struct psmtp_caps caps;
    struct psmtp_reply rep; /* the reply being read */
    char why[400];          /* the last failure */

    /* the reply handed to the engine (strings live until the next) */
    struct psmtp_reply out;
    struct mg_reply reply;
    char text[480];
    const char *text_lines[1];

    /* the transaction */
    uint64_t txn;  /* the engine's transaction the upstream has open */
    bool txn_open; /* MAIL accepted upstream, not yet ended */
    bool smtputf8; /* this transaction */
    char *cmd;     /* a command waiting for RSET first */
    struct mg_msg_writer *w;
    bool w_committed;
    struct psmtp_stuff stuff;
    char *ubuf, *sbuf; /* upstream (up to PSMTP_HOLD held) / copy pieces */
    size_t ulen, ucap, slen, scap;
    bool s_wait;          /* msg_write said MG_AGAIN */
    bool u_wait;          /* the upstream's queue is over its mark */
    bool logged_in;       /* the upstream accepted the login */
    bool dot_sent;        /* the final "." went upstream */
    bool converted;       /* the tee piece in hand went upstream */
    bool data_refused;    /* s->out: the upstream's refusal of DATA */
    bool w_failed;        /* msg_write failed: the commit will too */
    const char *tee_data; /* the tee piece in hand (valid while suspended) */
    size_t tee_len;
    bool tee_last;
    enum psmtp_settle settle;
    uint64_t copy_size;
    unsigned sent, failed;
};

/* proxy_smtp.c */
/** Register the SMTP half's hook handlers (proxy_module.c). */
int proxy_smtp_hooks(struct mg_modctx *m, const struct mg_core_api *api,
                     struct proxy_state *st, const char **error_r);
enum mg_verdict proxy_smtp_auth(struct mg_hook_call *call, void *arg);
struct psmtp_session *psmtp_find(uint64_t conn_id);
void psmtp_enter(struct psmtp_session *s);
void psmtp_leave(struct psmtp_session *s);
void psmtp_log(struct psmtp_session *s, enum mg_log_level level,
               const char *fmt, ...) MG_PRINTF(3, 4);
/** Resume the suspended run with a reply of our own (one line). */
/** A one-line reply into r, its text (printable ASCII) in the session. */
void psmtp_text_reply(struct psmtp_session *s, struct mg_reply *r, int code,
                      const char *ecode, const char *fmt, va_list ap);
void psmtp_resume_text(struct psmtp_session *s, enum mg_verdict v, int code,
                       const char *ecode, const char *fmt, ...) MG_PRINTF(5, 6);
/** Resume the suspended run with the upstream's reply in s->rep. */
void psmtp_resume_reply(struct psmtp_session *s, enum mg_verdict v,
                        const char *def_ecode);
/** Move the upstream's reply from s->rep to s->out (kept for later). */
void psmtp_reply_keep(struct psmtp_session *s);
/** Resume with the reply kept in s->out. */
void psmtp_resume_out(struct psmtp_session *s, enum mg_verdict v,
                      const char *def_ecode);
/** The login finished: accepted, or refused with s->why. */
void psmtp_login_done(struct psmtp_session *s, enum mg_verdict v, int code,
                      const char *ecode);

/* proxy_smtp_upstream.c */
int psmtp_upstream_start(struct psmtp_session *s, const char **why);
void psmtp_upstream_send(struct psmtp_session *s, const char *line, size_t len);
/** Close the upstream connection at once (no QUIT: nothing is sent). */
void psmtp_upstream_drop(struct psmtp_session *s, const char *why);
/** QUIT and close, for a session that ends normally. */
void psmtp_upstream_quit(struct psmtp_session *s);

/* proxy_smtp.c: smtp.close, the client's session ended */
enum mg_verdict proxy_smtp_close(struct mg_hook_call *call, void *arg);

/* proxy_smtp_relay.c */
enum mg_verdict proxy_smtp_mail(struct mg_hook_call *call, void *arg);
enum mg_verdict proxy_smtp_rcpt(struct mg_hook_call *call, void *arg);
enum mg_verdict proxy_smtp_data(struct mg_hook_call *call, void *arg);
enum mg_verdict proxy_smtp_tee(struct mg_hook_call *call, void *arg);
enum mg_verdict proxy_smtp_end(struct mg_hook_call *call, void *arg);
/** A complete upstream reply after login (s->rep). */
void psmtp_relay_reply(struct psmtp_session *s);
/** The upstream went away (s->why) while logged in. */
void psmtp_relay_lost(struct psmtp_session *s);
/** The upstream's queue drained. */
void psmtp_relay_drained(struct psmtp_session *s);
/** Let go of the transaction's copy (session end). */
void psmtp_relay_release(struct psmtp_session *s);

#endif /* MG_PROXY_SMTP_H */
