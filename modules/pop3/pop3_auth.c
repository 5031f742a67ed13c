/*
 * modules/pop3/pop3_auth.c -- logins: USER/PASS and AUTH PLAIN (RFC 5034),
 * the pop3.login hook (takeover for the proxy), the engine's own login
 * (the mailbox key unlocked on the worker pool), the IN-USE lock and the
 * session's snapshot of the mailbox.
 *
 * A wrong password and an unknown mailbox are indistinguishable: both
 * cost one Argon2id derivation (the store spends it on a dummy key for an
 * unknown id), then the same auth_failure_delay, then the same -ERR [AUTH].
 * USER answers +OK whatever the name.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mailgate/module.h>

#include "pop3.h"
#include "pop3_engine.h"

#define POP3_NO_TLS                                                       \
    "Credentials are refused without TLS: use STLS first, or connect to " \
    "port 995"

/* ================================================================ locks */

/* Mailboxes with an archiver session (across generations: a session of
 * the old generation still holds its mailbox after a reload). */
struct pop3_lock {
    struct pop3_lock *next;
    char id[33];
};

static struct pop3_lock *pop3_locks;

static bool
pop3_lock_take(const char *id)
{
    struct pop3_lock *l;

    for (l = pop3_locks; l != NULL; l = l->next) {
        if (strcmp(l->id, id) == 0)
            return false;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        abort();
    snprintf(l->id, sizeof(l->id), "%s", id);
    l->next = pop3_locks;
    pop3_locks = l;
    return true;
}

static void
pop3_lock_release(const char *id)
{
    for (struct pop3_lock **pp = &pop3_locks; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->id, id) == 0) {
            struct pop3_lock *l = *pp;

            *pp = l->next;
            free(l);
            return;
        }
    }
}

/* ============================================================ takeover */

/** A conn a pop3.login handler took over: only its SIGTERM is ours. */
struct pop3_takeover {
    struct pop3_takeover *next;
    uint64_t conn_id;
    void (*on_shutdown)(struct mg_conn *c, void *arg);
    void *arg;
};

bool
pop3_takeover_shutdown(struct pop3_state *st, struct mg_conn *c, uint64_t id)
{
    for (struct pop3_takeover *t = st->taken; t != NULL; t = t->next) {
        if (t->conn_id == id && t->on_shutdown != NULL) {
            t->on_shutdown(c, t->arg);
            return true;
        }
    }
    return false;
}

void
pop3_takeovers_free(struct pop3_state *st)
{
    struct pop3_takeover *t;

    while ((t = st->taken) != NULL) {
        st->taken = t->next;
        free(t);
    }
}

static void
pop3_secrets_wipe(struct pop3_session *s)
{
    pop3_wipe(s->pass, sizeof(s->pass));
    pop3_wipe(s->sasl, sizeof(s->sasl));
    s->login_user = s->login_pass = s->login_authzid = NULL;
}

void
pop3_auth_free(struct pop3_session *s)
{
    pop3_secrets_wipe(s);
    if (s->key != NULL) {
        pop3_api->store->key_free(s->key);
        s->key = NULL;
    }
    if (s->locked) {
        pop3_lock_release(s->mailbox);
        s->locked = false;
    }
    free(s->msgs);
    free(s->deleted);
    s->msgs = NULL;
    s->deleted = NULL;
    s->nmsgs = s->ndeleted = 0;
}

void
pop3_auth_lock_handover(struct pop3_session *s)
{
    s->locked = false;
}

void
pop3_auth_lock_release(const char *mailbox)
{
    pop3_lock_release(mailbox);
}

static void
pop3_takeover(struct pop3_session *s)
{
    struct pop3_state *st = s->st;
    struct mg_conn *c = s->c;
    mg_conn_fn fn = s->h.login.handler;
    void *arg = s->h.login.handler_arg;
    struct pop3_takeover *t, **pp;
    const char *in;
    size_t len;

    if (s->call.reply.nlines > 0)
        pop3_reply_hook(s, MG_ACCEPT, NULL, "Logged in");
    /* forget conns that are gone, remember this one for SIGTERM */
    for (pp = &st->taken; *pp != NULL;) {
        if (pop3_api->conn->find((*pp)->conn_id) == NULL) {
            t = *pp;
            *pp = t->next;
            free(t);
        } else {
            pp = &(*pp)->next;
        }
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    t->conn_id = s->id;
    t->on_shutdown = s->h.login.on_shutdown;
    t->arg = arg;
    t->next = st->taken;
    st->taken = t;

    pop3_log(s, MG_LOG_DEBUG, "session taken over by a pop3.login handler");
    pop3_api->conn->set_line_max(c, POP3_LINE_MAX);
    pop3_api->conn->set_handler(c, fn, arg);
    s->closed = true; /* freed without closing the conn */
    s->c = NULL;
    pop3_api->conn->peek(c, &in, &len);
    if (len > 0)
        fn(c, MG_CONN_READABLE, arg);
}

/* ======================================================= own login */

static void
pop3_fail_answer(struct pop3_session *s)
{
    pop3_enter_state(s, POP3_ST_AUTH);
    pop3_error(s, "AUTH", "Authentication failed");
}

static void
pop3_delay_done(void *arg)
{
    struct pop3_session *s = arg;

    s->delay_timer = 0;
    if (s->closed)
        return;
    pop3_enter(s);
    s->wait = POP3_WAIT_NONE;
    pop3_fail_answer(s);
    pop3_process(s);
    pop3_leave(s);
}

static void
pop3_login_failed(struct pop3_session *s)
{
    if (s->st->auth_delay_ms == 0) {
        pop3_fail_answer(s);
        return;
    }
    s->wait = POP3_WAIT_DELAY;
    s->delay_timer =
        pop3_api->timer_add(s->st->m, s->st->auth_delay_ms, pop3_delay_done, s);
}

/* Logged in: take the lock and the snapshot the session works on. */
static void
pop3_logged_in(struct pop3_session *s, struct mg_mbox_key *key)
{
    struct mg_msg_entry *list = NULL;
    const char *err = NULL;
    size_t n = 0;

    if (!pop3_lock_take(s->mailbox)) {
        pop3_api->store->key_free(key);
        pop3_log(s, MG_LOG_INFO, "mailbox %s: another session is active",
                 s->mailbox);
        s->mailbox[0] = '\0';
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply(s, false, "IN-USE",
                   "Another session is using this mailbox; try again later");
        return;
    }
    s->locked = true;
    s->key = key;
    if (pop3_api->store->msg_list(s->mailbox, &list, &n, &err) != MG_OK ||
        n > UINT32_MAX) {
        pop3_log(s, MG_LOG_WARNING, "mailbox %s: listing failed: %s",
                 s->mailbox, err != NULL ? err : "too many messages");
        free(list);
        pop3_auth_free(s);
        s->mailbox[0] = '\0';
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply(s, false, "SYS/TEMP",
                   "Mailbox unavailable; try again later");
        return;
    }
    s->msgs = list;
    s->nmsgs = (uint32_t)n;
    s->deleted = calloc(n + 1, sizeof(*s->deleted));
    if (s->deleted == NULL)
        abort();
    s->bytes = 0;
    for (size_t i = 0; i < n; i++)
        s->bytes += list[i].size;
    pop3_throttle_success(s->st, pop3_api->conn->peer(s->c), s->mailbox);
    pop3_enter_state(s, POP3_ST_TRANS);
    pop3_log(s, MG_LOG_INFO, "mailbox %s: logged in (%s), %u messages",
             s->mailbox, s->mech, (unsigned)s->nmsgs);
    pop3_reply(s, true, NULL, "Logged in, %u messages (%llu octets)",
               (unsigned)s->nmsgs, (unsigned long long)s->bytes);
}

static void
pop3_unlock_done(uint64_t conn_id, struct mg_mbox_key *key, int status,
                 void *arg)
{
    struct pop3_state *st = arg;
    struct pop3_session *s = pop3_lookup(st, conn_id);

    if (s == NULL || s->wait != POP3_WAIT_UNLOCK) {
        if (key != NULL)
            pop3_api->store->key_free(key);
        return;
    }
    pop3_enter(s);
    s->wait = POP3_WAIT_NONE;
    if (status == MG_OK && key != NULL) {
        pop3_logged_in(s, key);
    } else if (status == MG_DECLINED) {
        pop3_log(s, MG_LOG_INFO, "login failed (%s)", s->mech);
        pop3_throttle_fail(st, pop3_api->conn->peer(s->c), s->thname);
        s->mailbox[0] = '\0';
        pop3_login_failed(s);
    } else {
        if (key != NULL)
            pop3_api->store->key_free(key);
        s->mailbox[0] = '\0';
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply(s, false, "SYS/TEMP", "Login unavailable; try again later");
    }
    pop3_process(s);
    pop3_leave(s);
}

static void
pop3_own_login(struct pop3_session *s)
{
    const struct mg_peer *p = pop3_api->conn->peer(s->c);
    const char *user = s->login_user;
    char id[33];

    if (pop3_login_mailbox(user, strlen(user), s->st->email_domain, id) !=
        MG_OK)
        id[0] = '\0'; /* no such mailbox: the store spends a dummy unlock */
    /* throttled by address and by (address, name): never by name alone,
     * or anyone could lock the archiver out of its mailbox */
    snprintf(s->thname, sizeof(s->thname), "%s", id[0] != '\0' ? id : user);
    if (pop3_throttled(s->st, p, s->thname)) {
        pop3_secrets_wipe(s);
        pop3_log(s, MG_LOG_INFO, "login refused: too many failures");
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_error(s, "SYS/TEMP",
                   "Too many failed logins from your address; try again "
                   "later");
        return;
    }
    snprintf(s->mailbox, sizeof(s->mailbox), "%s", id);
    s->wait = POP3_WAIT_UNLOCK;
    if (pop3_api->store->key_unlock(id[0] != '\0' ? id : "-", s->login_pass,
                                    s->id, pop3_unlock_done, s->st) != MG_OK) {
        s->wait = POP3_WAIT_NONE;
        s->mailbox[0] = '\0';
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply(s, false, "SYS/TEMP", "Login unavailable; try again later");
    }
    pop3_secrets_wipe(s);
}

static void
pop3_login_cont(struct pop3_session *s, enum mg_verdict v)
{
    switch (v) {
    case MG_ACCEPT:
        pop3_secrets_wipe(s);
        if (s->h.login.handler == NULL) {
            pop3_log(s, MG_LOG_ERROR,
                     "pop3.login: a handler took the session over without a "
                     "conn handler");
            pop3_enter_state(s, POP3_ST_AUTH);
            pop3_reply(s, false, "SYS/TEMP", "Login unavailable");
            return;
        }
        pop3_takeover(s);
        return;
    case MG_TEMPFAIL:
        pop3_secrets_wipe(s);
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply_hook(s, v, "SYS/TEMP", "Login unavailable; try again later");
        return;
    case MG_PERMFAIL:
        pop3_secrets_wipe(s);
        pop3_enter_state(s, POP3_ST_AUTH);
        pop3_reply_hook(s, v, "AUTH", "Authentication failed");
        s->errors++;
        return;
    default:
        pop3_own_login(s);
        return;
    }
}

/* Credentials are complete: pop3.login first, then the engine's own. */
static void
pop3_login(struct pop3_session *s, const char *mech)
{
    snprintf(s->mech, sizeof(s->mech), "%s", mech);
    pop3_enter_state(s, POP3_ST_LOGIN);
    pop3_caps_build(s);
    memset(&s->h.login, 0, sizeof(s->h.login));
    s->h.login.s = &s->view;
    s->h.login.mechanism = s->mech;
    s->h.login.authzid = s->login_authzid != NULL ? s->login_authzid : "";
    s->h.login.user = s->login_user;
    s->h.login.password = s->login_pass;
    s->h.login.caps = s->caps;
    pop3_hook(s, "pop3.login", &s->h.login, pop3_login_cont);
}

/* ============================================================ commands */

void
pop3_cmd_user(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (!pop3_auth_allowed(s)) {
        pop3_error(s, NULL, POP3_NO_TLS);
        return;
    }
    if (cmd->arglen == 0 || cmd->arglen > POP3_ARG_MAX) {
        pop3_error(s, NULL, "Syntax: USER name");
        return;
    }
    memcpy(s->user, cmd->arg, cmd->arglen);
    s->user[cmd->arglen] = '\0';
    s->have_user = true;
    pop3_reply(s, true, NULL, "Send your password");
}

void
pop3_cmd_pass(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (!pop3_auth_allowed(s)) {
        pop3_error(s, NULL, POP3_NO_TLS);
        return;
    }
    if (!s->have_user) {
        pop3_error(s, NULL, "Send USER first");
        return;
    }
    s->have_user = false;
    if (cmd->arglen == 0 || cmd->arglen > POP3_SECRET_MAX) {
        pop3_error(s, "AUTH", "Authentication failed");
        return;
    }
    memcpy(s->pass, cmd->arg, cmd->arglen);
    s->pass[cmd->arglen] = '\0';
    s->login_user = s->user;
    s->login_pass = s->pass;
    s->login_authzid = "";
    pop3_login(s, "USER");
}

/* Decode a PLAIN response and log in, or answer why not. */
static void
pop3_plain(struct pop3_session *s, const char *b64, size_t len)
{
    const char *authzid, *authcid, *passwd;

    if (pop3_sasl_plain(b64, len, s->sasl, sizeof(s->sasl), &authzid, &authcid,
                        &passwd) != MG_OK ||
        strlen(authcid) > POP3_ARG_MAX) {
        pop3_wipe(s->sasl, sizeof(s->sasl));
        pop3_error(s, NULL, "Invalid SASL PLAIN response");
        return;
    }
    snprintf(s->user, sizeof(s->user), "%s", authcid);
    s->login_user = s->user;
    s->login_pass = passwd;
    s->login_authzid = authzid;
    pop3_login(s, "PLAIN");
}

void
pop3_cmd_auth(struct pop3_session *s, const struct pop3_command *cmd)
{
    const char *sp;
    size_t mlen;

    if (cmd->arglen == 0) {
        /* the mechanism list (RFC 1734 practice) */
        pop3_reply(s, true, NULL, "Mechanisms follow");
        if (pop3_auth_allowed(s))
            pop3_api->conn->write(s->c, "PLAIN\r\n", 7);
        pop3_api->conn->write(s->c, ".\r\n", 3);
        return;
    }
    sp = memchr(cmd->arg, ' ', cmd->arglen);
    mlen = sp != NULL ? (size_t)(sp - cmd->arg) : cmd->arglen;
    if (mlen != 5 || strncasecmp(cmd->arg, "PLAIN", 5) != 0) {
        pop3_error(s, NULL, "Unsupported authentication mechanism");
        return;
    }
    if (!pop3_auth_allowed(s)) {
        pop3_error(s, NULL, POP3_NO_TLS);
        return;
    }
    s->have_user = false;
    if (sp != NULL) {
        const char *ir = sp + 1;
        size_t irlen = cmd->arglen - mlen - 1;

        if (irlen == 1 && ir[0] == '=') {
            pop3_error(s, NULL, "Invalid SASL PLAIN response");
            return;
        }
        pop3_plain(s, ir, irlen);
        return;
    }
    pop3_enter_state(s, POP3_ST_SASL);
    pop3_api->conn->set_line_max(s->c, POP3_AUTH_LINE_MAX);
    pop3_api->conn->write(s->c, "+ \r\n", 4);
}

void
pop3_sasl_line(struct pop3_session *s, const char *line, size_t len)
{
    pop3_api->conn->set_line_max(s->c, POP3_LINE_MAX);
    pop3_enter_state(s, POP3_ST_AUTH);
    if (len == 1 && line[0] == '*') {
        pop3_error(s, NULL, "Authentication cancelled");
        return;
    }
    pop3_plain(s, line, len);
}
