/*
 * modules/smtp/smtp_deliver.c -- the end of a message: the trace fields, the
 * store transaction, the commit, smtp.data.end and the final reply.
 */
#include "config.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mailgate/module.h>

#include "smtp_session.h"

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
bool
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
void
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
