/*
 * modules/proxy/proxy_smtp_relay.c -- MAIL, RCPT and the message of a
 * proxy session: each command goes upstream (built anew from what the
 * engine parsed, never forwarded as sent) and the client gets the
 * upstream's answer; one command at a time, so nothing is ever pipelined.
 *
 * The message goes upstream as dot-stuffed DATA (whether the client sent
 * DATA or BDAT: RFC 3030 chunks become one DATA stream, so the upstream
 * needs no CHUNKING) and, at the same time, into the mailbox as a pending
 * copy. The client's DATA gets its 354 at once, with the DATA sent
 * upstream: the two round trips overlap, and the data waits for the
 * upstream's 354 (an upstream that refuses DATA has its refusal given at
 * the end of the data instead). Data bound upstream is held until more
 * than PSMTP_HOLD has gathered, so a small message goes with the final
 * "." in one write. At the end of the data:
 *
 *   1. the copy is committed durably, but held (msg_commit, publish false);
 *   2. only then does the final "." go upstream;
 *   3. on the upstream's 2xx the copy is published and the client gets the
 *      upstream's reply; on 4xx/5xx the copy is discarded and the client
 *      gets that reply. The publish or discard is lazy (msg_settle_lazy):
 *      the client is answered as soon as it is queued; it is on disk with
 *      the store's next commit (at one message at a time: the next
 *      message's held commit, so one fsync per message), at most 100 ms
 *      later, and always before a clean shutdown ends.
 *
 * If the copy cannot be committed, the "." is never sent: the upstream
 * connection is dropped (the upstream discards an unfinished DATA) and the
 * client gets a 4xx. If the gateway dies between 1 and the lazy publish
 * or discard being on disk, the store publishes the held copy at its next
 * start flagged "unconfirmed": it may not have been sent (or was refused).
 * So a copy acknowledged to the client is never lost: visible, or
 * unconfirmed after a crash. If the upstream connection breaks after the ".",
 * the outcome is unknown: the copy is published and the client gets a 4xx (a
 * retry may duplicate the message; it is never lost from the archive).
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy_smtp.h"

static const struct mg_store_api *
store(const struct psmtp_session *s)
{
    return s->st->api->store;
}

/* The session behind a hook call, when it is a logged-in proxy session.
 * A run of ours still marked as waiting was cancelled by the engine (the
 * engine runs one hook at a time). */
static struct psmtp_session *
mine(struct mg_hook_call *call)
{
    struct psmtp_session *s = psmtp_find(call->conn_id);

    if (s == NULL || !s->logged_in)
        return NULL;
    s->wait = PW_NONE;
    return s;
}

static void
suspend(struct psmtp_session *s, struct mg_hook_call *call, enum psmtp_wait w)
{
    s->wait = w;
    s->call_id = call->id;
}

/* An immediate answer of our own (the text lives in the session). */
static enum mg_verdict answer(struct psmtp_session *s,
                              struct mg_hook_call *call, enum mg_verdict v,
                              int code, const char *ecode, const char *fmt, ...)
    MG_PRINTF(6, 7);

static enum mg_verdict
answer(struct psmtp_session *s, struct mg_hook_call *call, enum mg_verdict v,
       int code, const char *ecode, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    psmtp_text_reply(s, &call->reply, code, ecode, fmt, ap);
    va_end(ap);
    return v;
}

static enum mg_verdict
answer_gone(struct psmtp_session *s, struct mg_hook_call *call)
{
    return answer(s, call, MG_TEMPFAIL, 451, "4.4.2",
                  "The connection to the upstream %s was lost (%s); log in "
                  "again",
                  s->login.upstream, s->why[0] != '\0' ? s->why : "closed");
}

/* A path fit for an upstream command: no control characters, and 8-bit
 * only in an SMTPUTF8 transaction. */
static bool
path_ok(const char *p, bool utf8)
{
    for (; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;

        if (ch < 0x20 || ch == 0x7f || (ch > 0x7f && !utf8))
            return false;
    }
    return true;
}

static enum mg_verdict
verdict_of(int code)
{
    switch (code / 100) {
    case 2:
        return MG_ACCEPT;
    case 4:
        return MG_TEMPFAIL;
    case 5:
        return MG_PERMFAIL;
    default:
        return MG_SUSPEND; /* not an answer to this command */
    }
}

static const char *
ecode_of(int code, const char *ok)
{
    return code < 400 ? ok : code < 500 ? "4.0.0" : "5.0.0";
}

static void
send_line(struct psmtp_session *s, const char *line)
{
    char buf[PSMTP_LINE_MAX + 3];
    size_t n = strlen(line);

    memcpy(buf, line, n);
    memcpy(buf + n, "\r\n", 2);
    psmtp_upstream_send(s, buf, n + 2);
}

/* ------------------------------------------------------------ MAIL */

enum mg_verdict
proxy_smtp_mail(struct mg_hook_call *call, void *arg)
{
    struct mg_hook_smtp_mail *h = call->data;
    struct psmtp_session *s = mine(call);
    char cmd[PSMTP_LINE_MAX + 1];
    int n;

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    if (s->up == NULL)
        return answer_gone(s, call);
    s->data_refused = false; /* a refusal no data piece took */
    if (h->smtputf8 && !s->caps.smtputf8)
        return answer(s, call, MG_PERMFAIL, 553, "5.6.7",
                      "The upstream %s does not support SMTPUTF8",
                      s->login.upstream);
    if (h->body_8bit && !s->caps.eightbit)
        return answer(s, call, MG_PERMFAIL, 554, "5.6.3",
                      "The upstream %s does not support 8BITMIME",
                      s->login.upstream);
    if (!path_ok(h->sender, h->smtputf8))
        return answer(s, call, MG_PERMFAIL, 553, "5.1.7",
                      "Invalid characters in the sender address");
    n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>", h->sender);
    if (n > 0 && h->size > 0 && s->caps.size)
        n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " SIZE=%" PRIu64,
                      h->size);
    if (n > 0 && h->body_8bit)
        n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " BODY=8BITMIME");
    if (n > 0 && h->smtputf8)
        n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " SMTPUTF8");
    if (n <= 0 || (size_t)n >= sizeof(cmd))
        return answer(s, call, MG_PERMFAIL, 553, "5.1.7",
                      "The sender address is too long");
    s->smtputf8 = h->smtputf8;
    if (s->txn_open) {
        /* the last transaction never ended upstream (RSET, a refused
         * DATA, no recipients): start afresh */
        free(s->cmd);
        s->cmd = strdup(cmd);
        if (s->cmd == NULL)
            abort();
        s->phase = PS_RSET;
        send_line(s, "RSET");
    } else {
        s->phase = PS_MAIL;
        send_line(s, cmd);
    }
    suspend(s, call, PW_MAIL);
    return MG_SUSPEND;
}

/* ------------------------------------------------------------ RCPT */

enum mg_verdict
proxy_smtp_rcpt(struct mg_hook_call *call, void *arg)
{
    struct mg_hook_smtp_rcpt *h = call->data;
    struct psmtp_session *s = mine(call);
    char cmd[PSMTP_LINE_MAX + 1];
    int n;

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    if (s->up == NULL)
        return answer_gone(s, call);
    if (!path_ok(h->rcpt, s->smtputf8))
        return answer(s, call, MG_PERMFAIL, 553, "5.1.3",
                      "Invalid characters in the recipient address");
    /* DSN parameters are not advertised: none go upstream */
    n = snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>", h->rcpt);
    if (n <= 0 || (size_t)n >= sizeof(cmd))
        return answer(s, call, MG_PERMFAIL, 553, "5.1.3",
                      "The recipient address is too long");
    s->phase = PS_RCPT;
    send_line(s, cmd);
    suspend(s, call, PW_RCPT);
    return MG_SUSPEND;
}

/* ---------------------------------------------------------- the copy */

static void
buf_need(char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    *p = realloc(*p, need);
    if (*p == NULL)
        abort();
    *cap = need;
}

static size_t
clean_copy(char *dst, size_t size, const char *src)
{
    size_t o = 0;

    for (; *src != '\0' && o + 1 < size; src++) {
        unsigned char ch = (unsigned char)*src;

        dst[o++] = (ch <= 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[o] = '\0';
    return o;
}

/* The trace fields in front of the copy: the envelope sender and one
 * Received field naming the client, the gateway and the upstream. */
static void
record_trace(struct psmtp_session *s, const char *sender)
{
    const struct mg_peer *up = s->st->api->conn->peer(s->up);
    char from[600], helo[256], date[64];
    time_t now = time(NULL);
    struct tm tm;
    int n;

    clean_copy(from, sizeof(from), sender);
    clean_copy(helo, sizeof(helo), s->helo);
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    buf_need(&s->sbuf, &s->scap, 2048);
    n = snprintf(s->sbuf, 2048,
                 "Return-Path: <%s>\r\nReceived: from %s (%s)\r\n\tby %s "
                 "(mailgate proxy to %s%s%s) with ESMTPSA%s%s%s;\r\n\t%s\r\n",
                 from, helo, s->peer[0] != '\0' ? s->peer : "unknown",
                 s->st->hostname, s->login.upstream,
                 up->tls_version != NULL ? " " : "",
                 up->tls_version != NULL ? up->tls_version : "",
                 s->peer_tls[0] != '\0' ? " (" : "", s->peer_tls,
                 s->peer_tls[0] != '\0' ? ")" : "", date);
    s->slen = n > 0 && n < 2048 ? (size_t)n : 0;
}

/* Start the pending copy; false with s->why when the store refuses. */
static bool
record_begin(struct psmtp_session *s, const struct mg_smtp_session *v)
{
    struct mg_envelope_info env = {
        .source = "proxy-smtp",
        .sender = v->sender != NULL ? v->sender : "",
        .rcpts = v->rcpts,
        .nrcpts = v->nrcpts,
        .client = s->peer[0] != '\0' ? s->peer : NULL,
        .tls = s->peer_tls[0] != '\0' ? s->peer_tls : NULL,
    };
    const char *ids[1] = {s->login.mailbox}, *err = NULL;

    psmtp_relay_release(s);
    s->w = store(s)->msg_begin(ids, 1, &env, s->id, &err);
    if (s->w == NULL) {
        snprintf(s->why, sizeof(s->why), "%s",
                 err != NULL ? err : "the store refused the message");
        return false;
    }
    s->w_committed = s->w_failed = s->dot_sent = false;
    s->s_wait = s->converted = false;
    s->copy_size = 0;
    psmtp_stuff_init(&s->stuff);
    record_trace(s, env.sender);
    return true;
}

void
psmtp_relay_release(struct psmtp_session *s)
{
    if (s->w != NULL) {
        /* before the commit this removes what was written; after it a
         * held copy stays held (published as unconfirmed at the next
         * start) */
        store(s)->msg_free(s->w);
        s->w = NULL;
    }
    s->slen = s->ulen = 0;
    s->s_wait = false;
    s->tee_data = NULL;
}

/* ------------------------------------------------------------ DATA */

enum mg_verdict
proxy_smtp_data(struct mg_hook_call *call, void *arg)
{
    struct mg_hook_smtp_data *h = call->data;
    struct psmtp_session *s = mine(call);

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    if (s->up == NULL)
        return answer_gone(s, call);
    if (!record_begin(s, h->s)) {
        s->failed++;
        psmtp_log(s, MG_LOG_WARNING, "cannot record a message: %s", s->why);
        return answer(s, call, MG_TEMPFAIL, 451, "4.3.0",
                      "The message cannot be archived now, so it is not "
                      "sent; try again later");
    }
    /* the client gets its 354 at once and sends while the upstream's is
     * on its way: the upstream's DATA round trip overlaps the client's.
     * Its data wait (PW_TEE) until the upstream's 354; an upstream that
     * refuses DATA has its refusal given for the data instead. */
    s->phase = PS_DATA;
    send_line(s, "DATA");
    return MG_ACCEPT; /* the engine's 354 */
}

static void store_resume(uint64_t conn_id, void *arg);

/* The tee piece in hand: upstream and into the copy. MG_PASS when done,
 * MG_SUSPEND while the store or the upstream is behind. */
static enum mg_verdict
tee_step(struct psmtp_session *s)
{
    if (!s->converted) {
        size_t need = 2 * s->tee_len + 8;

        /* a small tail stays in ubuf (see PSMTP_HOLD) */
        buf_need(&s->ubuf, &s->ucap, s->ulen + need);
        buf_need(&s->sbuf, &s->scap, s->slen + need);
        psmtp_stuff(&s->stuff, s->tee_data, s->tee_len, s->ubuf, &s->ulen,
                    s->sbuf, &s->slen);
        if (s->tee_last)
            psmtp_stuff_end(&s->stuff, s->ubuf, &s->ulen, s->sbuf, &s->slen);
        else if (s->ulen > PSMTP_HOLD) {
            psmtp_upstream_send(s, s->ubuf, s->ulen);
            s->ulen = 0;
        }
        s->converted = true;
    }
    if (s->slen > 0 && !s->w_failed) {
        int r = store(s)->msg_write(s->w, s->sbuf, s->slen, store_resume, NULL);

        if (r == MG_AGAIN) {
            s->s_wait = true;
            return MG_SUSPEND;
        }
        if (r != MG_OK)
            s->w_failed = true; /* the commit fails and says why */
        else
            s->copy_size += s->slen;
    }
    s->slen = 0;
    if (s->u_wait)
        return MG_SUSPEND;
    s->converted = false;
    s->tee_data = NULL;
    return MG_PASS;
}

/* Go on with a suspended tee piece. */
static void
tee_continue(struct psmtp_session *s)
{
    enum mg_verdict v;

    if (s->wait != PW_TEE || s->s_wait || s->phase != PS_STREAM)
        return;
    v = tee_step(s);
    if (v != MG_SUSPEND)
        psmtp_resume_text(s, MG_PASS, 0, NULL, "%s", "");
}

static void
store_resume(uint64_t conn_id, void *arg)
{
    struct psmtp_session *s = psmtp_find(conn_id);

    (void)arg;
    if (s == NULL || !s->s_wait)
        return;
    psmtp_enter(s);
    s->s_wait = false;
    tee_continue(s);
    psmtp_leave(s);
}

void
psmtp_relay_drained(struct psmtp_session *s)
{
    tee_continue(s);
}

enum mg_verdict
proxy_smtp_tee(struct mg_hook_call *call, void *arg)
{
    struct mg_hook_smtp_data_tee *h = call->data;
    struct psmtp_session *s = mine(call);
    enum mg_verdict v;

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    if (s->up == NULL)
        return answer_gone(s, call);
    if (s->data_refused) {
        /* the upstream refused DATA after the client had its 354 */
        s->data_refused = false;
        psmtp_reply_out(&s->out, ecode_of(s->out.code, NULL), &call->reply);
        return verdict_of(s->out.code);
    }
    s->tee_data = h->data;
    s->tee_len = h->len;
    s->tee_last = h->last;
    s->converted = false;
    if (s->w == NULL) {
        /* BDAT: the first piece opens the upstream's DATA */
        if (!record_begin(s, h->s)) {
            s->failed++;
            psmtp_log(s, MG_LOG_WARNING, "cannot record a message: %s", s->why);
            return answer(s, call, MG_TEMPFAIL, 451, "4.3.0",
                          "The message cannot be archived now, so it is not "
                          "sent; try again later");
        }
        s->tee_data = h->data; /* record_begin forgot it */
        s->phase = PS_DATA;
        send_line(s, "DATA");
        suspend(s, call, PW_TEE);
        return MG_SUSPEND;
    }
    if (s->phase == PS_DATA) {
        suspend(s, call, PW_TEE); /* until the upstream's 354 */
        return MG_SUSPEND;
    }
    if (s->phase != PS_STREAM)
        return answer(s, call, MG_TEMPFAIL, 451, "4.3.0",
                      "The upstream is not ready for the message");
    v = tee_step(s);
    if (v == MG_SUSPEND)
        suspend(s, call, PW_TEE);
    return v;
}

/* ------------------------------------------------------ end of data */

static void
end_stored(struct psmtp_session *s)
{
    const struct mg_core_api *api = s->st->api;
    uint64_t id = 0;
    char uidl[40];

    if (store(s)->msg_id(s->w, 0, &id, uidl) != MG_OK)
        return;
    {
        struct mg_hook_message_stored data = {
            .mailbox_id = s->login.mailbox,
            .msg_id = id,
            .size = s->copy_size,
            .source = "proxy-smtp",
        };
        struct mg_hook_call call = {
            .hook = "message.stored",
            .conn_id = s->id,
            .data = &data,
        };

        (void)api->hook_run(&call, NULL, NULL);
    }
}

/* The client's answer once the copy is settled (or its settling queued). */
static void
end_answer(struct psmtp_session *s, enum psmtp_settle how)
{
    store(s)->msg_free(s->w);
    s->w = NULL;
    switch (how) {
    case PSET_SENT:
        s->sent++;
        psmtp_resume_out(s, MG_ACCEPT, "2.0.0");
        break;
    case PSET_REFUSED:
        psmtp_resume_out(s, verdict_of(s->out.code),
                         ecode_of(s->out.code, NULL));
        break;
    case PSET_UNKNOWN:
        /* the upstream went away after the ".": it may have the message */
        s->failed++;
        psmtp_resume_text(s, MG_TEMPFAIL, 451, "4.4.2",
                          "The upstream %s did not confirm the message (%s); "
                          "it may have been sent",
                          s->login.upstream, s->why);
        break;
    default:
        s->failed++;
        psmtp_resume_text(s, MG_TEMPFAIL, 451, "4.4.2",
                          "The connection to the upstream %s was lost (%s); "
                          "the message was not sent",
                          s->login.upstream, s->why);
        break;
    }
}

/* The copy is published or discarded (a store without msg_settle_lazy,
 * or one that refused it): answer the client. */
static void
end_settled(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct psmtp_session *s = psmtp_find(conn_id);
    enum psmtp_settle how;

    (void)arg;
    if (s == NULL || s->wait != PW_END)
        return;
    psmtp_enter(s);
    how = s->settle;
    if (how == PSET_SENT || how == PSET_UNKNOWN) {
        if (res->status == MG_OK)
            end_stored(s);
        else
            psmtp_log(s, MG_LOG_ERROR,
                      "the recorded copy could not be published (%s): it "
                      "stays held and is published, flagged unconfirmed, "
                      "at the next start",
                      res->error != NULL ? res->error : "store error");
    } else if (res->status != MG_OK) {
        psmtp_log(s, MG_LOG_WARNING,
                  "the copy of a message that was not sent could not be "
                  "discarded (%s): it is published, flagged unconfirmed, at "
                  "the next start",
                  res->error != NULL ? res->error : "store error");
    }
    end_answer(s, how);
    psmtp_leave(s);
}

static bool
has_settle_lazy(const struct psmtp_session *s)
{
    return store(s)->size >= offsetof(struct mg_store_api, msg_settle_lazy) +
                                 sizeof(store(s)->msg_settle_lazy);
}

/* Publish (sent, or maybe sent) or discard the held copy. Lazily: the
 * copy is durable already, and a crash before the publish or discard is
 * on disk leaves it held, which the next start publishes flagged
 * unconfirmed; so the client is answered at once and the publish rides
 * with the store's next commit (the next message's, at one message at a
 * time) instead of costing a commit of its own. */
static void
end_settle(struct psmtp_session *s, enum psmtp_settle how)
{
    bool publish = how == PSET_SENT || how == PSET_UNKNOWN;
    int r;

    s->settle = how;
    if (has_settle_lazy(s) &&
        store(s)->msg_settle_lazy(s->w, publish, NULL, NULL) == MG_OK) {
        if (publish)
            end_stored(s);
        end_answer(s, how);
        return;
    }
    if (publish)
        r = store(s)->msg_publish(s->w, end_settled, NULL);
    else
        r = store(s)->msg_discard(s->w, end_settled, NULL);
    if (r != MG_OK) {
        struct mg_store_result res = {.status = MG_ERROR,
                                      .error = "the store refused the call"};

        end_settled(s->id, &res, NULL);
    }
}

static void
end_committed(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct psmtp_session *s = psmtp_find(conn_id);

    (void)arg;
    if (s == NULL || s->wait != PW_END)
        return;
    psmtp_enter(s);
    if (res->status != MG_OK) {
        snprintf(s->why, sizeof(s->why), "%s",
                 res->error != NULL ? res->error : "commit failed");
        s->failed++;
        psmtp_log(s, MG_LOG_WARNING,
                  "the recorded copy could not be committed (%s): the "
                  "message is not sent (the upstream connection is dropped "
                  "without the final dot)",
                  s->why);
        psmtp_relay_release(s);
        psmtp_upstream_drop(s, "the copy could not be archived");
        psmtp_resume_text(s, MG_TEMPFAIL, 451, "4.3.0",
                          "The message could not be archived, so it was not "
                          "sent; try again later");
    } else if (s->up == NULL) {
        /* the upstream went away before the "." */
        end_settle(s, PSET_NOT_SENT);
    } else {
        /* the held tail and the "." in one write */
        buf_need(&s->ubuf, &s->ucap, s->ulen + 3);
        memcpy(s->ubuf + s->ulen, ".\r\n", 3);
        s->dot_sent = true;
        s->phase = PS_DOT;
        psmtp_upstream_send(s, s->ubuf, s->ulen + 3);
        s->ulen = 0;
    }
    psmtp_leave(s);
}

enum mg_verdict
proxy_smtp_end(struct mg_hook_call *call, void *arg)
{
    struct mg_hook_smtp_data_end *h = call->data;
    struct psmtp_session *s = mine(call);

    (void)arg;
    if (s == NULL)
        return MG_PASS;
    if (h->status != MG_OK) {
        /* the transaction failed in the engine: an unfinished DATA
         * cannot be called off but by closing the connection */
        psmtp_relay_release(s);
        if (s->phase == PS_DATA || s->phase == PS_STREAM)
            psmtp_upstream_drop(s, "the message was broken off");
        return MG_PASS;
    }
    if (s->w == NULL || s->up == NULL || s->phase != PS_STREAM)
        return s->up == NULL ? answer_gone(s, call)
                             : answer(s, call, MG_TEMPFAIL, 451, "4.3.0",
                                      "The message was not relayed");
    if (s->w_failed ||
        store(s)->msg_commit(s->w, false, end_committed, NULL) != MG_OK) {
        s->failed++;
        psmtp_log(s, MG_LOG_WARNING,
                  "the recorded copy could not be written: the message was "
                  "not sent");
        psmtp_relay_release(s);
        psmtp_upstream_drop(s, "the copy could not be archived");
        return answer(s, call, MG_TEMPFAIL, 451, "4.3.0",
                      "The message could not be archived, so it was not "
                      "sent; try again later");
    }
    suspend(s, call, PW_END);
    return MG_SUSPEND;
}

/* ----------------------------------------------------- upstream side */

/* A reply that answers no command of ours: the connection is dropped. */
static void
relay_violation(struct psmtp_session *s)
{
    snprintf(s->why, sizeof(s->why),
             "the upstream answered %d, which does not fit the command",
             s->rep.code);
    psmtp_log(s, MG_LOG_WARNING, "upstream %s: %s", s->login.upstream, s->why);
    psmtp_upstream_drop(s, NULL);
    psmtp_relay_lost(s);
}

void
psmtp_relay_reply(struct psmtp_session *s)
{
    int code = s->rep.code;
    enum mg_verdict v = verdict_of(code);
    enum psmtp_phase was = s->phase;

    switch (was) {
    case PS_RSET:
        if (v != MG_ACCEPT) {
            relay_violation(s);
            return;
        }
        s->txn_open = false;
        s->phase = PS_MAIL;
        send_line(s, s->cmd);
        free(s->cmd);
        s->cmd = NULL;
        return;
    case PS_MAIL:
    case PS_RCPT:
        if (v == MG_SUSPEND) {
            relay_violation(s);
            return;
        }
        s->phase = PS_READY;
        if (was == PS_MAIL && v == MG_ACCEPT)
            s->txn_open = true;
        psmtp_resume_reply(s, v,
                           ecode_of(code, was == PS_MAIL ? "2.1.0" : "2.1.5"));
        return;
    case PS_DATA:
        if (code == 354) {
            s->phase = PS_STREAM;
            if (s->wait == PW_TEE && tee_step(s) != MG_SUSPEND)
                psmtp_resume_text(s, MG_PASS, 0, NULL, "%s", "");
            return;
        }
        if (v != MG_TEMPFAIL && v != MG_PERMFAIL) {
            relay_violation(s);
            return;
        }
        s->phase = PS_READY; /* txn_open: the next MAIL sends RSET */
        psmtp_relay_release(s);
        if (s->wait == PW_TEE) {
            psmtp_resume_reply(s, v, ecode_of(code, NULL));
        } else {
            /* between the client's 354 and its first data piece */
            psmtp_reply_keep(s);
            s->data_refused = true;
        }
        return;
    case PS_DOT:
        s->phase = PS_READY;
        s->txn_open = false;
        s->dot_sent = false;
        if (v == MG_SUSPEND) {
            relay_violation(s);
            return;
        }
        /* keep the reply for the client until the copy is settled */
        psmtp_reply_keep(s);
        end_settle(s, v == MG_ACCEPT ? PSET_SENT : PSET_REFUSED);
        return;
    default:
        return;
    }
}

void
psmtp_relay_lost(struct psmtp_session *s)
{
    switch (s->wait) {
    case PW_MAIL:
    case PW_RCPT:
    case PW_TEE:
        psmtp_resume_text(s, MG_TEMPFAIL, 451, "4.4.2",
                          "The connection to the upstream %s was lost (%s)",
                          s->login.upstream, s->why);
        return;
    case PW_END:
        if (s->dot_sent) {
            s->dot_sent = false;
            end_settle(s, PSET_UNKNOWN);
        }
        /* else the commit is in flight: end_committed sees s->up NULL */
        return;
    default:
        return;
    }
}
