/*
 * modules/pop3/pop3_session.c -- the state machine of one POP3 session:
 * the command table, the input loop, the greeting, CAPA and STLS,
 * timeouts and shutdown. The commands live in pop3_auth.c (logins),
 * pop3_trans.c (the snapshot, QUIT) and pop3_retr.c (RETR, TOP).
 *
 * One explicit state (pop3_enter_state() logs each change) and a command
 * table. Everything asynchronous -- suspended hooks, the key unlock, a
 * RETR waiting for its next chunk, the delete commit -- sets `wait`; while
 * it is set no input is processed (pipelined commands stay buffered) and
 * the completion finds the session by its conn id. The session is freed
 * in exactly one place (pop3_session_free), at the end of the entry point
 * that closed it (pop3_leave), never under a caller.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "pop3.h"
#include "pop3_engine.h"

/* Replies queued beyond this stop command processing until drained. */
#define POP3_OUTPUT_MAX (256 * 1024)
#define POP3_TEXT_MAX   512

const struct mg_core_api *pop3_api;

static const char *const pop3_state_names[] = {
    "GREET",       "AUTHORIZATION", "SASL",   "LOGIN",
    "TRANSACTION", "RETR",          "UPDATE", "TLS",
};

static void pop3_session_free(struct pop3_session *s);

/* ================================================================ util */

void
pop3_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0)
        *v++ = 0;
}

/* A log text from client bytes: printable ASCII only. */
static void
pop3_clean(char *dst, size_t size, const char *src, size_t len)
{
    size_t i;

    for (i = 0; i < len && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}

/* ============================================================ sessions */

static struct pop3_session *
pop3_find(struct pop3_state *st, uint64_t conn_id)
{
    struct pop3_session *s;

    for (s = st->buckets[conn_id % POP3_BUCKETS]; s != NULL; s = s->next) {
        if (s->id == conn_id)
            return s;
    }
    return NULL;
}

struct pop3_session *
pop3_lookup(struct pop3_state *st, uint64_t conn_id)
{
    struct pop3_session *s = pop3_find(st, conn_id);

    if (s == NULL || s->closed || pop3_api->conn->find(conn_id) == NULL)
        return NULL;
    return s;
}

void
pop3_log(struct pop3_session *s, enum mg_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (s->closed || s->c == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pop3_api->conn->log(s->c, level, "%s", buf);
}

void
pop3_enter_state(struct pop3_session *s, enum pop3_sstate state)
{
    if (s->state == state)
        return;
    pop3_log(s, MG_LOG_DEBUG, "state %s -> %s", pop3_state_names[s->state],
             pop3_state_names[state]);
    s->state = state;
}

void
pop3_close(struct pop3_session *s)
{
    if (s->closed)
        return;
    s->closed = true;
    /* closed when the entry point returns, after the session is freed:
     * the conn's close may release the generation, sessions included */
    s->close_c = s->c;
    s->c = NULL;
}

void
pop3_enter(struct pop3_session *s)
{
    s->depth++;
}

void
pop3_leave(struct pop3_session *s)
{
    if (--s->depth == 0 && s->closed) {
        struct mg_conn *c = s->close_c;

        pop3_session_free(s);
        if (c != NULL)
            pop3_api->conn->close(c);
    }
}

bool
pop3_auth_allowed(const struct pop3_session *s)
{
    return s->plain_auth || pop3_api->conn->peer(s->c)->tls;
}

/* ============================================================= replies */

static void
pop3_vreply(struct pop3_session *s, bool ok, const char *code, const char *fmt,
            va_list ap)
{
    char text[POP3_TEXT_MAX];

    if (s->closed)
        return;
    vsnprintf(text, sizeof(text), fmt, ap);
    if (code != NULL)
        pop3_api->conn->printf(s->c, "%s [%s] %s\r\n", ok ? "+OK" : "-ERR",
                               code, text);
    else
        pop3_api->conn->printf(s->c, "%s %s\r\n", ok ? "+OK" : "-ERR", text);
}

void
pop3_reply(struct pop3_session *s, bool ok, const char *code, const char *fmt,
           ...)
{
    va_list ap;

    va_start(ap, fmt);
    pop3_vreply(s, ok, code, fmt, ap);
    va_end(ap);
}

void
pop3_error(struct pop3_session *s, const char *code, const char *text)
{
    pop3_reply(s, false, code, "%s", text);
    if (++s->errors >= s->st->max_errors) {
        pop3_log(s, MG_LOG_INFO, "too many errors; closing");
        pop3_reply(s, false, NULL, "Too many errors, closing");
        pop3_close(s);
    }
}

/* A handler's reply: one line, +OK or -ERR by the verdict. */
static bool
pop3_reply_usable(const struct mg_reply *r)
{
    if (r->nlines == 0 || r->lines == NULL || r->lines[0] == NULL)
        return false;
    if (strpbrk(r->lines[0], "\r\n") != NULL)
        return false;
    return r->ecode == NULL || strpbrk(r->ecode, "\r\n[] ") == NULL;
}

void
pop3_reply_hook(struct pop3_session *s, enum mg_verdict v, const char *code,
                const char *text)
{
    const struct mg_reply *r = &s->call.reply;
    bool ok = v == MG_PASS || v == MG_ACCEPT;

    if (pop3_reply_usable(r))
        pop3_reply(s, ok, r->ecode, "%s", r->lines[0]);
    else
        pop3_reply(s, ok, code, "%s", text);
}

/* =============================================================== hooks */

void
pop3_view_update(struct pop3_session *s)
{
    if (s->c == NULL)
        return;
    s->view.conn_id = s->id;
    s->view.peer = pop3_api->conn->peer(s->c);
    s->view.listener_tls = s->listener_tls;
    s->view.user = s->mailbox[0] != '\0' ? s->mailbox : NULL;
}

static void
pop3_hook_done(struct mg_hook_call *call, enum mg_verdict v, void *arg)
{
    struct pop3_state *st = arg;
    struct pop3_session *s = pop3_lookup(st, call->conn_id);
    pop3_cont_fn cont;

    if (s == NULL || s->wait != POP3_WAIT_HOOK || &s->call != call)
        return;
    pop3_enter(s);
    s->wait = POP3_WAIT_NONE;
    cont = s->cont;
    s->cont = NULL;
    cont(s, v);
    pop3_process(s);
    pop3_leave(s);
}

void
pop3_hook(struct pop3_session *s, const char *hook, void *data,
          pop3_cont_fn cont)
{
    enum mg_verdict v;

    pop3_view_update(s);
    memset(&s->call, 0, sizeof(s->call));
    s->call.hook = hook;
    s->call.conn_id = s->id;
    s->call.data = data;
    if (!pop3_api->hook_has(hook)) {
        cont(s, MG_PASS);
        return;
    }
    v = pop3_api->hook_run(&s->call, pop3_hook_done, s->st);
    if (v == MG_SUSPEND) {
        s->wait = POP3_WAIT_HOOK;
        s->cont = cont;
        return;
    }
    cont(s, v);
}

/* ================================================================ CAPA */

void
pop3_caps_build(struct pop3_session *s)
{
    size_t n = 0;
    bool auth = pop3_auth_allowed(s);

    s->caps[n++] = "TOP";
    s->caps[n++] = "UIDL";
    if (auth) {
        s->caps[n++] = "USER";
        s->caps[n++] = "SASL PLAIN";
    }
    s->caps[n++] = "RESP-CODES";
    s->caps[n++] = "AUTH-RESP-CODE";
    s->caps[n++] = "PIPELINING";
    if (s->listener_tls == MG_TLS_STARTTLS && !pop3_api->conn->peer(s->c)->tls)
        s->caps[n++] = "STLS";
    s->caps[n++] = "IMPLEMENTATION mailgate";
    s->caps[n] = NULL;
}

static void
pop3_cmd_capa(struct pop3_session *s, const struct pop3_command *cmd)
{
    (void)cmd;
    pop3_caps_build(s);
    pop3_reply(s, true, NULL, "Capability list follows");
    for (size_t i = 0; s->caps[i] != NULL; i++)
        pop3_api->conn->printf(s->c, "%s\r\n", s->caps[i]);
    pop3_api->conn->write(s->c, ".\r\n", 3);
}

static void
pop3_cmd_stls(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (pop3_api->conn->peer(s->c)->tls) {
        pop3_error(s, NULL, "TLS is already active");
        return;
    }
    if (s->listener_tls != MG_TLS_STARTTLS) {
        pop3_error(s, NULL, "STLS is not available on this port");
        return;
    }
    if (cmd->arglen > 0) {
        pop3_error(s, NULL, "Syntax: STLS");
        return;
    }
    pop3_reply(s, true, NULL, "Begin TLS negotiation");
    s->have_user = false;
    pop3_wipe(s->user, sizeof(s->user));
    /* before the call: MG_CONN_TLS_READY may come from inside it */
    s->wait = POP3_WAIT_TLS;
    pop3_enter_state(s, POP3_ST_TLS);
    if (pop3_api->conn->starttls(s->c) != MG_OK)
        pop3_close(s);
}

static void
pop3_cmd_apop(struct pop3_session *s, const struct pop3_command *cmd)
{
    (void)cmd;
    pop3_error(s, NULL, "APOP is not supported (use USER/PASS or AUTH PLAIN)");
}

/* ======================================================= command table */

#define POP3_AUTHSTATE  (1u << POP3_ST_AUTH)
#define POP3_TRANSSTATE (1u << POP3_ST_TRANS)

struct pop3_cmd_entry {
    enum pop3_cmd cmd;
    unsigned states; /* where the command is taken */
    void (*fn)(struct pop3_session *s, const struct pop3_command *cmd);
};

static const struct pop3_cmd_entry pop3_commands[] = {
    {POP3_CMD_CAPA, POP3_AUTHSTATE | POP3_TRANSSTATE, pop3_cmd_capa},
    {POP3_CMD_STLS, POP3_AUTHSTATE, pop3_cmd_stls},
    {POP3_CMD_USER, POP3_AUTHSTATE, pop3_cmd_user},
    {POP3_CMD_PASS, POP3_AUTHSTATE, pop3_cmd_pass},
    {POP3_CMD_AUTH, POP3_AUTHSTATE, pop3_cmd_auth},
    {POP3_CMD_APOP, POP3_AUTHSTATE, pop3_cmd_apop},
    {POP3_CMD_STAT, POP3_TRANSSTATE, pop3_cmd_stat},
    {POP3_CMD_LIST, POP3_TRANSSTATE, pop3_cmd_list},
    {POP3_CMD_UIDL, POP3_TRANSSTATE, pop3_cmd_uidl},
    {POP3_CMD_TOP, POP3_TRANSSTATE, pop3_cmd_top},
    {POP3_CMD_RETR, POP3_TRANSSTATE, pop3_cmd_retr},
    {POP3_CMD_DELE, POP3_TRANSSTATE, pop3_cmd_dele},
    {POP3_CMD_RSET, POP3_TRANSSTATE, pop3_cmd_rset},
    {POP3_CMD_NOOP, POP3_TRANSSTATE, pop3_cmd_noop},
    {POP3_CMD_QUIT, POP3_AUTHSTATE | POP3_TRANSSTATE, pop3_cmd_quit},
};

static void
pop3_command(struct pop3_session *s, const char *line, size_t len)
{
    struct pop3_command cmd;
    const char *why;

    if (pop3_parse_command(line, len, &cmd, &why) != MG_OK) {
        pop3_error(s, NULL, why);
        return;
    }
    if (cmd.cmd == POP3_CMD_UNKNOWN) {
        char verb[16];

        pop3_clean(verb, sizeof(verb), cmd.verb, cmd.verblen);
        pop3_log(s, MG_LOG_DEBUG, "unknown command %s", verb);
        pop3_error(s, NULL, "Unknown command");
        return;
    }
    for (size_t i = 0; i < sizeof(pop3_commands) / sizeof(pop3_commands[0]);
         i++) {
        const struct pop3_cmd_entry *e = &pop3_commands[i];

        if (e->cmd != cmd.cmd)
            continue;
        if (!(e->states & (1u << s->state))) {
            pop3_error(s, NULL,
                       s->state == POP3_ST_AUTH
                           ? "Not logged in"
                           : "Command not valid in this state");
            return;
        }
        e->fn(s, &cmd);
        return;
    }
}

/* ============================================================ the loop */

static bool
pop3_idle_for_shutdown(const struct pop3_session *s)
{
    return s->wait == POP3_WAIT_NONE &&
           (s->state == POP3_ST_AUTH || s->state == POP3_ST_SASL ||
            s->state == POP3_ST_TRANS);
}

static void
pop3_shutdown_close(struct pop3_session *s)
{
    pop3_log(s, MG_LOG_INFO, "shutting down: session closed without UPDATE");
    pop3_reply(s, false, "SYS/TEMP",
               "Server shutting down, no message was deleted");
    pop3_close(s);
}

/* A command line must be complete within idle_timeout of its first byte:
 * the idle timer restarts with every byte, so a client trickling bytes
 * would hold the session (and the mailbox's IN-USE lock) for ever. */
static void
pop3_cmd_deadline(void *arg)
{
    struct pop3_session *s = arg;

    s->cmd_timer = 0;
    if (s->closed)
        return;
    pop3_enter(s);
    pop3_log(s, MG_LOG_INFO, "command line not completed in time; closing");
    pop3_reply(s, false, NULL, "Autologout: command not completed in time");
    pop3_close(s);
    pop3_leave(s);
}

static void
pop3_cmd_deadline_stop(struct pop3_session *s)
{
    if (s->cmd_timer != 0) {
        pop3_api->timer_cancel(s->cmd_timer);
        s->cmd_timer = 0;
    }
}

static void
pop3_cmd_deadline_check(struct pop3_session *s)
{
    const char *in;
    size_t len;

    pop3_api->conn->peek(s->c, &in, &len);
    if (len == 0)
        pop3_cmd_deadline_stop(s);
    else if (s->cmd_timer == 0)
        s->cmd_timer =
            pop3_api->timer_add(s->st->m, s->st->idle_ms, pop3_cmd_deadline, s);
}

void
pop3_process(struct pop3_session *s)
{
    const char *line;
    size_t len;
    enum mg_eol eol;

    while (!s->closed && s->wait == POP3_WAIT_NONE && !s->blocked) {
        int r;

        switch (s->state) {
        case POP3_ST_RETR:
            pop3_retr_step(s);
            continue;
        case POP3_ST_GREET:
        case POP3_ST_TLS:
        case POP3_ST_LOGIN:
        case POP3_ST_UPDATE:
            return;
        default:
            break;
        }
        if ((pop3_api->conn->shutting_down(s->c) || s->closing) &&
            pop3_idle_for_shutdown(s)) {
            pop3_shutdown_close(s);
            return;
        }
        if (pop3_api->conn->write_queued(s->c) > POP3_OUTPUT_MAX) {
            /* the client does not read its replies: back-pressure */
            s->blocked = true;
            pop3_api->conn->pause_read(s->c, true);
            return;
        }
        pop3_api->conn->peek(s->c, &line, &len);
        r = len == 0 ? MG_AGAIN
                     : pop3_api->conn->getline(s->c, &line, &len, &eol);
        if (r == MG_AGAIN) {
            pop3_cmd_deadline_check(s);
            return;
        }
        pop3_cmd_deadline_stop(s);
        if (r == MG_DECLINED) {
            pop3_log(s, MG_LOG_INFO, "command line too long; closing");
            pop3_reply(s, false, NULL, "Line too long, closing");
            pop3_close(s);
            return;
        }
        if (r != MG_OK) {
            pop3_close(s);
            return;
        }
        if (s->state == POP3_ST_SASL) {
            pop3_sasl_line(s, line, len);
            continue;
        }
        pop3_command(s, line, len);
    }
}

/* ========================================================= connection */

static void
pop3_greet_cont(struct pop3_session *s, enum mg_verdict v)
{
    switch (v) {
    case MG_TEMPFAIL:
        pop3_reply_hook(s, v, "SYS/TEMP", "Service not available, closing");
        pop3_close(s);
        return;
    case MG_PERMFAIL:
        pop3_reply_hook(s, v, NULL, "Service refused, closing");
        pop3_close(s);
        return;
    case MG_ACCEPT:
        pop3_reply_hook(s, v, NULL, s->st->greeting);
        break;
    default:
        pop3_reply(s, true, NULL, "%s", s->st->greeting);
        break;
    }
    pop3_enter_state(s, POP3_ST_AUTH);
}

static void
pop3_handler(struct mg_conn *c, enum mg_conn_event ev, void *arg)
{
    struct pop3_session *s = arg;

    (void)c;
    pop3_enter(s);
    switch (ev) {
    case MG_CONN_READABLE:
        pop3_process(s);
        break;
    case MG_CONN_DRAINED:
        if (s->blocked) {
            s->blocked = false;
            pop3_api->conn->pause_read(s->c, false);
            pop3_process(s);
        }
        break;
    case MG_CONN_TLS_READY:
        s->wait = POP3_WAIT_NONE;
        s->have_user = false;
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_log(s, MG_LOG_DEBUG, "TLS ready");
        pop3_process(s);
        break;
    case MG_CONN_TIMEOUT:
        /* RFC 1939 §3: the autologout timer ends the session without
         * entering UPDATE, so no message is removed */
        pop3_reply(s, false, NULL, "Autologout; idle for too long");
        s->closed = true;
        s->c = NULL;
        break;
    case MG_CONN_EOF:
    case MG_CONN_ERROR:
        s->closed = true; /* the core closes the conn */
        s->c = NULL;
        break;
    }
    pop3_leave(s);
}

static void
pop3_session_link(struct pop3_session *s)
{
    struct pop3_session **b = &s->st->buckets[s->id % POP3_BUCKETS];

    s->next = *b;
    if (*b != NULL)
        (*b)->prev = s;
    *b = s;
}

static void
pop3_session_unlink(struct pop3_session *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        s->st->buckets[s->id % POP3_BUCKETS] = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
}

void
pop3_session_accept(struct mg_conn *c, const struct config_setting_t *entry,
                    void *arg)
{
    struct pop3_state *st = arg;
    const struct mg_peer *p;
    struct pop3_session *s;
    uint64_t total = 0;

    pop3_api = st->api;
    p = pop3_api->conn->peer(c);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->st = st;
    s->c = c;
    s->id = p->id;
    s->state = POP3_ST_GREET;
    s->started_ms = pop3_api->now_ms();
    snprintf(s->addr, sizeof(s->addr), "%s", p->addr != NULL ? p->addr : "");
    if (p->tls) {
        s->listener_tls = MG_TLS_IMPLICIT;
    } else if (entry != NULL) {
        const char *mode = pop3_api->setting_string(entry, "tls", "none");

        s->listener_tls =
            strcmp(mode, "starttls") == 0 ? MG_TLS_STARTTLS : MG_TLS_NONE;
    } else {
        s->listener_tls = MG_TLS_STARTTLS; /* the plaintext default */
    }
    if (entry != NULL)
        s->plain_auth =
            pop3_api->setting_bool(entry, "allow_plaintext_auth", false);
    pop3_session_link(s);

    pop3_api->conn->set_handler(c, pop3_handler, s);
    pop3_api->conn->set_line_max(c, POP3_LINE_MAX);
    if (st->session_ms > 0)
        total = st->session_ms;
    pop3_api->conn->set_timeouts(c, st->idle_ms, total);

    pop3_enter(s);
    memset(&s->h.connect, 0, sizeof(s->h.connect));
    s->h.connect.s = &s->view;
    pop3_hook(s, "pop3.connect", &s->h.connect, pop3_greet_cont);
    pop3_process(s);
    pop3_leave(s);
}

void
pop3_session_shutdown(struct mg_conn *c, void *arg)
{
    struct pop3_state *st = arg;
    uint64_t id = pop3_api->conn->peer(c)->id;
    struct pop3_session *s = pop3_find(st, id);

    if (s == NULL) {
        if (pop3_takeover_shutdown(st, c, id))
            return;
        pop3_api->conn->printf(c, "-ERR [SYS/TEMP] Server shutting down\r\n");
        pop3_api->conn->close(c);
        return;
    }
    pop3_enter(s);
    if (pop3_idle_for_shutdown(s) || s->state == POP3_ST_GREET ||
        s->state == POP3_ST_LOGIN || s->state == POP3_ST_TLS)
        pop3_shutdown_close(s);
    else
        s->closing = true; /* after the response or the UPDATE in flight */
    pop3_leave(s);
}

static void
pop3_session_free(struct pop3_session *s)
{
    if (s->wait == POP3_WAIT_HOOK) {
        /* end the parked run now: `call` lives in this session */
        s->wait = POP3_WAIT_NONE;
        pop3_api->hook_resume(s->call.id, MG_TEMPFAIL, NULL);
    }
    pop3_cmd_deadline_stop(s);
    if (s->delay_timer != 0)
        pop3_api->timer_cancel(s->delay_timer);
    pop3_retr_free(s);
    pop3_auth_free(s);
    pop3_wipe(s->user, sizeof(s->user));
    pop3_session_unlink(s);
    free(s);
}

void
pop3_sessions_free_all(struct pop3_state *st)
{
    for (size_t i = 0; i < POP3_BUCKETS; i++) {
        while (st->buckets[i] != NULL) {
            struct pop3_session *s = st->buckets[i];

            s->c = NULL;
            if (s->wait == POP3_WAIT_HOOK)
                s->wait = POP3_WAIT_NONE; /* the core cancelled it */
            pop3_session_free(s);
        }
    }
    pop3_takeovers_free(st);
}
