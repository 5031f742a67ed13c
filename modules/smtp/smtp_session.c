/*
 * modules/smtp/smtp_session.c -- the state machine of one SMTP session.
 *
 * One explicit state (enter_state() logs each change) and a command table.
 * Everything asynchronous -- suspended hook runs, store write back-pressure,
 * the commit -- sets `wait`; while it is set no input is processed
 * (pipelined commands stay buffered) and the completion finds the session
 * by its conn id. The session is freed in exactly one place
 * (smtp_session_free), either from a final conn event or at the end of
 * the entry point that closed it (smtp_leave), never under a caller.
 *
 * Memory per session is bounded: message data passes through one buffer
 * of SMTP_OUT_MAX bytes on its way to the store and the hooks.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

static const char *const smtp_state_names[] = {
    "GREET", "REFUSED", "INIT",  "READY", "MAIL", "RCPT",
    "DATA",  "BDAT",    "CHUNK", "END",   "AUTH", "TLS",
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

static const struct mg_core_api *smtp_api;

static void smtp_process(struct smtp_session *s);
static void smtp_session_free(struct smtp_session *s);
static void smtp_reply(struct smtp_session *s, int code, const char *ecode,
                       const char *fmt, ...) MG_PRINTF(4, 5);

/* ================================================================ util */

static void *
smtp_alloc(size_t n)
{
    void *p = calloc(1, n);

    if (p == NULL)
        abort();
    return p;
}

static char *
smtp_strndup(const char *s, size_t n)
{
    char *p = smtp_alloc(n + 1);

    memcpy(p, s, n);
    return p;
}

static char *
smtp_strdup(const char *s)
{
    return smtp_strndup(s, strlen(s));
}

/* Secrets never linger in freed memory. */
static void
smtp_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0)
        *v++ = 0;
}

/* A reply text from client-supplied bytes: printable ASCII only. */
static void
smtp_clean(char *dst, size_t size, const char *src, size_t len)
{
    size_t i;

    for (i = 0; i < len && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}

/* A growable string for the trace fields. */
struct smtp_str {
    char *p;
    size_t len, cap;
};

static void
smtp_str_add(struct smtp_str *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap == 0 ? 1024 : b->cap;
        char *p;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL)
            abort();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Append a token to a header field, folding before it when the line would
 * pass 78 characters. */
static void
smtp_str_token(struct smtp_str *b, size_t *col, const char *tok)
{
    size_t n = strlen(tok);

    if (*col + 1 + n > 78 && *col > 1) {
        smtp_str_add(b, "\r\n\t", 3);
        *col = 1;
    } else {
        smtp_str_add(b, " ", 1);
        *col += 1;
    }
    smtp_str_add(b, tok, n);
    *col += n;
}

/* Standard base64 (RFC 4648) into out; -1 on bad input or overflow. */
static long
smtp_b64_decode(const char *in, size_t len, char *out, size_t outsz)
{
    uint32_t acc = 0;
    size_t o = 0, i, pad = 0;
    unsigned bits = 0;

    if (len % 4 != 0)
        return -1;
    for (i = 0; i < len; i++) {
        int v;
        char ch = in[i];

        if (ch >= 'A' && ch <= 'Z')
            v = ch - 'A';
        else if (ch >= 'a' && ch <= 'z')
            v = ch - 'a' + 26;
        else if (ch >= '0' && ch <= '9')
            v = ch - '0' + 52;
        else if (ch == '+')
            v = 62;
        else if (ch == '/')
            v = 63;
        else if (ch == '=' && i >= len - 2) {
            pad++;
            continue;
        } else
            return -1;
        if (pad > 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= outsz)
                return -1;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    return (long)o;
}

/* Is the peer inside a network "addr" or "addr/prefix"? The module has no
 * access to the core's netaddr, so this is its own small matcher. */
static bool
smtp_net_match(const char *net, const struct sockaddr_storage *sa)
{
    unsigned char want[16], have[16];
    char buf[64];
    const char *slash = strchr(net, '/');
    size_t alen = slash != NULL ? (size_t)(slash - net) : strlen(net);
    int fam, maxbits, bits;
    size_t nbytes;

    if (alen == 0 || alen >= sizeof(buf))
        return false;
    memcpy(buf, net, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, want) == 1) {
        fam = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, buf, want) == 1) {
        fam = AF_INET6;
        maxbits = 128;
    } else {
        return false;
    }
    bits = maxbits;
    if (slash != NULL) {
        char *end;
        long v = strtol(slash + 1, &end, 10);

        if (slash[1] == '\0' || *end != '\0' || v < 0 || v > maxbits)
            return false;
        bits = (int)v;
    }
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        if (fam != AF_INET)
            return false;
        memcpy(have, &in->sin_addr, 4);
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

        if (fam == AF_INET) {
            if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
                return false;
            memcpy(have, &in6->sin6_addr.s6_addr[12], 4);
        } else {
            memcpy(have, &in6->sin6_addr, 16);
        }
    } else {
        return false;
    }
    nbytes = (size_t)bits / 8;
    if (memcmp(want, have, nbytes) != 0)
        return false;
    if (bits % 8 != 0) {
        unsigned char mask = (unsigned char)(0xff << (8 - bits % 8));

        if ((want[nbytes] & mask) != (have[nbytes] & mask))
            return false;
    }
    return true;
}

/* RFC 5322 date-time in UTC (locale independent). */
static void
smtp_date(char *out, size_t size)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
                                       "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
                                         "May", "Jun", "Jul", "Aug",
                                         "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    snprintf(out, size, "%s, %d %s %d %02d:%02d:%02d +0000",
             days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ============================================================ sessions */

static struct smtp_session *
smtp_find(struct smtp_state *st, uint64_t conn_id)
{
    struct smtp_session *s;

    for (s = st->buckets[conn_id % SMTP_BUCKETS]; s != NULL; s = s->next) {
        if (s->id == conn_id)
            return s;
    }
    return NULL;
}

/* A completion's session, or NULL when it (or its conn) is gone. */
static struct smtp_session *
smtp_lookup(struct smtp_state *st, uint64_t conn_id)
{
    struct smtp_session *s = smtp_find(st, conn_id);

    if (s == NULL || s->closed || smtp_api->conn->find(conn_id) == NULL)
        return NULL;
    return s;
}

static void smtp_log(struct smtp_session *s, enum mg_log_level level,
                     const char *fmt, ...) MG_PRINTF(3, 4);

static void
smtp_log(struct smtp_session *s, enum mg_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (s->closed)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    smtp_api->conn->log(s->c, level, "%s", buf);
}

static void
smtp_enter_state(struct smtp_session *s, enum smtp_sstate state)
{
    if (s->state == state)
        return;
    smtp_log(s, MG_LOG_DEBUG, "state %s -> %s", smtp_state_names[s->state],
             smtp_state_names[state]);
    s->state = state;
}

/* Idle timeout for the phase; the session limit counts from the start. */
static void
smtp_set_timeouts(struct smtp_session *s, bool data)
{
    uint64_t total = 0;

    if (s->closed || s->data_timeouts == data)
        return;
    s->data_timeouts = data;
    if (s->st->session_ms > 0) {
        uint64_t used = smtp_api->now_ms() - s->started_ms;

        total = used < s->st->session_ms ? s->st->session_ms - used : 1;
    }
    smtp_api->conn->set_timeouts(s->c, data ? s->st->data_ms : s->st->idle_ms,
                                 total);
}

/* Close the conn; the session is freed when its entry point returns. */
static void smtp_data_end_error(struct smtp_session *s);

static void
smtp_close(struct smtp_session *s)
{
    if (s->closed)
        return;
    /* handlers see the session while its conn still exists */
    smtp_data_end_error(s);
    s->closed = true;
    /* closed when the entry point returns, after the session is freed:
     * the conn's close may release the generation, sessions included */
    s->close_c = s->c;
    s->c = NULL;
}

static void
smtp_enter(struct smtp_session *s)
{
    s->depth++;
}

static void
smtp_leave(struct smtp_session *s)
{
    if (--s->depth == 0 && s->closed) {
        struct mg_conn *c = s->close_c;

        smtp_session_free(s);
        if (c != NULL)
            smtp_api->conn->close(c);
    }
}

/* ------------------------------------------------- data phase deadline */

/* data_timeout restarts with every byte, so a client that sends one byte
 * just before it expires would hold the session until max_session_time:
 * the whole data phase of a message has a deadline of its own. */
static void
smtp_data_deadline(void *arg)
{
    struct smtp_session *s = arg;

    s->data_timer = 0;
    if (s->closed)
        return;
    smtp_enter(s);
    smtp_log(s, MG_LOG_INFO,
             "message data not complete within data_total_timeout "
             "(%" PRIu64 " bytes); closing",
             s->msg_bytes);
    /* the pending copies are discarded with the transaction */
    smtp_reply(s, 421, "4.4.2",
               "%s Error: timeout exceeded for the message data",
               s->st->hostname);
    smtp_close(s);
    smtp_leave(s);
}

/* The data phase starts (DATA's 354, the first BDAT chunk). */
static void
smtp_data_deadline_start(struct smtp_session *s)
{
    if (s->data_timer == 0 && s->st->data_total_ms > 0)
        s->data_timer = smtp_api->timer_add(s->st->m, s->st->data_total_ms,
                                            smtp_data_deadline, s);
}

/* The client sent all of the data (or the transaction is over). */
static void
smtp_data_deadline_stop(struct smtp_session *s)
{
    if (s->data_timer != 0) {
        smtp_api->timer_cancel(s->data_timer);
        s->data_timer = 0;
    }
}

/* ============================================================= replies */

static void
smtp_reply(struct smtp_session *s, int code, const char *ecode, const char *fmt,
           ...)
{
    char text[SMTP_TEXT_MAX];
    const char *lines[1] = {text};
    struct mg_reply r = {
        .code = code, .ecode = ecode, .nlines = 1, .lines = lines};
    va_list ap;

    if (s->closed)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    smtp_api->conn->write_reply(s->c, &r);
}

static void
smtp_reply_saved(struct smtp_session *s, const struct smtp_saved *r)
{
    struct mg_reply rep = {.code = r->code,
                           .ecode = r->ecode,
                           .nlines = r->nlines,
                           .lines = (const char *const *)r->lines};

    if (s->closed || r->nlines == 0)
        return;
    smtp_api->conn->write_reply(s->c, &rep);
}

static void
smtp_saved_clear(struct smtp_saved *r)
{
    for (size_t i = 0; i < r->nlines; i++)
        free(r->lines[i]);
    free(r->lines);
    free(r->ecode);
    memset(r, 0, sizeof(*r));
}

/* Keep a reply: code, enhanced code (or NULL), `nlines` lines of text
 * (copied with smtp_clean: the reply may come from a peer). */
static void
smtp_save_lines(struct smtp_saved *r, int code, const char *ecode,
                size_t nlines, const char *const *lines)
{
    smtp_saved_clear(r);
    r->code = code;
    r->ecode = ecode != NULL && ecode[0] != '\0' ? smtp_strdup(ecode) : NULL;
    r->lines = smtp_alloc((nlines + 1) * sizeof(*r->lines));
    for (size_t i = 0; i < nlines; i++) {
        size_t n = strlen(lines[i]);

        r->lines[i] = smtp_alloc(n + 1);
        smtp_clean(r->lines[i], n + 1, lines[i], n);
    }
    r->nlines = nlines;
}

static void
smtp_save(struct smtp_saved *r, int code, const char *ecode, const char *text)
{
    smtp_save_lines(r, code, ecode, 1, &text);
}

/* An error the client caused; false when the session was closed for too
 * many of them. */
static bool
smtp_error(struct smtp_session *s, int code, const char *ecode,
           const char *text)
{
    smtp_reply(s, code, ecode, "%s", text);
    if (++s->errors >= s->st->max_errors) {
        smtp_log(s, MG_LOG_INFO, "too many errors (%u); closing", s->errors);
        smtp_reply(s, 421, "4.7.0", "%s Too many errors, closing",
                   s->st->hostname);
        smtp_close(s);
        return false;
    }
    return true;
}

/* Does a handler's reply fit the verdict? */
static bool
smtp_reply_fits(const struct mg_reply *r, enum mg_verdict v, int want)
{
    if (r->code == 0 || r->nlines == 0 || r->lines == NULL ||
        r->nlines > SMTP_REPLY_LINES_MAX)
        return false;
    for (size_t i = 0; i < r->nlines; i++) {
        if (r->lines[i] == NULL ||
            strnlen(r->lines[i], SMTP_REPLY_LINE_MAX + 1) > SMTP_REPLY_LINE_MAX)
            return false;
    }
    if (want != 0)
        return r->code == want;
    switch (v) {
    case MG_ACCEPT:
    case MG_PASS:
        return r->code >= 200 && r->code < 400;
    case MG_TEMPFAIL:
        return r->code >= 400 && r->code < 500;
    case MG_PERMFAIL:
        return r->code >= 500 && r->code < 600;
    default:
        return false;
    }
}

/* The handler's reply when it has one that fits, else the default. */
static void
smtp_reply_hook(struct smtp_session *s, enum mg_verdict v, int want, int code,
                const char *ecode, const char *text)
{
    const struct mg_reply *r = &s->call.reply;

    if (r->code != 0) {
        if (smtp_reply_fits(r, v, want) &&
            smtp_api->conn->write_reply(s->c, r) == MG_OK)
            return;
        smtp_log(s, MG_LOG_WARNING,
                 "hook %s: the handler's reply %d does not fit its verdict; "
                 "using the default",
                 s->call.hook, r->code);
    }
    smtp_reply(s, code, ecode, "%s", text);
}

/* Keep a hook's refusal for a later reply (the data phase goes on): every
 * line of the handler's reply, as the other phases write it at once. */
static void
smtp_save_hook(struct smtp_session *s, enum mg_verdict v,
               struct smtp_saved *out)
{
    const struct mg_reply *r = &s->call.reply;

    if (smtp_reply_fits(r, v, 0)) {
        smtp_save_lines(out, r->code, r->ecode, r->nlines, r->lines);
        return;
    }
    if (r->code != 0)
        smtp_log(s, MG_LOG_WARNING,
                 "hook %s: the handler's reply %d does not fit its verdict; "
                 "using the default",
                 s->call.hook, r->code);
    if (v == MG_TEMPFAIL)
        smtp_save(out, 451, "4.3.0", "Temporary failure, try again later");
    else
        smtp_save(out, 550, "5.7.1", "Message refused");
}

/* =============================================================== hooks */

static void
smtp_view_update(struct smtp_session *s)
{
    struct mg_smtp_session *v = &s->view;

    if (s->c == NULL)
        return;
    v->conn_id = s->id;
    v->peer = smtp_api->conn->peer(s->c);
    v->listener_tls = s->listener_tls;
    v->helo = s->helo;
    v->esmtp = s->esmtp;
    v->auth_user = s->auth_user;
    v->transaction = s->sender != NULL ? s->ntxn : 0;
    v->sender = s->sender;
    v->nrcpts = s->nrcpts;
    v->rcpts = (const char *const *)s->rcpts;
    v->rcpt_mailboxes = (const char *const *)s->rcpt_mbox;
}

static void
smtp_hook_done(struct mg_hook_call *call, enum mg_verdict v, void *arg)
{
    struct smtp_state *st = arg;
    struct smtp_session *s = smtp_lookup(st, call->conn_id);
    smtp_cont_fn cont;

    if (s == NULL || s->wait != SMTP_WAIT_HOOK || &s->call != call)
        return;
    smtp_enter(s);
    s->wait = SMTP_WAIT_NONE;
    cont = s->cont;
    s->cont = NULL;
    cont(s, v);
    smtp_process(s);
    smtp_leave(s);
}

/* Run a hook; the continuation gets the verdict now or after a suspend. */
static void
smtp_hook(struct smtp_session *s, const char *hook, void *data,
          smtp_cont_fn cont)
{
    enum mg_verdict v;

    smtp_view_update(s);
    memset(&s->call, 0, sizeof(s->call));
    s->call.hook = hook;
    s->call.conn_id = s->id;
    s->call.data = data;
    if (!smtp_api->hook_has(hook)) {
        cont(s, MG_PASS);
        return;
    }
    v = smtp_api->hook_run(&s->call, smtp_hook_done, s->st);
    if (v == MG_SUSPEND) {
        s->wait = SMTP_WAIT_HOOK;
        s->cont = cont;
        return;
    }
    cont(s, v);
}

/* An informational hook: handlers may not suspend (a run that does is
 * ended at once, so that `call` never outlives this function). */
static enum mg_verdict
smtp_hook_info(struct smtp_session *s, const char *hook, void *data)
{
    enum mg_verdict v;

    if (!smtp_api->hook_has(hook))
        return MG_PASS;
    if (s->c != NULL)
        smtp_view_update(s);
    memset(&s->call, 0, sizeof(s->call));
    s->call.hook = hook;
    s->call.conn_id = s->id;
    s->call.data = data;
    v = smtp_api->hook_run(&s->call, NULL, NULL);
    if (v == MG_SUSPEND) {
        smtp_api->hook_resume(s->call.id, MG_TEMPFAIL, NULL);
        smtp_api->log(s->st->m, MG_LOG_WARNING,
                      "hook %s: a handler suspended an informational run; "
                      "ended",
                      hook);
    }
    return v;
}

/* ========================================================= transaction */

static void
smtp_txn_free(struct smtp_session *s)
{
    size_t i;

    for (i = 0; i < s->nrcpts; i++) {
        free(s->rcpts[i]);
        free(s->rcpt_mbox[i]);
    }
    free(s->rcpts);
    free(s->rcpt_mbox);
    free(s->mboxes);
    free(s->mbox_rcpts);
    s->rcpts = NULL;
    s->rcpt_mbox = NULL;
    s->mboxes = NULL;
    s->mbox_rcpts = NULL;
    s->nrcpts = s->rcap = s->nmboxes = 0;
    smtp_data_deadline_stop(s);
    free(s->sender);
    s->sender = NULL;
    if (s->writer != NULL) {
        smtp_api->store->msg_free(s->writer);
        s->writer = NULL;
    }
    free(s->trace);
    s->trace = NULL;
    s->write_failed = false;
    s->bdat = false;
    s->data_begun = false;
    s->txn_failed = false;
    s->msg_bytes = s->stored_bytes = 0;
    s->nchunks = 0;
    s->pstage = SMTP_PIECE_NONE;
    s->fin = SMTP_FIN_NONE;
    s->have_local = false;
}

/* A failed or abandoned data phase: smtp.data.end with MG_ERROR, so that
 * handlers can let go of what they hold (the verdict is ignored). */
static void
smtp_data_end_error(struct smtp_session *s)
{
    if (!s->data_begun)
        return;
    s->data_begun = false;
    memset(&s->h.end, 0, sizeof(s->h.end));
    s->h.end.s = &s->view;
    s->h.end.status = MG_ERROR;
    s->h.end.size = s->msg_bytes;
    smtp_hook_info(s, "smtp.data.end", &s->h.end);
}

/* Back to READY (or INIT before EHLO), the transaction forgotten. */
static void
smtp_txn_reset(struct smtp_session *s)
{
    smtp_data_end_error(s);
    smtp_txn_free(s);
    smtp_set_timeouts(s, false);
    if (s->state != SMTP_ST_INIT && s->state != SMTP_ST_GREET &&
        s->state != SMTP_ST_REFUSED)
        smtp_enter_state(s, s->helo != NULL ? SMTP_ST_READY : SMTP_ST_INIT);
}

/* The transaction failed inside the data: `r` (moved into s->fail; it
 * may be s->fail itself) is the reply once the data is read. */
static void
smtp_txn_fail_saved(struct smtp_session *s, struct smtp_saved *r)
{
    if (s->txn_failed) {
        if (r != &s->fail)
            smtp_saved_clear(r); /* the first failure is the answer */
        return;
    }
    s->txn_failed = true;
    if (r != &s->fail) {
        smtp_saved_clear(&s->fail);
        s->fail = *r;
        memset(r, 0, sizeof(*r));
    }
    if (s->writer != NULL) {
        /* never store part of a refused message */
        smtp_api->store->msg_free(s->writer);
        s->writer = NULL;
    }
}

static void
smtp_txn_fail(struct smtp_session *s, int code, const char *ecode,
              const char *text)
{
    struct smtp_saved r = {0};

    if (s->txn_failed)
        return;
    smtp_save(&r, code, ecode, text);
    smtp_txn_fail_saved(s, &r);
}

static void
smtp_rcpt_add(struct smtp_session *s, const char *path, const char *mbox)
{
    size_t i;

    if (s->nrcpts == s->rcap) {
        size_t cap = s->rcap == 0 ? 4 : s->rcap * 2;

        s->rcpts = realloc(s->rcpts, cap * sizeof(*s->rcpts));
        s->rcpt_mbox = realloc(s->rcpt_mbox, cap * sizeof(*s->rcpt_mbox));
        s->mboxes = realloc(s->mboxes, cap * sizeof(*s->mboxes));
        s->mbox_rcpts = realloc(s->mbox_rcpts, cap * sizeof(*s->mbox_rcpts));
        if (s->rcpts == NULL || s->rcpt_mbox == NULL || s->mboxes == NULL ||
            s->mbox_rcpts == NULL)
            abort();
        s->rcap = cap;
    }
    s->rcpts[s->nrcpts] = smtp_strdup(path);
    s->rcpt_mbox[s->nrcpts] = mbox != NULL ? smtp_strdup(mbox) : NULL;
    if (mbox != NULL) {
        for (i = 0; i < s->nmboxes; i++) {
            if (strcmp(s->mboxes[i], mbox) == 0)
                break;
        }
        if (i == s->nmboxes) {
            s->mboxes[s->nmboxes] = s->rcpt_mbox[s->nrcpts];
            s->mbox_rcpts[s->nmboxes] = s->rcpts[s->nrcpts];
            s->nmboxes++;
        }
    }
    s->nrcpts++;
    smtp_enter_state(s, SMTP_ST_RCPT);
}

/* ======================================================== the data path */

static void
smtp_store_resume(uint64_t conn_id, void *arg)
{
    struct smtp_state *st = arg;
    struct smtp_session *s = smtp_lookup(st, conn_id);

    if (s == NULL || s->wait != SMTP_WAIT_STORE)
        return;
    smtp_enter(s);
    s->wait = SMTP_WAIT_NONE;
    if (s->paused && !s->blocked) {
        s->paused = false;
        smtp_api->conn->pause_read(s->c, false);
    }
    smtp_process(s);
    smtp_leave(s);
}

static void
smtp_tee_cont(struct smtp_session *s, enum mg_verdict v)
{
    if (v == MG_TEMPFAIL || v == MG_PERMFAIL) {
        struct smtp_saved r = {0};

        smtp_save_hook(s, v, &r);
        smtp_txn_fail_saved(s, &r);
    }
}

/* Start a piece through smtp.data.tee (when `tee`) and the store. */
static void
smtp_piece_set(struct smtp_session *s, const char *data, size_t len, bool tee,
               bool last)
{
    s->pdata = data;
    s->plen = len;
    s->ptee = tee;
    s->plast = last;
    s->pstage = SMTP_PIECE_TEE;
}

/* Push the current piece on; false while it waits (hook or store). */
static bool
smtp_piece_push(struct smtp_session *s)
{
    if (s->pstage == SMTP_PIECE_TEE) {
        s->pstage = SMTP_PIECE_WRITE;
        if (s->ptee && !s->txn_failed && smtp_api->hook_has("smtp.data.tee")) {
            memset(&s->h.tee, 0, sizeof(s->h.tee));
            s->h.tee.s = &s->view;
            s->h.tee.data = s->pdata;
            s->h.tee.len = s->plen;
            s->h.tee.offset = s->poffset;
            s->h.tee.last = s->plast;
            s->h.tee.bdat = s->bdat;
            smtp_hook(s, "smtp.data.tee", &s->h.tee, smtp_tee_cont);
            if (s->wait != SMTP_WAIT_NONE || s->closed)
                return false;
        }
    }
    if (s->pstage == SMTP_PIECE_WRITE) {
        if (s->writer != NULL && !s->write_failed && !s->txn_failed &&
            s->plen > 0) {
            int r = smtp_api->store->msg_write(s->writer, s->pdata, s->plen,
                                               smtp_store_resume, s->st);

            if (r == MG_AGAIN) {
                s->wait = SMTP_WAIT_STORE;
                if (!s->paused) {
                    s->paused = true;
                    smtp_api->conn->pause_read(s->c, true);
                }
                return false;
            }
            if (r == MG_OK)
                s->stored_bytes += s->plen;
            else
                s->write_failed = true; /* the commit says why */
        }
        if (s->ptee)
            s->poffset += s->plen;
        s->pstage = SMTP_PIECE_NONE;
    }
    return true;
}

/* The message went over the limit: refuse it, after all of its data. */
static void
smtp_size_check(struct smtp_session *s)
{
    if (s->msg_bytes > s->st->max_message_size)
        smtp_txn_fail(s, 552, "5.3.4", "Message size exceeds fixed maximum");
}

/* The trace fields, written before the message (not tee'd, not counted). */
static void
smtp_trace(struct smtp_session *s)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    struct smtp_str b = {0};
    char tok[SMTP_PATH_MAX + 300], date[64], helo[300], addr[128];
    size_t col, i;
    const char *proto;

    smtp_str_add(&b, "Return-Path: <", 14);
    smtp_str_add(&b, s->sender, strlen(s->sender));
    smtp_str_add(&b, ">\r\n", 3);

    smtp_clean(helo, sizeof(helo), s->helo, strlen(s->helo));
    smtp_clean(addr, sizeof(addr), p->addr, strlen(p->addr));
    smtp_str_add(&b, "Received:", 9);
    col = 9;
    snprintf(tok, sizeof(tok), "from %s", helo);
    smtp_str_token(&b, &col, tok);
    snprintf(tok, sizeof(tok), "(%s%s])",
             strchr(addr, ':') != NULL ? "[IPv6:" : "[", addr);
    smtp_str_token(&b, &col, tok);
    snprintf(tok, sizeof(tok), "by %s", s->st->hostname);
    smtp_str_token(&b, &col, tok);
    smtp_str_token(&b, &col, "(mailgate)");
    if (!s->esmtp)
        proto = p->tls ? "SMTPS" : "SMTP";
    else if (p->tls)
        proto = s->auth_user != NULL ? "ESMTPSA" : "ESMTPS";
    else
        proto = s->auth_user != NULL ? "ESMTPA" : "ESMTP";
    snprintf(tok, sizeof(tok), "with %s", proto);
    smtp_str_token(&b, &col, tok);
    if (p->tls) {
        char v[64], c[128];

        smtp_clean(v, sizeof(v), p->tls_version ? p->tls_version : "TLS",
                   strlen(p->tls_version ? p->tls_version : "TLS"));
        smtp_clean(c, sizeof(c), p->tls_cipher ? p->tls_cipher : "unknown",
                   strlen(p->tls_cipher ? p->tls_cipher : "unknown"));
        snprintf(tok, sizeof(tok), "(%s:%s)", v, c);
        smtp_str_token(&b, &col, tok);
    }
    snprintf(tok, sizeof(tok), "id %" PRIu64 ".%" PRIu64 "%s", s->id, s->ntxn,
             s->nmboxes == 1 ? "" : ";");
    smtp_str_token(&b, &col, tok);
    if (s->nmboxes == 1) {
        snprintf(tok, sizeof(tok), "for <%s>;", s->mbox_rcpts[0]);
        smtp_str_token(&b, &col, tok);
    }
    smtp_date(date, sizeof(date));
    smtp_str_token(&b, &col, date);
    smtp_str_add(&b, "\r\n", 2);

    if (s->nmboxes > 1) {
        smtp_str_add(&b, "X-Mailgate-Recipients:", 22);
        col = 22;
        for (i = 0; i < s->nmboxes; i++) {
            snprintf(tok, sizeof(tok), "<%s>%s", s->mbox_rcpts[i],
                     i + 1 < s->nmboxes ? "," : "");
            smtp_str_token(&b, &col, tok);
        }
        smtp_str_add(&b, "\r\n", 2);
    }
    free(s->trace);
    s->trace = b.p;
    smtp_piece_set(s, s->trace, b.len, false, false);
}

/* Start the local copies; false when the store refused (reply sent or
 * saved in `fail` for BDAT). */
static bool
smtp_begin_store(struct smtp_session *s)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    struct mg_envelope_info env = {0};
    char tls[256];
    const char *err = NULL;

    if (s->nmboxes == 0)
        return true;
    if (p->tls)
        snprintf(tls, sizeof(tls), "%s %s",
                 p->tls_version != NULL ? p->tls_version : "TLS",
                 p->tls_cipher != NULL ? p->tls_cipher : "unknown");
    env.source = "smtp";
    env.sender = s->sender;
    env.rcpts = s->mbox_rcpts;
    env.nrcpts = s->nmboxes;
    env.client = p->addr;
    env.tls = p->tls ? tls : NULL;
    s->writer =
        smtp_api->store->msg_begin(s->mboxes, s->nmboxes, &env, s->id, &err);
    if (s->writer == NULL) {
        bool full = err != NULL && (strstr(err, "full") != NULL ||
                                    strstr(err, "space") != NULL ||
                                    strstr(err, "reserve") != NULL);

        smtp_log(s, MG_LOG_WARNING, "cannot store a message: %s",
                 err != NULL ? err : "unknown error");
        if (full)
            smtp_save(&s->fail, 452, "4.3.1",
                      "Insufficient system storage, try again later");
        else
            smtp_save(&s->fail, 451, "4.3.0",
                      "Temporary failure storing the message, try again "
                      "later");
        return false;
    }
    s->write_failed = false;
    if (s->obuf == NULL)
        s->obuf = smtp_alloc(SMTP_OUT_MAX);
    smtp_trace(s);
    return true;
}

/* ---------------------------------------------------- end of a message */

static void smtp_finish(struct smtp_session *s);

static void
smtp_commit_done(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct smtp_state *st = arg;
    struct smtp_session *s = smtp_lookup(st, conn_id);

    if (s == NULL || s->wait != SMTP_WAIT_COMMIT)
        return;
    smtp_enter(s);
    s->wait = SMTP_WAIT_NONE;
    s->local.status = res->status;
    s->local.temporary = res->temporary;
    snprintf(s->local_error, sizeof(s->local_error), "%s",
             res->error != NULL ? res->error : "");
    s->local.error = res->error != NULL ? s->local_error : NULL;
    s->have_local = true;
    s->fin = SMTP_FIN_HOOK;
    smtp_process(s);
    smtp_leave(s);
}

/* The final reply was sent: the transaction is over. */
static void
smtp_finish_done(struct smtp_session *s)
{
    s->data_begun = false; /* data.end has run */
    smtp_txn_reset(s);
}

/* The local copies are durable: tell message.stored and the log. */
static const char *
smtp_delivered(struct smtp_session *s, char *first, size_t firstsz)
{
    const struct mg_store_api *sa = smtp_api->store;
    bool ids = sa->size >=
                   offsetof(struct mg_store_api, msg_id) + sizeof(sa->msg_id) &&
               sa->msg_id != NULL;
    size_t i;

    snprintf(first, firstsz, "%" PRIu64 ".%" PRIu64, s->id, s->ntxn);
    for (i = 0; ids && i < s->nmboxes; i++) {
        char uidl[40];
        uint64_t msg_id;

        if (sa->msg_id(s->writer, i, &msg_id, uidl) != MG_OK)
            break;
        if (i == 0)
            snprintf(first, firstsz, "%s", uidl);
        memset(&s->h.stored, 0, sizeof(s->h.stored));
        s->h.stored.mailbox_id = s->mboxes[i];
        s->h.stored.msg_id = msg_id;
        s->h.stored.size = s->stored_bytes;
        s->h.stored.source = "smtp";
        smtp_hook_info(s, "message.stored", &s->h.stored);
    }
    if (s->st->log_addresses) {
        char from[SMTP_PATH_MAX + 1];

        smtp_clean(from, sizeof(from), s->sender, strlen(s->sender));
        smtp_log(s, MG_LOG_INFO,
                 "delivered %" PRIu64 " bytes to %zu mailbox(es) (%s) "
                 "from <%s> to <%s>%s",
                 s->stored_bytes, s->nmboxes, first, from, s->mbox_rcpts[0],
                 s->nmboxes > 1 ? ", ..." : "");
    } else {
        smtp_log(s, MG_LOG_INFO,
                 "delivered %" PRIu64 " bytes to %zu mailbox(es) (%s)",
                 s->stored_bytes, s->nmboxes, first);
    }
    return first;
}

/* Recipients a hook handler accepted (no local mailbox behind them). */
static bool
smtp_has_handler_rcpts(const struct smtp_session *s)
{
    for (size_t i = 0; i < s->nrcpts; i++) {
        if (s->rcpt_mbox[i] == NULL)
            return true;
    }
    return false;
}

static void
smtp_end_cont(struct smtp_session *s, enum mg_verdict v)
{
    char first[64];
    bool stored = s->have_local && s->local.status == MG_OK;

    if (stored)
        smtp_delivered(s, first, sizeof(first));
    switch (v) {
    case MG_ACCEPT:
        smtp_reply_hook(s, v, 0, 250, "2.0.0", "Ok");
        break;
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        break;
    case MG_PERMFAIL:
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Message refused");
        break;
    default:
        if (smtp_has_handler_rcpts(s)) {
            /* a handler took recipients and nobody answered for them: a
             * 250 would lose their copy; the local copies (if any) are
             * stored and a retry duplicates them: duplicates, never loss */
            smtp_log(s, MG_LOG_WARNING,
                     "no handler answered for the message of recipients it "
                     "accepted; asking the client to retry");
            smtp_reply(s, 451, "4.3.0", "Temporary failure, try again later");
        } else if (stored) {
            smtp_reply(s, 250, "2.0.0", "Ok: queued as %s", first);
        } else if (s->have_local) {
            const char *e = s->local.error != NULL ? s->local.error : "";

            smtp_log(s, MG_LOG_WARNING, "storing the message failed: %s", e);
            if (strstr(e, "full") != NULL || strstr(e, "space") != NULL ||
                strstr(e, "reserve") != NULL)
                smtp_reply(s, 452, "4.3.1",
                           "Insufficient system storage, try again later");
            else
                smtp_reply(s, 451, "4.3.0",
                           "Temporary failure storing the message, try "
                           "again later");
        } else {
            /* recipients a handler accepted, and nobody answered */
            smtp_log(s, MG_LOG_WARNING,
                     "no handler answered for the message of recipients it "
                     "accepted");
            smtp_reply(s, 451, "4.3.0", "Temporary failure, try again later");
        }
        break;
    }
    smtp_finish_done(s);
}

static void
smtp_bdat_cont(struct smtp_session *s, enum mg_verdict v)
{
    if (v == MG_TEMPFAIL || v == MG_PERMFAIL) {
        struct smtp_saved r = {0};

        smtp_save_hook(s, v, &r);
        smtp_txn_fail_saved(s, &r);
        s->fin = SMTP_FIN_COMMIT; /* replies the failure */
        return;
    }
    if (!s->chunk_last) {
        if (v == MG_ACCEPT)
            smtp_reply_hook(s, v, 0, 250, "2.0.0", "Ok");
        else
            smtp_reply(s, 250, "2.0.0", "%" PRIu64 " octets received",
                       s->chunk_size);
        s->fin = SMTP_FIN_NONE;
        smtp_enter_state(s, SMTP_ST_BDAT_TXN);
        smtp_set_timeouts(s, false);
        return;
    }
    s->fin = SMTP_FIN_COMMIT;
}

/* Drive the steps after the data; returns when it waits or is done. */
static void
smtp_finish(struct smtp_session *s)
{
    while (!s->closed && s->wait == SMTP_WAIT_NONE && s->fin != SMTP_FIN_NONE) {
        if (s->pstage != SMTP_PIECE_NONE) {
            if (!smtp_piece_push(s))
                return;
            continue;
        }
        switch (s->fin) {
        case SMTP_FIN_TEE:
            s->fin = s->bdat ? SMTP_FIN_BDAT : SMTP_FIN_COMMIT;
            if (!s->txn_failed && smtp_api->hook_has("smtp.data.tee"))
                smtp_piece_set(s, "", 0, true, true);
            break;
        case SMTP_FIN_BDAT:
            if (s->txn_failed) {
                s->fin = SMTP_FIN_COMMIT;
                break;
            }
            memset(&s->h.bdat, 0, sizeof(s->h.bdat));
            s->h.bdat.s = &s->view;
            s->h.bdat.chunk_size = s->chunk_size;
            s->h.bdat.total = s->msg_bytes;
            s->h.bdat.chunk = s->nchunks;
            s->h.bdat.last = s->chunk_last;
            s->fin = SMTP_FIN_COMMIT; /* the continuation may change it */
            smtp_hook(s, "smtp.bdat", &s->h.bdat, smtp_bdat_cont);
            break;
        case SMTP_FIN_COMMIT:
            if (s->txn_failed) {
                smtp_reply_saved(s, &s->fail);
                s->fin = SMTP_FIN_NONE;
                smtp_txn_reset(s); /* data.end with MG_ERROR */
                return;
            }
            if (s->writer == NULL) {
                s->fin = SMTP_FIN_HOOK;
                break;
            }
            if (smtp_api->store->msg_commit(s->writer, true, smtp_commit_done,
                                            s->st) != MG_OK) {
                smtp_save(&s->fail, 451, "4.3.0",
                          "Temporary failure storing the message, try again "
                          "later");
                s->txn_failed = true;
                break;
            }
            s->wait = SMTP_WAIT_COMMIT;
            return;
        case SMTP_FIN_HOOK:
            s->fin = SMTP_FIN_NONE;
            memset(&s->h.end, 0, sizeof(s->h.end));
            s->h.end.s = &s->view;
            s->h.end.status = MG_OK;
            s->h.end.size = s->msg_bytes;
            s->h.end.local = s->have_local ? &s->local : NULL;
            s->data_begun = false; /* this run is the data.end */
            smtp_hook(s, "smtp.data.end", &s->h.end, smtp_end_cont);
            return;
        case SMTP_FIN_NONE:
            break;
        }
    }
}

/* DATA: feed input through the parser into pieces until the end. */
static bool
smtp_data_step(struct smtp_session *s)
{
    const char *in;
    size_t len, used, olen = 0;

    if (s->pstage != SMTP_PIECE_NONE)
        return smtp_piece_push(s);
    if (s->dstate.done) {
        smtp_data_deadline_stop(s);
        smtp_enter_state(s, SMTP_ST_END);
        s->fin = SMTP_FIN_TEE;
        smtp_finish(s);
        return s->state != SMTP_ST_END; /* else waiting */
    }
    smtp_api->conn->peek(s->c, &in, &len);
    if (len == 0)
        return false;
    if (len > SMTP_IN_CHUNK)
        len = SMTP_IN_CHUNK;
    used = smtp_data_feed(&s->dstate, in, len, s->obuf, &olen);
    smtp_api->conn->consume(s->c, used);
    s->msg_bytes += olen;
    smtp_size_check(s);
    if (olen > 0)
        smtp_piece_set(s, s->obuf, olen, true, false);
    return true;
}

/* BDAT: exactly chunk_size octets, byte for byte. */
static bool
smtp_chunk_step(struct smtp_session *s)
{
    const char *in;
    size_t len;

    if (s->pstage != SMTP_PIECE_NONE)
        return smtp_piece_push(s);
    if (s->chunk_left == 0) {
        if (s->chunk_discard || s->chunk_last)
            smtp_data_deadline_stop(s);
        if (s->chunk_discard) {
            s->chunk_discard = false;
            smtp_set_timeouts(s, false);
            if (s->state == SMTP_ST_CHUNK)
                smtp_enter_state(s, s->helo != NULL ? SMTP_ST_READY
                                                    : SMTP_ST_INIT);
            smtp_error(s, s->chunk_reply.code, s->chunk_reply.ecode,
                       s->chunk_reply.lines[0]);
            return !s->closed;
        }
        smtp_enter_state(s, SMTP_ST_END);
        s->fin = s->chunk_last ? SMTP_FIN_TEE : SMTP_FIN_BDAT;
        smtp_finish(s);
        return s->state != SMTP_ST_END; /* else waiting */
    }
    smtp_api->conn->peek(s->c, &in, &len);
    if (len == 0)
        return false;
    if (len > s->chunk_left)
        len = (size_t)s->chunk_left;
    if (len > SMTP_IN_CHUNK)
        len = SMTP_IN_CHUNK;
    if (!s->chunk_discard && !s->txn_failed) {
        memcpy(s->obuf, in, len);
        s->msg_bytes += len;
        smtp_size_check(s);
        if (!s->txn_failed)
            smtp_piece_set(s, s->obuf, len, true, false);
    }
    smtp_api->conn->consume(s->c, len);
    s->chunk_left -= len;
    return true;
}

/* ============================================================ commands */

static void
smtp_caps_build(struct smtp_session *s)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    size_t n = 0;

    snprintf(s->size_cap, sizeof(s->size_cap), "SIZE %" PRIu64,
             s->st->max_message_size);
    s->caps[n++] = "PIPELINING";
    s->caps[n++] = s->size_cap;
    s->caps[n++] = "8BITMIME";
    s->caps[n++] = "SMTPUTF8";
    s->caps[n++] = "ENHANCEDSTATUSCODES";
    s->caps[n++] = "CHUNKING";
    if (!p->tls && s->listener_tls == MG_TLS_STARTTLS)
        s->caps[n++] = "STARTTLS";
    s->auth_offered = (p->tls || s->plain_auth) &&
                      smtp_api->hook_has("smtp.auth") && s->auth_user == NULL;
    if (s->auth_offered)
        s->caps[n++] = "AUTH PLAIN LOGIN";
    s->caps[n] = NULL;
}

static void
smtp_ehlo_cont(struct smtp_session *s, enum mg_verdict v)
{
    const char *lines[SMTP_CAPS_MAX + 1];
    struct mg_reply r = {.code = 250};
    size_t n = 0;

    if (v == MG_TEMPFAIL) {
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        return;
    }
    if (v == MG_PERMFAIL) {
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Refused");
        return;
    }
    smtp_txn_reset(s);
    free(s->helo);
    s->helo = s->pend_name;
    s->pend_name = NULL;
    s->esmtp = s->h.ehlo.esmtp;
    lines[n++] = s->st->hostname;
    if (s->esmtp) {
        for (size_t i = 0; s->caps[i] != NULL; i++)
            lines[n++] = s->caps[i];
    }
    r.nlines = n;
    r.lines = lines;
    smtp_api->conn->write_reply(s->c, &r);
    smtp_api->conn->set_line_max(
        s->c, s->esmtp && s->auth_offered ? SMTP_AUTH_LINE_MAX : SMTP_LINE_MAX);
    smtp_enter_state(s, SMTP_ST_READY);
}

static void
smtp_cmd_helo(struct smtp_session *s, const struct smtp_command *cmd)
{
    char name[SMTP_DOMAIN_MAX + 3];
    struct smtp_error err;

    if (smtp_parse_helo(cmd->arg, cmd->arglen, name, sizeof(name), &err) !=
        MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    free(s->pend_name);
    s->pend_name = smtp_strdup(name);
    smtp_caps_build(s);
    memset(&s->h.ehlo, 0, sizeof(s->h.ehlo));
    s->h.ehlo.s = &s->view;
    s->h.ehlo.name = s->pend_name;
    s->h.ehlo.esmtp = cmd->cmd == SMTP_CMD_EHLO;
    s->h.ehlo.caps = s->caps;
    smtp_hook(s, "smtp.ehlo", &s->h.ehlo, smtp_ehlo_cont);
}

static void
smtp_cmd_starttls(struct smtp_session *s, const struct smtp_command *cmd)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);

    if (p->tls) {
        smtp_error(s, 503, "5.5.1", "TLS already active");
        return;
    }
    if (s->listener_tls != MG_TLS_STARTTLS) {
        smtp_error(s, 502, "5.5.1", "STARTTLS not available");
        return;
    }
    if (cmd->arglen > 0) {
        smtp_error(s, 501, "5.5.4", "Syntax: STARTTLS");
        return;
    }
    smtp_reply(s, 220, "2.0.0", "Ready to start TLS");
    smtp_txn_reset(s);
    /* before the call: MG_CONN_TLS_READY may come from inside it */
    s->wait = SMTP_WAIT_TLS;
    smtp_enter_state(s, SMTP_ST_TLS);
    if (smtp_api->conn->starttls(s->c) != MG_OK)
        smtp_close(s);
}

/* The parameters of MAIL/RCPT as sent: what follows the path. */
static char *
smtp_params(const char *arg, size_t len)
{
    const char *gt = memchr(arg, '>', len);
    size_t off;

    if (gt == NULL)
        return smtp_strdup("");
    off = (size_t)(gt - arg) + 1;
    while (off < len && arg[off] == ' ')
        off++;
    return smtp_strndup(arg + off, len - off);
}

static void
smtp_mail_cont(struct smtp_session *s, enum mg_verdict v)
{
    switch (v) {
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        return;
    case MG_PERMFAIL:
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Sender refused");
        return;
    case MG_ACCEPT:
        smtp_reply_hook(s, v, 0, 250, "2.1.0", "Sender OK");
        break;
    default:
        smtp_reply(s, 250, "2.1.0", "Sender OK");
        break;
    }
    smtp_txn_free(s);
    s->sender = smtp_strdup(s->mail.path);
    s->ntxn++;
    smtp_enter_state(s, SMTP_ST_MAIL);
}

static void
smtp_cmd_mail(struct smtp_session *s, const struct smtp_command *cmd)
{
    struct smtp_error err;

    if (s->state == SMTP_ST_INIT) {
        smtp_error(s, 503, "5.5.1", "Send HELO/EHLO first");
        return;
    }
    if (s->state != SMTP_ST_READY) {
        smtp_error(s, 503, "5.5.1", "Nested MAIL command");
        return;
    }
    if (s->require_tls && !smtp_api->conn->peer(s->c)->tls) {
        smtp_error(s, 530, "5.7.0", "Must issue a STARTTLS command first");
        return;
    }
    if (smtp_parse_mail(cmd->arg, cmd->arglen, &s->mail, &err) != MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    if (s->mail.has_size && s->mail.size > s->st->max_message_size) {
        smtp_error(s, 552, "5.3.4", "Message size exceeds fixed maximum");
        return;
    }
    free(s->pend_params);
    s->pend_params = smtp_params(cmd->arg, cmd->arglen);
    memset(&s->h.mail, 0, sizeof(s->h.mail));
    s->h.mail.s = &s->view;
    s->h.mail.sender = s->mail.path;
    s->h.mail.params = s->pend_params;
    s->h.mail.size = s->mail.has_size ? s->mail.size : 0;
    s->h.mail.body_8bit = s->mail.body == SMTP_BODY_8BITMIME;
    s->h.mail.smtputf8 = s->mail.smtputf8;
    smtp_hook(s, "smtp.mail", &s->h.mail, smtp_mail_cont);
}

static void
smtp_rcpt_release(struct smtp_session *s)
{
    if (s->pend_have_info) {
        smtp_api->store->mailbox_info_free(&s->pend_info);
        s->pend_have_info = false;
    }
    free(s->pend_mbox);
    s->pend_mbox = NULL;
}

static void
smtp_rcpt_cont(struct smtp_session *s, enum mg_verdict v)
{
    const struct mg_mailbox_info *mi = s->pend_have_info ? &s->pend_info : NULL;
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    bool ok = false;

    switch (v) {
    case MG_ACCEPT:
        smtp_rcpt_add(s, s->pend_name, NULL);
        smtp_reply_hook(s, v, 0, 250, "2.1.5", "Recipient OK");
        smtp_rcpt_release(s);
        return;
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        smtp_rcpt_release(s);
        return;
    case MG_PERMFAIL:
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Recipient refused");
        smtp_rcpt_release(s);
        return;
    default:
        break;
    }
    if (s->pend_mbox == NULL) {
        smtp_error(s, 550, "5.7.1", "Relaying denied");
    } else if (!s->st->local_delivery) {
        smtp_error(s, 550, "5.7.1", "Local delivery is disabled");
    } else if (smtp_api->store == NULL) {
        smtp_reply(s, 451, "4.3.0", "Mailbox lookup failed, try again later");
    } else if (mi == NULL) {
        smtp_error(s, 550, "5.1.1", "Mailbox unknown");
    } else if (!mi->active) {
        smtp_reply(s, 450, "4.2.1", "Mailbox suspended, try again later");
    } else if (!mi->accept_journal) {
        smtp_error(s, 550, "5.7.1", "Mailbox does not accept journal mail");
    } else {
        bool net_ok = mi->nnetworks == 0;

        for (size_t i = 0; i < mi->nnetworks && !net_ok; i++)
            net_ok = smtp_net_match(mi->networks[i], &p->sa);
        if (!net_ok)
            smtp_error(s, 550, "5.7.1", "Sender network not allowed");
        else if (mi->require_tls && !p->tls)
            smtp_error(s, 550, "5.7.1", "TLS required for this mailbox");
        else
            ok = true;
    }
    if (ok) {
        smtp_rcpt_add(s, s->pend_name, s->pend_mbox);
        smtp_reply(s, 250, "2.1.5", "Recipient OK");
    }
    smtp_rcpt_release(s);
}

/* A syntactically valid mailbox id: 8..32 of [a-z0-9]. */
static bool
smtp_mailbox_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n < 1 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return false;
    }
    return true;
}

static void
smtp_cmd_rcpt(struct smtp_session *s, const struct smtp_command *cmd)
{
    struct smtp_rcpt_args args;
    struct smtp_error err;
    char local[SMTP_LOCAL_MAX + 1], domain[SMTP_DOMAIN_MAX + 1];
    const char *e = NULL;

    if (s->state != SMTP_ST_MAIL && s->state != SMTP_ST_RCPT) {
        smtp_error(s, 503, "5.5.1", "Need MAIL command");
        return;
    }
    if (s->nrcpts >= s->st->max_recipients) {
        smtp_reply(s, 452, "4.5.3", "Too many recipients");
        return;
    }
    if (smtp_parse_rcpt(cmd->arg, cmd->arglen, &args, &err) != MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    if (smtp_split_address(args.path, local, sizeof(local), domain,
                           sizeof(domain)) != MG_OK) {
        smtp_error(s, 501, "5.1.3", "Bad recipient address syntax");
        return;
    }
    smtp_rcpt_release(s);
    free(s->pend_name);
    s->pend_name = smtp_strdup(args.path);
    free(s->pend_params);
    s->pend_params = smtp_params(cmd->arg, cmd->arglen);
    if (s->st->email_domain != NULL &&
        strcasecmp(domain, s->st->email_domain) == 0) {
        for (char *p = local; *p != '\0'; p++) {
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        }
        s->pend_mbox = smtp_strdup(local);
        if (smtp_api->store != NULL && smtp_mailbox_id_ok(local)) {
            int r = smtp_api->store->mailbox_get(local, &s->pend_info, &e);

            if (r == MG_OK) {
                s->pend_have_info = true;
            } else if (r != MG_DECLINED) {
                smtp_log(s, MG_LOG_WARNING, "mailbox lookup failed: %s",
                         e != NULL ? e : "unknown error");
                smtp_reply(s, 451, "4.3.0",
                           "Mailbox lookup failed, try again later");
                smtp_rcpt_release(s);
                return;
            }
        }
    }
    memset(&s->h.rcpt, 0, sizeof(s->h.rcpt));
    s->h.rcpt.s = &s->view;
    s->h.rcpt.rcpt = s->pend_name;
    s->h.rcpt.params = s->pend_params;
    s->h.rcpt.mailbox_id = s->pend_mbox;
    s->h.rcpt.mailbox = s->pend_have_info ? &s->pend_info : NULL;
    smtp_hook(s, "smtp.rcpt", &s->h.rcpt, smtp_rcpt_cont);
}

static void
smtp_data_cont(struct smtp_session *s, enum mg_verdict v)
{
    const char *in;
    size_t len;

    if (v == MG_TEMPFAIL) {
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        return;
    }
    if (v == MG_PERMFAIL) {
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Message refused");
        return;
    }
    if (!smtp_begin_store(s)) {
        smtp_reply_saved(s, &s->fail);
        return;
    }
    smtp_api->conn->peek(s->c, &in, &len);
    if (len > 0) {
        smtp_log(s, MG_LOG_INFO,
                 "improper pipelining after DATA (%zu bytes); closing", len);
        smtp_reply(s, 554, "5.5.0", "Improper pipelining after DATA");
        smtp_close(s);
        return;
    }
    if (v == MG_ACCEPT)
        smtp_reply_hook(s, v, 354, 354, NULL,
                        "End data with <CR><LF>.<CR><LF>");
    else
        smtp_reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
    if (s->obuf == NULL)
        s->obuf = smtp_alloc(SMTP_OUT_MAX);
    smtp_data_init(&s->dstate);
    s->data_begun = true;
    s->poffset = 0;
    smtp_set_timeouts(s, true);
    smtp_data_deadline_start(s);
    smtp_enter_state(s, SMTP_ST_DATA);
}

static void
smtp_cmd_data(struct smtp_session *s, const struct smtp_command *cmd)
{
    if (s->state == SMTP_ST_BDAT_TXN) {
        smtp_error(s, 503, "5.5.1", "DATA not allowed after BDAT");
        return;
    }
    if (s->state != SMTP_ST_MAIL && s->state != SMTP_ST_RCPT) {
        smtp_error(s, 503, "5.5.1", "Need MAIL command");
        return;
    }
    if (cmd->arglen > 0) {
        smtp_error(s, 501, "5.5.4", "Syntax: DATA");
        return;
    }
    if (s->nrcpts == 0) {
        smtp_error(s, 554, "5.5.1", "No valid recipients");
        return;
    }
    memset(&s->h.data, 0, sizeof(s->h.data));
    s->h.data.s = &s->view;
    smtp_hook(s, "smtp.data", &s->h.data, smtp_data_cont);
}

static void
smtp_cmd_bdat(struct smtp_session *s, const struct smtp_command *cmd)
{
    struct smtp_error err;
    uint64_t size;
    bool last;

    if (smtp_parse_bdat(cmd->arg, cmd->arglen, &size, &last, &err) != MG_OK) {
        /* without a size the octets cannot be skipped: what follows is
         * read as commands, and the error limit ends a confused peer */
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    s->chunk_size = s->chunk_left = size;
    s->chunk_last = last;
    s->chunk_discard = false;
    if (s->obuf == NULL)
        s->obuf = smtp_alloc(SMTP_OUT_MAX);
    if (s->state != SMTP_ST_MAIL && s->state != SMTP_ST_RCPT &&
        s->state != SMTP_ST_BDAT_TXN) {
        s->chunk_discard = true;
        smtp_save(&s->chunk_reply, 503, "5.5.1", "Need MAIL command");
    } else if (s->nrcpts == 0) {
        s->chunk_discard = true;
        smtp_save(&s->chunk_reply, 554, "5.5.1", "No valid recipients");
    }
    if (s->chunk_discard) {
        smtp_set_timeouts(s, true);
        smtp_data_deadline_start(s);
        smtp_enter_state(s, SMTP_ST_CHUNK);
        return;
    }
    s->nchunks++;
    if (!s->bdat) {
        /* the first chunk of the transaction */
        s->bdat = true;
        s->data_begun = true;
        s->poffset = 0;
        if (!smtp_begin_store(s)) {
            smtp_txn_fail_saved(s, &s->fail);
        }
    }
    if (s->msg_bytes + size > s->st->max_message_size)
        smtp_txn_fail(s, 552, "5.3.4", "Message size exceeds fixed maximum");
    smtp_set_timeouts(s, true);
    smtp_data_deadline_start(s);
    smtp_enter_state(s, SMTP_ST_CHUNK);
}

static void
smtp_cmd_rset(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_txn_reset(s);
    smtp_reply(s, 250, "2.0.0", "Ok");
}

static void
smtp_cmd_noop(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 250, "2.0.0", "Ok");
}

static void
smtp_cmd_quit(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 221, "2.0.0", "Bye");
    smtp_close(s);
}

static void
smtp_cmd_vrfy(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 252, "2.5.2", "Cannot VRFY user");
}

static void
smtp_cmd_expn(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_error(s, 502, "5.5.1", "EXPN not available");
}

static void
smtp_cmd_help(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 214, "2.0.0", "See RFC 5321 (mailgate journal target)");
}

/* ---------------------------------------------------------------- AUTH */

static void
smtp_auth_wipe(struct smtp_session *s)
{
    smtp_wipe(s->auth_pass, sizeof(s->auth_pass));
    smtp_wipe(s->auth_authzid, sizeof(s->auth_authzid));
}

/* Takeover: the conn is the handler's; this session ends quietly. */
static void
smtp_auth_takeover(struct smtp_session *s)
{
    struct smtp_state *st = s->st;
    struct mg_conn *c = s->c;
    mg_conn_fn fn = s->h.auth.handler;
    void *arg = s->h.auth.handler_arg;
    struct smtp_takeover *t, **pp;
    const char *in;
    size_t len;

    if (s->call.reply.code != 0) {
        if (!smtp_reply_fits(&s->call.reply, MG_ACCEPT, 0) ||
            smtp_api->conn->write_reply(c, &s->call.reply) != MG_OK)
            smtp_log(s, MG_LOG_WARNING,
                     "smtp.auth: the takeover reply was not written");
    }
    /* forget conns that are gone, remember this one for SIGTERM */
    for (pp = &st->taken; *pp != NULL;) {
        if (smtp_api->conn->find((*pp)->conn_id) == NULL) {
            t = *pp;
            *pp = t->next;
            free(t);
        } else {
            pp = &(*pp)->next;
        }
    }
    t = smtp_alloc(sizeof(*t));
    t->conn_id = s->id;
    t->on_shutdown = s->h.auth.on_shutdown;
    t->arg = arg;
    t->next = st->taken;
    st->taken = t;

    smtp_log(s, MG_LOG_DEBUG, "session taken over by an smtp.auth handler");
    smtp_api->conn->set_line_max(c, SMTP_LINE_MAX);
    smtp_api->conn->set_handler(c, fn, arg);
    if (s->paused)
        smtp_api->conn->pause_read(c, false);
    s->closed = true; /* freed without closing the conn */
    s->c = NULL;
    smtp_api->conn->peek(c, &in, &len);
    if (len > 0)
        fn(c, MG_CONN_READABLE, arg);
}

static void
smtp_auth_cont(struct smtp_session *s, enum mg_verdict v)
{
    smtp_auth_wipe(s);
    smtp_enter_state(s, SMTP_ST_READY);
    switch (v) {
    case MG_ACCEPT:
        if (s->h.auth.keep_engine) {
            free(s->auth_user);
            s->auth_user = smtp_strdup(s->auth_user_buf);
            smtp_reply_hook(s, v, 0, 235, "2.7.0", "Authentication successful");
            smtp_api->conn->set_line_max(s->c, SMTP_LINE_MAX);
            return;
        }
        if (s->h.auth.handler == NULL) {
            smtp_log(s, MG_LOG_ERROR,
                     "smtp.auth: a handler took the session over without "
                     "a conn handler");
            smtp_reply(s, 454, "4.7.0", "Temporary authentication failure");
            return;
        }
        smtp_auth_takeover(s);
        return;
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 454, "4.7.0",
                        "Temporary authentication failure");
        return;
    default:
        smtp_reply_hook(s, v == MG_PERMFAIL ? v : MG_PERMFAIL, 0, 535, "5.7.8",
                        "Authentication credentials invalid");
        s->errors++;
        return;
    }
}

static void
smtp_auth_run(struct smtp_session *s)
{
    memset(&s->h.auth, 0, sizeof(s->h.auth));
    s->h.auth.s = &s->view;
    s->h.auth.mechanism = s->auth_mech;
    s->h.auth.authzid = s->auth_authzid;
    s->h.auth.user = s->auth_user_buf;
    s->h.auth.password = s->auth_pass;
    s->h.auth.caps = s->caps;
    smtp_hook(s, "smtp.auth", &s->h.auth, smtp_auth_cont);
}

/* A base64 response of the exchange; false when refused (reply sent). */
static bool
smtp_auth_response(struct smtp_session *s, const char *b64, size_t len)
{
    char buf[3 * SMTP_AUTH_MAX + 3];
    long n;

    if (len == 1 && b64[0] == '*') {
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.7.0", "Authentication cancelled");
        return false;
    }
    if (len == 1 && b64[0] == '=')
        len = 0;
    n = smtp_b64_decode(b64, len, buf, sizeof(buf));
    if (n < 0 || (strcmp(s->auth_mech, "LOGIN") == 0 &&
                  memchr(buf, '\0', (size_t)n) != NULL)) {
        smtp_wipe(buf, sizeof(buf));
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.5.2", "Cannot decode the response");
        return false;
    }
    if (strcmp(s->auth_mech, "PLAIN") == 0) {
        const char *a = buf, *u, *p, *end = buf + n;

        u = memchr(a, '\0', (size_t)(end - a));
        p = u != NULL ? memchr(u + 1, '\0', (size_t)(end - u - 1)) : NULL;
        if (u == NULL || p == NULL ||
            memchr(p + 1, '\0', (size_t)(end - p - 1)) != NULL ||
            (size_t)(u - a) > SMTP_AUTH_MAX ||
            (size_t)(p - u - 1) > SMTP_AUTH_MAX ||
            (size_t)(end - p - 1) > SMTP_AUTH_MAX || p == u + 1) {
            smtp_wipe(buf, sizeof(buf));
            smtp_enter_state(s, SMTP_ST_READY);
            smtp_error(s, 501, "5.5.2", "Invalid PLAIN response");
            return false;
        }
        memcpy(s->auth_authzid, a, (size_t)(u - a));
        s->auth_authzid[u - a] = '\0';
        memcpy(s->auth_user_buf, u + 1, (size_t)(p - u - 1));
        s->auth_user_buf[p - u - 1] = '\0';
        memcpy(s->auth_pass, p + 1, (size_t)(end - p - 1));
        s->auth_pass[end - p - 1] = '\0';
        smtp_wipe(buf, sizeof(buf));
        smtp_auth_run(s);
        return true;
    }
    /* LOGIN */
    if (n > SMTP_AUTH_MAX) {
        smtp_wipe(buf, sizeof(buf));
        smtp_enter_state(s, SMTP_ST_READY);
        smtp_error(s, 501, "5.5.2", "Response too long");
        return false;
    }
    if (s->auth_step <= 1) {
        memcpy(s->auth_user_buf, buf, (size_t)n);
        s->auth_user_buf[n] = '\0';
        s->auth_step = 2;
        smtp_reply(s, 334, NULL, "UGFzc3dvcmQ6");
        smtp_enter_state(s, SMTP_ST_AUTH);
        return true;
    }
    memcpy(s->auth_pass, buf, (size_t)n);
    s->auth_pass[n] = '\0';
    smtp_wipe(buf, sizeof(buf));
    s->auth_authzid[0] = '\0';
    smtp_auth_run(s);
    return true;
}

static void
smtp_cmd_auth(struct smtp_session *s, const struct smtp_command *cmd)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    const char *sp;
    size_t mlen;

    if (!smtp_api->hook_has("smtp.auth")) {
        smtp_error(s, 502, "5.5.1", "AUTH not available");
        return;
    }
    if (!p->tls && !s->plain_auth) {
        smtp_error(s, 530, "5.7.0", "Must issue a STARTTLS command first");
        return;
    }
    if (s->state == SMTP_ST_INIT) {
        smtp_error(s, 503, "5.5.1", "Send EHLO first");
        return;
    }
    if (s->state != SMTP_ST_READY || s->auth_user != NULL) {
        smtp_error(s, 503, "5.5.1", "Bad sequence of commands");
        return;
    }
    sp = memchr(cmd->arg, ' ', cmd->arglen);
    mlen = sp != NULL ? (size_t)(sp - cmd->arg) : cmd->arglen;
    if (mlen == 5 && strncasecmp(cmd->arg, "PLAIN", 5) == 0)
        snprintf(s->auth_mech, sizeof(s->auth_mech), "PLAIN");
    else if (mlen == 5 && strncasecmp(cmd->arg, "LOGIN", 5) == 0)
        snprintf(s->auth_mech, sizeof(s->auth_mech), "LOGIN");
    else {
        smtp_error(s, 504, "5.5.4", "Unrecognized authentication type");
        return;
    }
    s->auth_authzid[0] = s->auth_user_buf[0] = s->auth_pass[0] = '\0';
    s->auth_step = 0;
    if (sp != NULL) {
        const char *ir = sp + 1;
        size_t irlen = cmd->arglen - mlen - 1;

        s->auth_step = 1;
        smtp_auth_response(s, ir, irlen);
        return;
    }
    if (strcmp(s->auth_mech, "PLAIN") == 0) {
        smtp_reply(s, 334, NULL, " ");
    } else {
        s->auth_step = 1;
        smtp_reply(s, 334, NULL, "VXNlcm5hbWU6");
    }
    smtp_enter_state(s, SMTP_ST_AUTH);
}

/* ------------------------------------------------------- the dispatcher */

struct smtp_cmd_entry {
    enum smtp_cmd cmd;
    unsigned states; /* where the command is taken at all */
    void (*fn)(struct smtp_session *s, const struct smtp_command *cmd);
};

static const struct smtp_cmd_entry smtp_commands[] = {
    {SMTP_CMD_HELO, SMTP_CMDSTATES, smtp_cmd_helo},
    {SMTP_CMD_EHLO, SMTP_CMDSTATES, smtp_cmd_helo},
    {SMTP_CMD_STARTTLS, (1u << SMTP_ST_INIT) | (1u << SMTP_ST_READY),
     smtp_cmd_starttls},
    {SMTP_CMD_AUTH, (1u << SMTP_ST_INIT) | (1u << SMTP_ST_READY),
     smtp_cmd_auth},
    {SMTP_CMD_MAIL, SMTP_CMDSTATES, smtp_cmd_mail},
    {SMTP_CMD_RCPT, SMTP_CMDSTATES, smtp_cmd_rcpt},
    {SMTP_CMD_DATA, SMTP_CMDSTATES, smtp_cmd_data},
    {SMTP_CMD_BDAT, SMTP_CMDSTATES, smtp_cmd_bdat},
    {SMTP_CMD_RSET, SMTP_CMDSTATES | (1u << SMTP_ST_REFUSED), smtp_cmd_rset},
    {SMTP_CMD_NOOP, SMTP_CMDSTATES, smtp_cmd_noop},
    {SMTP_CMD_QUIT, SMTP_CMDSTATES | (1u << SMTP_ST_REFUSED), smtp_cmd_quit},
    {SMTP_CMD_VRFY, SMTP_CMDSTATES, smtp_cmd_vrfy},
    {SMTP_CMD_EXPN, SMTP_CMDSTATES, smtp_cmd_expn},
    {SMTP_CMD_HELP, SMTP_CMDSTATES, smtp_cmd_help},
};

static void
smtp_command(struct smtp_session *s, const char *line, size_t len)
{
    struct smtp_command cmd;
    struct smtp_error err;
    size_t i;

    if (smtp_parse_command(line, len, &cmd, &err) != MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    if (cmd.cmd == SMTP_CMD_UNKNOWN) {
        char verb[24];

        smtp_clean(verb, sizeof(verb), cmd.verb,
                   cmd.verblen < 20 ? cmd.verblen : 20);
        smtp_log(s, MG_LOG_DEBUG, "unknown command %s", verb);
        smtp_error(s, 500, "5.5.1", "Command unrecognized");
        return;
    }
    for (i = 0; i < sizeof(smtp_commands) / sizeof(smtp_commands[0]); i++) {
        const struct smtp_cmd_entry *e = &smtp_commands[i];

        if (e->cmd != cmd.cmd)
            continue;
        if (!(e->states & (1u << s->state))) {
            smtp_error(s, 503, "5.5.1", "Bad sequence of commands");
            return;
        }
        e->fn(s, &cmd);
        return;
    }
    smtp_error(s, 502, "5.5.1", "Command not implemented");
}

/* One line in the AUTH exchange. */
static void
smtp_auth_line(struct smtp_session *s, const char *line, size_t len)
{
    smtp_auth_response(s, line, len);
}

/* ============================================================ the loop */

static bool
smtp_idle_for_shutdown(const struct smtp_session *s)
{
    return s->wait == SMTP_WAIT_NONE &&
           (s->state == SMTP_ST_INIT || s->state == SMTP_ST_READY ||
            s->state == SMTP_ST_MAIL || s->state == SMTP_ST_RCPT ||
            s->state == SMTP_ST_REFUSED || s->state == SMTP_ST_AUTH);
}

/* Handle buffered input until none is left or the session waits. */
/* A command line must be complete within idle_timeout of its first
 * byte: the idle timer alone restarts with every byte, so a client that
 * trickles one byte at a time would hold the session for ever. */
static void
smtp_cmd_deadline(void *arg)
{
    struct smtp_session *s = arg;

    s->cmd_timer = 0;
    if (s->closed)
        return;
    smtp_enter(s);
    smtp_log(s, MG_LOG_INFO, "command line not completed in time; closing");
    smtp_reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->st->hostname);
    smtp_close(s);
    smtp_leave(s);
}

static void
smtp_cmd_deadline_stop(struct smtp_session *s)
{
    if (s->cmd_timer != 0) {
        smtp_api->timer_cancel(s->cmd_timer);
        s->cmd_timer = 0;
    }
}

/* After the last complete line: arm the deadline when part of the next
 * one is buffered, drop it when nothing is. */
static void
smtp_cmd_deadline_check(struct smtp_session *s)
{
    const char *in;
    size_t len;

    smtp_api->conn->peek(s->c, &in, &len);
    if (len == 0)
        smtp_cmd_deadline_stop(s);
    else if (s->cmd_timer == 0)
        s->cmd_timer =
            smtp_api->timer_add(s->st->m, s->st->idle_ms, smtp_cmd_deadline, s);
}

static void
smtp_process(struct smtp_session *s)
{
    const char *line;
    size_t len;
    enum mg_eol eol;

    while (!s->closed && s->wait == SMTP_WAIT_NONE && !s->blocked) {
        int r;

        switch (s->state) {
        case SMTP_ST_DATA:
            if (!smtp_data_step(s))
                return;
            continue;
        case SMTP_ST_CHUNK:
            if (!smtp_chunk_step(s))
                return;
            continue;
        case SMTP_ST_END:
            smtp_finish(s);
            if (s->state == SMTP_ST_END)
                return;
            continue;
        case SMTP_ST_GREET:
        case SMTP_ST_TLS:
            return;
        default:
            break;
        }
        if (smtp_api->conn->shutting_down(s->c) || s->closing) {
            if (smtp_idle_for_shutdown(s)) {
                smtp_reply(s, 421, "4.3.2", "%s Service shutting down",
                           s->st->hostname);
                smtp_close(s);
                return;
            }
        }
        if (smtp_api->conn->write_queued(s->c) > SMTP_OUTPUT_MAX) {
            /* the client does not read its replies: back-pressure */
            s->blocked = true;
            if (!s->paused) {
                s->paused = true;
                smtp_api->conn->pause_read(s->c, true);
            }
            return;
        }
        r = smtp_api->conn->getline(s->c, &line, &len, &eol);
        if (r == MG_AGAIN) {
            smtp_cmd_deadline_check(s);
            return;
        }
        smtp_cmd_deadline_stop(s); /* a line is complete, or overlong */
        if (r == MG_DECLINED) {
            /* told as soon as the limit is passed: a peer that sends
             * that much without a line end is not speaking SMTP, and
             * the rest of its line would never be a command */
            smtp_log(s, MG_LOG_INFO, "command line too long; closing");
            smtp_reply(s, 500, "5.5.2", "Line too long");
            smtp_close(s);
            return;
        }
        if (r != MG_OK) {
            smtp_close(s);
            return;
        }
        if (eol == MG_EOL_LF)
            smtp_log(s, MG_LOG_DEBUG, "command line ended by a bare LF");
        if (s->state == SMTP_ST_AUTH) {
            smtp_auth_line(s, line, len);
            continue;
        }
        if (s->state == SMTP_ST_REFUSED) {
            struct smtp_command cmd;
            struct smtp_error err;

            if (smtp_parse_command(line, len, &cmd, &err) == MG_OK &&
                cmd.cmd == SMTP_CMD_QUIT) {
                smtp_cmd_quit(s, &cmd);
                return;
            }
            smtp_error(s, 503, "5.5.1", "Bad sequence of commands");
            continue;
        }
        smtp_command(s, line, len);
    }
}

/* ========================================================= connection */

static void
smtp_greet_cont(struct smtp_session *s, enum mg_verdict v)
{
    switch (v) {
    case MG_TEMPFAIL:
        smtp_reply_hook(s, v, 0, 421, "4.3.0",
                        "Service not available, closing");
        smtp_close(s);
        return;
    case MG_PERMFAIL:
        smtp_reply_hook(s, v, 0, 554, "5.7.1", "Service refused");
        smtp_enter_state(s, SMTP_ST_REFUSED);
        return;
    case MG_ACCEPT:
        smtp_reply_hook(s, v, 220, 220, NULL, s->st->greeting);
        break;
    default:
        smtp_reply(s, 220, NULL, "%s", s->st->greeting);
        break;
    }
    smtp_enter_state(s, SMTP_ST_INIT);
}

static void
smtp_greet(struct smtp_session *s)
{
    memset(&s->h.connect, 0, sizeof(s->h.connect));
    s->h.connect.s = &s->view;
    smtp_hook(s, "smtp.connect", &s->h.connect, smtp_greet_cont);
}

static void
smtp_greet_timer(void *arg)
{
    struct smtp_session *s = arg;
    const char *in;
    size_t len;

    s->greet_timer = 0;
    if (s->closed)
        return;
    smtp_enter(s);
    s->wait = SMTP_WAIT_NONE;
    smtp_api->conn->peek(s->c, &in, &len);
    if (len > 0) {
        smtp_log(s, MG_LOG_INFO, "input before the greeting; closing");
        smtp_reply(s, 554, "5.5.0",
                   "Protocol error: input before the "
                   "greeting");
        smtp_close(s);
    } else {
        smtp_greet(s);
        smtp_process(s);
    }
    smtp_leave(s);
}

static void
smtp_handler(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    struct smtp_session *s = arg;

    (void)c;
    smtp_enter(s);
    switch (ev) {
    case MG_CONN_READABLE:
        if (s->wait == SMTP_WAIT_GREET) {
            smtp_log(s, MG_LOG_INFO, "input before the greeting; closing");
            smtp_reply(s, 554, "5.5.0",
                       "Protocol error: input before the greeting");
            smtp_close(s);
            break;
        }
        smtp_process(s);
        break;
    case MG_CONN_DRAINED:
        if (s->blocked) {
            s->blocked = false;
            if (s->paused && s->wait != SMTP_WAIT_STORE) {
                s->paused = false;
                smtp_api->conn->pause_read(s->c, false);
            }
            smtp_process(s);
        }
        break;
    case MG_CONN_TLS_READY:
        s->wait = SMTP_WAIT_NONE;
        free(s->helo);
        s->helo = NULL;
        s->esmtp = false;
        smtp_txn_reset(s);
        smtp_enter_state(s, SMTP_ST_INIT);
        smtp_log(s, MG_LOG_DEBUG, "TLS ready");
        smtp_process(s);
        break;
    case MG_CONN_TIMEOUT:
        smtp_reply(s, 421, "4.4.2", "%s Error: timeout exceeded",
                   s->st->hostname);
        s->closed = true;
        break;
    case MG_CONN_EOF:
    case MG_CONN_ERROR:
        s->closed = true; /* the core closes the conn */
        break;
    }
    smtp_leave(s);
}

static void
smtp_session_link(struct smtp_session *s)
{
    struct smtp_session **b = &s->st->buckets[s->id % SMTP_BUCKETS];

    s->next = *b;
    if (*b != NULL)
        (*b)->prev = s;
    *b = s;
}

static void
smtp_session_unlink(struct smtp_session *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        s->st->buckets[s->id % SMTP_BUCKETS] = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
}

void
smtp_session_accept(struct mg_conn *c, const struct config_setting_t *entry,
                    void *arg)
{
    struct smtp_state *st = arg;
    const struct mg_peer *p;
    struct smtp_session *s;

    smtp_api = st->api;
    p = smtp_api->conn->peer(c);
    s = smtp_alloc(sizeof(*s));
    s->st = st;
    s->c = c;
    s->id = p->id;
    s->state = SMTP_ST_GREET;
    s->started_ms = smtp_api->now_ms();
    if (p->tls) {
        s->listener_tls = MG_TLS_IMPLICIT;
    } else if (entry != NULL) {
        const char *mode = smtp_api->setting_string(entry, "tls", "none");

        s->listener_tls =
            strcmp(mode, "starttls") == 0 ? MG_TLS_STARTTLS : MG_TLS_NONE;
    } else {
        s->listener_tls = MG_TLS_STARTTLS; /* the plaintext defaults */
    }
    if (entry != NULL) {
        s->require_tls = smtp_api->setting_bool(entry, "require_tls", false);
        s->plain_auth =
            smtp_api->setting_bool(entry, "allow_plaintext_auth", false);
    }
    smtp_session_link(s);

    smtp_api->conn->set_handler(c, smtp_handler, s);
    smtp_api->conn->set_line_max(c, SMTP_LINE_MAX);
    s->data_timeouts = true; /* so that the next call sets them */
    smtp_set_timeouts(s, false);

    smtp_enter(s);
    if (st->greet_delay_ms > 0) {
        s->wait = SMTP_WAIT_GREET;
        s->greet_timer =
            smtp_api->timer_add(st->m, st->greet_delay_ms, smtp_greet_timer, s);
    } else {
        smtp_greet(s);
    }
    smtp_leave(s);
}

void
smtp_session_shutdown(struct mg_conn *c, void *arg)
{
    struct smtp_state *st = arg;
    uint64_t id = smtp_api->conn->peer(c)->id;
    struct smtp_session *s = smtp_find(st, id);
    struct smtp_takeover *t;

    if (s == NULL) {
        for (t = st->taken; t != NULL; t = t->next) {
            if (t->conn_id == id)
                break;
        }
        if (t != NULL && t->on_shutdown != NULL) {
            t->on_shutdown(c, t->arg);
            return;
        }
        smtp_api->conn->printf(c, "421 4.3.2 %s Service shutting down\r\n",
                               st->hostname);
        smtp_api->conn->close(c);
        return;
    }
    smtp_enter(s);
    if (smtp_idle_for_shutdown(s) || s->state == SMTP_ST_GREET) {
        smtp_reply(s, 421, "4.3.2", "%s Service shutting down", st->hostname);
        smtp_close(s);
    } else {
        s->closing = true; /* after the transaction's reply */
    }
    smtp_leave(s);
}

static void
smtp_session_free(struct smtp_session *s)
{
    if (s->wait == SMTP_WAIT_HOOK) {
        /* end the parked run now: `call` lives in this session */
        s->wait = SMTP_WAIT_NONE;
        smtp_api->hook_resume(s->call.id, MG_TEMPFAIL, NULL);
    }
    if (s->data_begun && s->c != NULL)
        smtp_data_end_error(s);
    if (s->greet_timer != 0)
        smtp_api->timer_cancel(s->greet_timer);
    smtp_cmd_deadline_stop(s);
    smtp_data_deadline_stop(s);
    smtp_txn_free(s);
    smtp_saved_clear(&s->fail);
    smtp_saved_clear(&s->chunk_reply);
    smtp_rcpt_release(s);
    smtp_auth_wipe(s);
    smtp_wipe(s->auth_user_buf, sizeof(s->auth_user_buf));
    smtp_session_unlink(s);
    free(s->helo);
    free(s->auth_user);
    free(s->pend_name);
    free(s->pend_params);
    free(s->obuf);
    free(s);
}

void
smtp_sessions_free_all(struct smtp_state *st)
{
    struct smtp_takeover *t;

    for (size_t i = 0; i < SMTP_BUCKETS; i++) {
        while (st->buckets[i] != NULL) {
            struct smtp_session *s = st->buckets[i];

            s->c = NULL;
            s->data_begun = false;
            if (s->wait == SMTP_WAIT_HOOK)
                s->wait = SMTP_WAIT_NONE; /* the core cancelled it */
            smtp_session_free(s);
        }
    }
    while ((t = st->taken) != NULL) {
        st->taken = t->next;
        free(t);
    }
}
