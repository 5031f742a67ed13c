/*
 * modules/proxy/proxy.h -- the proxy module's shared state: settings and
 * target policy (proxy_module.c, proxy_policy.c), the upstream connection
 * and its login (proxy_upstream.c), the POP3 session and relay
 * (proxy_pop3.c, proxy_pop3_relay.c, proxy_pop3_ahead.c; proxy_pop3.h
 * maps them) and the recording of retrieved messages (proxy_record.c).
 * The SMTP half (proxy_smtp.h) stands on the same foundations.
 */
#ifndef MG_PROXY_H
#define MG_PROXY_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <mailgate/module.h>

#include "proxy_target.h"

#define PROXY_STATUS_MAX 512         /* an upstream status line (RFC 2449) */
#define PROXY_DATA_LINE  (64 * 1024) /* a piece of an upstream data line */
#define PROXY_UIDL_MAX   70          /* RFC 1939 §7 */
#define PROXY_UIDLS_MAX  1000000u    /* messages in one upstream maildrop */
#define PROXY_FLUSH      (16 * 1024) /* batch client output and store pieces */
#define PROXY_AHEAD      3           /* messages read ahead at most */
#define PROXY_PIPE       2 /* of them awaited at once (PIPELINING upstream) */
#define PROXY_UPQ_CLIENT 0xff     /* proxy_session.upq: the client's command */
#define PROXY_TOP_WHOLE  1000000u /* TOP n m: m this large reads it all */

/** The module's state in one generation. */
struct proxy_state {
    struct mg_modctx *m;
    const struct mg_core_api *api;
    char *ca_file;
    struct proxy_rule *allow; /* allow_targets */
    size_t nallow;
    struct sockaddr_storage *own; /* the gateway's own addresses */
    size_t nown;
    uint32_t connect_ms;  /* DNS + TCP + TLS */
    uint32_t upstream_ms; /* waiting for an upstream reply */
    uint32_t idle_ms;     /* waiting for a client command */
    uint64_t session_ms;
    uint64_t prefetch_max; /* prefetch_max_size: 0 = no record-ahead */
    bool log_addresses;
    bool tls_resume; /* tls_session_cache */
    char hostname[256];
};

/** The policy decision for one session's target (proxy_policy.c). */
struct proxy_policy {
    const struct proxy_state *st;
    const struct proxy_login *login;
    struct proxy_rule *mbox; /* the mailbox's own list */
    size_t nmbox;
    bool had_mbox; /* the mailbox has a list (even one that parsed empty) */
    char why[400]; /* the last refusal, for the client */
};

/** 0 when the mailbox's list (if any) may name this target by host name
 * alone, or some address rule could still match; -1 with p->why when the
 * target is refused before any lookup. */
int proxy_policy_precheck(struct proxy_policy *p);
/** The connect filter: MG_OK to use a resolved address. */
int proxy_policy_filter(struct proxy_policy *p, const struct sockaddr *sa,
                        socklen_t len);
void proxy_policy_free(struct proxy_policy *p);
/** Parse a mailbox's list into p (unparsable entries are skipped). */
void proxy_policy_mailbox(struct proxy_policy *p, char *const *targets,
                          size_t n);

/**
 * The checks of a proxy login before anything else happens, shared by
 * the POP3 and SMTP halves: the name `remote%target%mailbox`, the store,
 * the mailbox (exists, active, accepts proxy sessions) and its own target
 * list, parsed into *policy (its `login` must be pointed at the session's
 * copy of *login). MG_PASS: not a proxy login, the engine's own; MG_ACCEPT:
 * admitted; MG_TEMPFAIL or MG_PERMFAIL with *text_r for the client.
 */
/** The upstream connection for a login (both halves): ports 995 and 465
 * are implicit TLS, any other port needs STLS/STARTTLS; verified against
 * the system store plus `ca_file`. The caller sets spec->filter. */
void proxy_connect_spec(const struct proxy_state *st,
                        const struct proxy_login *login,
                        struct mg_connect_spec *spec);
/** A log line for a session: "conn N: …". */
void proxy_vlog(const struct proxy_state *st, uint64_t conn_id,
                enum mg_log_level level, const char *fmt, va_list ap);

enum mg_verdict proxy_admit(struct proxy_state *st, uint64_t conn_id,
                            const char *user, int default_port,
                            struct proxy_login *login,
                            struct proxy_policy *policy, const char **text_r);

/** The upstream's answers the relay needs. */
struct proxy_caps {
    bool stls, user, sasl_plain, uidl, top, pipelining, resp_codes;
    bool expire, login_delay, auth_resp_code;
};

/** Where a session is. */
enum proxy_phase {
    PX_CONNECT,  /* DNS, TCP, implicit TLS */
    PX_GREETING, /* the upstream's +OK */
    PX_CAPA1,    /* CAPA before STLS */
    PX_STLS,     /* STLS sent */
    PX_TLS,      /* the handshake */
    PX_CAPA2,    /* CAPA again over TLS */
    PX_USER,
    PX_PASS,
    PX_AUTH,  /* AUTH PLAIN */
    PX_UIDL,  /* the upstream's UIDL listing */
    PX_LIST,  /* its sizes (for record-ahead) */
    PX_RELAY, /* logged in: the client's commands */
};

/** What the relay waits for from the upstream. */
enum proxy_cmd {
    PC_NONE = 0,  /* a client command */
    PC_SINGLE,    /* a one-line reply */
    PC_RSET,      /* RSET: nothing is deleted any more */
    PC_MULTI,     /* a status line, then data when +OK */
    PC_RETR,      /* RETR: data recorded unless already stored */
    PC_DELE_RETR, /* the RETR before a DELE: recorded, not forwarded */
    PC_DELE,      /* the DELE after it */
    PC_QUIT,
    PC_PFWAIT, /* DELE or QUIT waits for a record-ahead commit */
};

/** One message being recorded: the client's (proxy_session.rec) or one
 * recorded ahead (proxy_prefetch.rec). Store callbacks name it by seq. */
struct proxy_rec {
    uint64_t seq; /* 0: none in flight */
    uint32_t msgno;
    struct mg_msg_writer *w;
    char *wbuf; /* pieces for the store */
    size_t wlen;
    uint64_t wsize;
    bool failed; /* the store refused a piece: commit fails */
    bool wait;   /* msg_write said MG_AGAIN */
    bool commit; /* commit and index in flight */
    bool end;    /* the end waits for a piece the store refused */
    bool dedup;  /* the index entry goes with the message's commit */
    bool ahead;  /* recorded ahead of the client's RETR */
};

/** Record-ahead: the next message retrieved from the upstream and
 * recorded while the client is busy with the one before it. */
enum proxy_pf_state {
    PF_IDLE = 0,
    PF_READING, /* its RETR is sent, the reply in progress or queued */
    PF_READY,   /* in memory; its copy committing or durable (done) */
};

struct proxy_prefetch {
    enum proxy_pf_state state;
    uint32_t msgno;
    bool in_data;  /* past the status line */
    bool mid_line; /* inside a long line */
    bool unusable; /* -ERR, over the limit or not recorded: dropped */
    bool done;     /* its copy is durable */
    bool held;     /* complete; its commit waits to go with the next one */
    char *data;    /* the reply as the client gets it: status line, data
                    * lines, the "." added when it is sent */
    size_t len, cap;
    struct proxy_rec rec;
};

struct proxy_session {
    struct proxy_session *next; /* all sessions (global) */
    struct proxy_state *st;
    uint64_t id;        /* the client conn's id */
    uint64_t call_id;   /* the pop3.login run while logging in */
    struct mg_conn *c;  /* the client, once taken over */
    struct mg_conn *up; /* the upstream */
    struct proxy_login login;
    struct proxy_policy policy;
    char peer[64];     /* the client's address */
    char peer_tls[96]; /* its TLS version and cipher */
    enum proxy_phase phase;
    unsigned depth;  /* entry points on the stack */
    bool connecting; /* connect() will call back */
    bool dead;       /* to be freed at the last leave */
    bool closing;    /* SIGTERM: close after the current command */
    bool blocked;    /* client output over the high-water mark */
    char *pass;      /* the client's password until sent upstream */
    size_t passlen;
    char authzid[256];
    struct proxy_caps caps;
    char **uidls; /* upstream UIDL per message number (index n - 1) */
    uint32_t nuidls;
    bool have_uidls;
    uint32_t *sizes; /* LIST sizes (nuidls), when prefetching */
    bool have_sizes;
    bool *gone;      /* marked deleted in this session (nuidls) */
    const char *why; /* the last failure, for logs and the client */
    char whybuf[300];

    /* the relay */
    enum proxy_cmd cmd;
    bool in_data;   /* reading the data lines of a multi-line reply */
    bool mid_line;  /* … inside a long line */
    bool up_busy;   /* the client's command waits for an upstream reply */
    bool top_whole; /* TOP n with a line count meaning the whole message */
    char pf_then;   /* PC_PFWAIT: 'D' (DELE msgno) or 'Q' (QUIT) */
    uint32_t msgno; /* RETR/DELE argument */
    bool record;    /* this RETR is being recorded (in rec) */
    struct proxy_rec rec;
    struct proxy_prefetch pf[PROXY_AHEAD];
    uint32_t pf_last; /* the last message read ahead (0: none yet) */
    /* the upstream's commands awaiting replies, in the order sent (POP3
     * answers in order): a slot of pf, or PROXY_UPQ_CLIENT (up_busy) */
    uint8_t upq[PROXY_AHEAD + 1];
    uint8_t nupq;
    uint64_t rec_seq;
    size_t dpend; /* upstream data bytes to consume before the next read */
    const char *up_gone; /* why the upstream connection ended */
    char *obuf;          /* output for the client, batched */
    size_t olen;

    /* the hook reply while logging in */
    char reply[PROXY_STATUS_MAX];
    const char *reply_lines[1];

    /* per-session figures for the log */
    unsigned retrieved, recorded, deduped, deleted, failures, ahead;
};

/* ------------------------------------------------------ proxy_pop3.c */

/** The pop3.login handler (registered by proxy_module.c). */
enum mg_verdict proxy_pop3_login(struct mg_hook_call *call, void *arg);

/* -------------------------------------------------- proxy_upstream.c */

/** Connect and log in upstream; the session's hook run is resumed from
 * there. MG_ERROR (nothing started) with *why. */
int proxy_upstream_start(struct proxy_session *s, const char **why);
/** An upstream line: MG_OK, MG_AGAIN (none yet) or MG_ERROR (a protocol
 * violation, s->why says which). `status` lines are bounded and must be
 * "+OK…"/"-ERR…". */
int proxy_upstream_line(struct proxy_session *s, const char **line, size_t *len,
                        bool status);
/** Upstream events during the login (before the relay runs). */
void proxy_upstream_login_event(struct proxy_session *s, enum mg_conn_event ev);
/** The next piece of a multi-line reply's data: a whole line without its
 * end (*eol true), or at most PROXY_DATA_LINE bytes of a longer one
 * (*eol false; the rest follows). Bare CR and NUL are refused (MG_ERROR
 * with s->why); MG_AGAIN: nothing yet. Valid until the next read. */
int proxy_upstream_piece(struct proxy_session *s, const char **data,
                         size_t *len, bool *eol);
/** Send a command upstream (CRLF added) and arm the reply timeout. */
void proxy_upstream_send(struct proxy_session *s, const char *fmt, ...)
    MG_PRINTF(2, 3);

/* ---------------------------------------------------- proxy_record.c */

/** Start recording message n into r (the envelope and the trace field).
 * MG_ERROR with s->why when the store refuses. */
int proxy_record_begin(struct proxy_session *s, struct proxy_rec *r,
                       uint32_t n);
/** Add an unstuffed piece of a line, with CRLF after it when `eol`.
 * MG_AGAIN: the store is behind, the piece was taken: wait for
 * proxy_relay_resume(). */
int proxy_record_piece(struct proxy_session *s, struct proxy_rec *r,
                       const char *data, size_t len, bool eol);
/** Hand the pieces still buffered to the store (encrypted there), without
 * committing: a commit held back then starts at once. */
void proxy_record_settle(struct proxy_session *s, struct proxy_rec *r);
/** The message is complete: flush, commit, index; proxy_relay_recorded()
 * follows. */
void proxy_record_end(struct proxy_session *s, struct proxy_rec *r);
void proxy_record_abort(struct proxy_session *s, struct proxy_rec *r);
void proxy_record_free(struct proxy_rec *r);
/** The upstream message numbered n is already in the mailbox. */
bool proxy_record_have(struct proxy_session *s, uint32_t n);

/* ------------------------------------------------ proxy_pop3_relay.c */

/** Upstream events once the relay runs. */
void proxy_relay_upstream_event(struct proxy_session *s, enum mg_conn_event ev);
/** Go on after a wait (store, drain). */
void proxy_relay_resume(struct proxy_session *s);
/** Recording r finished: ok, or failed with s->why. */
void proxy_relay_recorded(struct proxy_session *s, struct proxy_rec *r,
                          bool ok);

/* ------------------------------------------------------ proxy_pop3.c */

/** Entry points hold the session; it is freed at the last leave once dead. */
void proxy_enter(struct proxy_session *s);
void proxy_leave(struct proxy_session *s);
/** The login is done: take the session over (MG_ACCEPT) or refuse. */
void proxy_login_done(struct proxy_session *s, enum mg_verdict v,
                      const char *ecode, const char *fmt, ...) MG_PRINTF(4, 5);
/** The session is looked up by its client conn id (async completions). */
struct proxy_session *proxy_session_find(uint64_t id);
void proxy_session_log(struct proxy_session *s, enum mg_log_level level,
                       const char *fmt, ...) MG_PRINTF(3, 4);
void proxy_wipe(void *p, size_t n);

#endif /* MG_PROXY_H */
