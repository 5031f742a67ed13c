/*
 * modules/smtp/smtp_session.c -- the life of one SMTP session: accept,
 * greeting, the input loop, timeouts, shutdown, free.
 *
 * One explicit state (enter_state() logs each change); the other
 * smtp_*.c files of smtp_session.h do the protocol steps.
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

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

const struct mg_core_api *smtp_api;

static const char *const smtp_state_names[] = {
    "GREET", "REFUSED", "INIT",  "READY", "MAIL", "RCPT",
    "DATA",  "BDAT",    "CHUNK", "END",   "AUTH", "TLS",
};

static void smtp_session_free(struct smtp_session *s);

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
struct smtp_session *
smtp_lookup(struct smtp_state *st, uint64_t conn_id)
{
    struct smtp_session *s = smtp_find(st, conn_id);

    if (s == NULL || s->closed || smtp_api->conn->find(conn_id) == NULL)
        return NULL;
    return s;
}

void
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

void
smtp_enter_state(struct smtp_session *s, enum smtp_sstate state)
{
    if (s->state == state)
        return;
    smtp_log(s, MG_LOG_DEBUG, "state %s -> %s", smtp_state_names[s->state],
             smtp_state_names[state]);
    s->state = state;
}

/* Idle timeout for the phase; the session limit counts from the start. */
void
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

void
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

void
smtp_enter(struct smtp_session *s)
{
    s->depth++;
}

void
smtp_leave(struct smtp_session *s)
{
    if (--s->depth == 0 && s->closed) {
        struct mg_conn *c = s->close_c;

        smtp_session_free(s);
        if (c != NULL)
            smtp_api->conn->close(c);
    }
}

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
void
smtp_data_deadline_start(struct smtp_session *s)
{
    if (s->data_timer == 0 && s->st->data_total_ms > 0)
        s->data_timer = smtp_api->timer_add(s->st->m, s->st->data_total_ms,
                                            smtp_data_deadline, s);
}

/* The client sent all of the data (or the transaction is over). */
void
smtp_data_deadline_stop(struct smtp_session *s)
{
    if (s->data_timer != 0) {
        smtp_api->timer_cancel(s->data_timer);
        s->data_timer = 0;
    }
}

static bool
smtp_idle_for_shutdown(const struct smtp_session *s)
{
    return s->wait == SMTP_WAIT_NONE &&
           (s->state == SMTP_ST_INIT || s->state == SMTP_ST_READY ||
            s->state == SMTP_ST_MAIL || s->state == SMTP_ST_RCPT ||
            s->state == SMTP_ST_REFUSED || s->state == SMTP_ST_AUTH);
}

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

void
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
    if (!s->released) {
        /* handlers let go of what they keep for the session (the proxy's
         * upstream connection) */
        memset(&s->h.close, 0, sizeof(s->h.close));
        s->h.close.s = &s->view;
        smtp_hook_info(s, "smtp.close", &s->h.close);
    }
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
            s->released = true; /* the generation goes: no more hooks */
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
