/*
 * modules/pop3/pop3_retr.c -- RETR and TOP: the message streamed from the
 * store to the client chunk by chunk, dot-stuffed on the way.
 *
 * Memory stays flat whatever the message size: one decrypted chunk (the
 * store's, valid until the next read) and its stuffed copy. The next chunk
 * is read only when the conn's write queue is below its high-water mark;
 * reading happens on the worker pool (msg_read says MG_AGAIN and resumes
 * us), so neither a page fault nor a slow client stalls the loop.
 *
 * Nothing unauthenticated is sent: a first chunk that fails is an -ERR; a
 * later one ends the connection without the terminating dot, so that the
 * client knows the response is incomplete. RETR pieces go through
 * pop3.retr.tee before the client sees them.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "pop3.h"
#include "pop3_engine.h"

#define POP3_SLICE (64 * 1024) /* the store's chunk size */

static void
pop3_retr_finish(struct pop3_session *s)
{
    pop3_retr_free(s);
    pop3_enter_state(s, POP3_ST_TRANS);
}

void
pop3_retr_free(struct pop3_session *s)
{
    if (s->reader != NULL) {
        pop3_api->store->msg_close(s->reader);
        s->reader = NULL;
    }
    free(s->obuf);
    s->obuf = NULL;
    s->rdata = NULL;
    s->rlen = 0;
}

/* The session is the argument: it closes its reader when it is freed,
 * and a closed reader never calls back. */
static void
pop3_read_resume(uint64_t conn_id, void *arg)
{
    struct pop3_session *s = arg;

    (void)conn_id;
    if (s->closed || s->wait != POP3_WAIT_READ)
        return;
    pop3_enter(s);
    s->wait = POP3_WAIT_NONE;
    pop3_process(s);
    pop3_leave(s);
}

static void
pop3_start(struct pop3_session *s, uint32_t n, uint64_t limit, bool tee)
{
    const char *err = NULL;

    s->reader = pop3_api->store->msg_open(s->key, s->msgs[n - 1].id, &err);
    if (s->reader == NULL) {
        pop3_log(s, MG_LOG_WARNING, "mailbox %s: message %u cannot be read: %s",
                 s->mailbox, (unsigned)n, err != NULL ? err : "unknown");
        pop3_reply(s, false, "SYS/TEMP", "Message %u cannot be read",
                   (unsigned)n);
        return;
    }
    /* a chunk stuffed is at most twice its size, plus the end line */
    s->obuf = malloc(2 * (size_t)POP3_SLICE);
    if (s->obuf == NULL)
        abort();
    s->rmsg = n;
    s->rtee = tee;
    s->rstarted = false;
    s->rend = false;
    s->rstage_tee = false;
    s->rdata = NULL;
    s->rlen = 0;
    s->roffset = 0;
    pop3_stuff_init(&s->stuff, limit);
    pop3_enter_state(s, POP3_ST_RETR);
}

void
pop3_cmd_retr(struct pop3_session *s, const struct pop3_command *cmd)
{
    uint32_t n;

    if (pop3_message(s, cmd->arg, cmd->arglen, &n) == NULL)
        return;
    pop3_start(s, n, POP3_ALL_LINES, true);
}

void
pop3_cmd_top(struct pop3_session *s, const struct pop3_command *cmd)
{
    uint32_t n;
    uint64_t lines;
    const char *sp = memchr(cmd->arg, ' ', cmd->arglen);

    if (pop3_parse_top(cmd->arg, cmd->arglen, &n, &lines) != MG_OK) {
        pop3_error(s, NULL, "Syntax: TOP message lines");
        return;
    }
    if (pop3_message(s, cmd->arg, (size_t)(sp - cmd->arg), &n) == NULL)
        return;
    pop3_start(s, n, lines, false);
}

/* ------------------------------------------------------------ the tee */

static void
pop3_tee_cont(struct pop3_session *s, enum mg_verdict v)
{
    if (v == MG_TEMPFAIL || v == MG_PERMFAIL) {
        pop3_log(s, MG_LOG_WARNING,
                 "pop3.retr.tee refused message %u; closing without the end",
                 (unsigned)s->rmsg);
        pop3_close(s);
        return;
    }
    s->rstage_tee = false;
}

static void
pop3_tee(struct pop3_session *s, const void *data, size_t len, bool last)
{
    memset(&s->h.tee, 0, sizeof(s->h.tee));
    s->h.tee.s = &s->view;
    s->h.tee.msgno = s->rmsg;
    s->h.tee.data = data;
    s->h.tee.len = len;
    s->h.tee.offset = s->roffset;
    s->h.tee.last = last;
    pop3_hook(s, "pop3.retr.tee", &s->h.tee, pop3_tee_cont);
}

/* --------------------------------------------------------- streaming */

/* The next piece from the store; false when the session must wait or the
 * response ended. */
static bool
pop3_next_piece(struct pop3_session *s)
{
    const void *data;
    size_t len;
    int r =
        pop3_api->store->msg_read(s->reader, &data, &len, pop3_read_resume, s);

    switch (r) {
    case MG_AGAIN:
        s->wait = POP3_WAIT_READ;
        return false;
    case MG_OK:
        s->rdata = data;
        s->rlen = len;
        s->rstage_tee = s->rtee;
        return true;
    case MG_DECLINED:
        s->rend = true;
        s->rstage_tee = s->rtee; /* the last tee run, len 0 */
        return true;
    default:
        pop3_log(s, MG_LOG_ERROR,
                 "mailbox %s: message %u fails authentication at offset "
                 "%llu",
                 s->mailbox, (unsigned)s->rmsg, (unsigned long long)s->roffset);
        if (!s->rstarted) {
            pop3_reply(s, false, "SYS/TEMP",
                       "Message %u cannot be read back intact",
                       (unsigned)s->rmsg);
            pop3_retr_finish(s);
        } else {
            pop3_close(s); /* without the terminating dot */
        }
        return false;
    }
}

void
pop3_retr_step(struct pop3_session *s)
{
    while (!s->closed && s->wait == POP3_WAIT_NONE && !s->blocked) {
        size_t olen = 0, slice;
        int w;

        if (s->rdata == NULL && !s->rend && !pop3_next_piece(s))
            return;
        if (!s->rstarted) {
            s->rstarted = true;
            if (s->rtee)
                pop3_reply(s, true, NULL, "%llu octets",
                           (unsigned long long)s->msgs[s->rmsg - 1].size);
            else
                pop3_reply(s, true, NULL, "Top of message follows");
        }
        if (s->rend) {
            char end[8];
            size_t elen = pop3_stuff_end(&s->stuff, end);

            if (s->rstage_tee) {
                /* the CRLF added to an unterminated message is part of
                 * what the client receives */
                pop3_tee(s, end, elen > 3 ? 2 : 0, true);
                if (s->closed || s->wait != POP3_WAIT_NONE || s->rstage_tee)
                    return;
            }
            pop3_api->conn->write(s->c, end, elen);
            pop3_retr_finish(s);
            return;
        }
        if (s->rstage_tee) {
            pop3_tee(s, s->rdata, s->rlen, false);
            if (s->closed || s->wait != POP3_WAIT_NONE || s->rstage_tee)
                return;
        }
        /* the store's pieces are chunks of at most POP3_SLICE bytes;
         * anything longer goes out in slices */
        slice = s->rlen < POP3_SLICE ? s->rlen : POP3_SLICE;
        (void)pop3_stuff_feed(&s->stuff, s->rdata, slice, s->obuf, &olen);
        s->roffset += slice;
        s->rdata = s->rlen > slice ? s->rdata + slice : NULL;
        s->rlen -= slice;
        if (s->stuff.done) {
            s->rend = true; /* TOP: the lines asked for are out */
            s->rdata = NULL;
            s->rlen = 0;
        }
        w = pop3_api->conn->write(s->c, s->obuf, olen);
        if (w == MG_AGAIN) {
            s->blocked = true; /* MG_CONN_DRAINED goes on */
        } else if (w != MG_OK) {
            pop3_close(s);
        }
    }
}
