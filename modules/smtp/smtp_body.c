/*
 * modules/smtp/smtp_body.c -- the message data: DATA and BDAT, read in pieces
 * through smtp.data.tee into the store writer, with back-pressure.
 */
#include "config.h"

#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

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
void
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
bool
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

/* DATA: feed input through the parser into pieces until the end. */
bool
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
bool
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

void
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

void
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
