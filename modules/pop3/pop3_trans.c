/*
 * modules/pop3/pop3_trans.c -- the TRANSACTION commands that answer from
 * the session's snapshot (STAT, LIST, UIDL, DELE, RSET, NOOP) and QUIT
 * with its UPDATE: the marked messages are deleted in one durable store
 * commit before +OK; on failure nothing is deleted and the client hears
 * -ERR [SYS/TEMP].
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "pop3.h"
#include "pop3_engine.h"

const struct mg_msg_entry *
pop3_message(struct pop3_session *s, const char *arg, size_t len, uint32_t *n_r)
{
    uint32_t n;

    if (pop3_parse_msgno(arg, len, &n) != MG_OK) {
        pop3_error(s, NULL, "Invalid message number");
        return NULL;
    }
    if (n > s->nmsgs) {
        pop3_error(s, NULL, "No such message");
        return NULL;
    }
    if (s->deleted[n - 1]) {
        pop3_error(s, NULL, "Message is deleted");
        return NULL;
    }
    *n_r = n;
    return &s->msgs[n - 1];
}

void
pop3_cmd_stat(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (cmd->arglen > 0) {
        pop3_error(s, NULL, "Syntax: STAT");
        return;
    }
    pop3_reply(s, true, NULL, "%u %llu", (unsigned)(s->nmsgs - s->ndeleted),
               (unsigned long long)(s->bytes - s->deleted_bytes));
}

/* LIST and UIDL share their shape: one message, or all undeleted ones. */
static void
pop3_listing(struct pop3_session *s, const struct pop3_command *cmd, bool uidl)
{
    const struct mg_msg_entry *m;
    uint32_t n;

    if (cmd->arglen > 0) {
        m = pop3_message(s, cmd->arg, cmd->arglen, &n);
        if (m == NULL)
            return;
        if (uidl)
            pop3_reply(s, true, NULL, "%u %s", (unsigned)n, m->uidl);
        else
            pop3_reply(s, true, NULL, "%u %llu", (unsigned)n,
                       (unsigned long long)m->size);
        return;
    }
    if (uidl)
        pop3_reply(s, true, NULL, "Unique-ID listing follows");
    else
        pop3_reply(s, true, NULL, "%u messages (%llu octets)",
                   (unsigned)(s->nmsgs - s->ndeleted),
                   (unsigned long long)(s->bytes - s->deleted_bytes));
    for (n = 0; n < s->nmsgs; n++) {
        if (s->deleted[n])
            continue;
        if (uidl)
            pop3_api->conn->printf(s->c, "%u %s\r\n", (unsigned)n + 1,
                                   s->msgs[n].uidl);
        else
            pop3_api->conn->printf(s->c, "%u %llu\r\n", (unsigned)n + 1,
                                   (unsigned long long)s->msgs[n].size);
    }
    pop3_api->conn->write(s->c, ".\r\n", 3);
}

void
pop3_cmd_list(struct pop3_session *s, const struct pop3_command *cmd)
{
    pop3_listing(s, cmd, false);
}

void
pop3_cmd_uidl(struct pop3_session *s, const struct pop3_command *cmd)
{
    pop3_listing(s, cmd, true);
}

void
pop3_cmd_dele(struct pop3_session *s, const struct pop3_command *cmd)
{
    uint32_t n;

    if (pop3_message(s, cmd->arg, cmd->arglen, &n) == NULL)
        return;
    s->deleted[n - 1] = true;
    s->ndeleted++;
    s->deleted_bytes += s->msgs[n - 1].size;
    pop3_reply(s, true, NULL, "Message %u deleted", (unsigned)n);
}

void
pop3_cmd_rset(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (cmd->arglen > 0) {
        pop3_error(s, NULL, "Syntax: RSET");
        return;
    }
    memset(s->deleted, 0, s->nmsgs * sizeof(*s->deleted));
    s->ndeleted = 0;
    s->deleted_bytes = 0;
    pop3_reply(s, true, NULL, "%u messages (%llu octets)", (unsigned)s->nmsgs,
               (unsigned long long)s->bytes);
}

void
pop3_cmd_noop(struct pop3_session *s, const struct pop3_command *cmd)
{
    if (cmd->arglen > 0) {
        pop3_error(s, NULL, "Syntax: NOOP");
        return;
    }
    pop3_reply(s, true, NULL, "Nothing done");
}

/* An UPDATE in flight: it holds the mailbox's IN-USE lock until the
 * commit is done, even when the session is gone by then. */
struct pop3_update {
    struct pop3_state *st;
    char mailbox[33];
};

/* UPDATE: the deletions are durable before +OK; on failure nothing is
 * lost (the messages stay) and the client hears a temporary error. */
static void
pop3_update_done(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct pop3_update *u = arg;
    struct pop3_session *s = pop3_lookup(u->st, conn_id);

    pop3_auth_lock_release(u->mailbox);
    free(u);
    if (s == NULL || s->wait != POP3_WAIT_COMMIT)
        return; /* the conn is gone; the deletions committed anyway */
    pop3_enter(s);
    s->wait = POP3_WAIT_NONE;
    if (res->status == MG_OK) {
        pop3_log(s, MG_LOG_INFO, "mailbox %s: %u messages deleted", s->mailbox,
                 (unsigned)s->ndeleted);
        pop3_auth_free(s); /* the IN-USE lock goes before the answer */
        pop3_reply(s, true, NULL, "Logging out, messages deleted");
    } else {
        pop3_log(s, MG_LOG_WARNING, "mailbox %s: deleting failed: %s",
                 s->mailbox, res->error != NULL ? res->error : "unknown");
        pop3_auth_free(s);
        pop3_reply(s, false, "SYS/TEMP",
                   "Deleting failed, no message was deleted; try again later");
    }
    pop3_close(s);
    pop3_leave(s);
}

void
pop3_cmd_quit(struct pop3_session *s, const struct pop3_command *cmd)
{
    struct pop3_update *u;
    uint64_t *ids;
    size_t n = 0;

    (void)cmd;
    if (s->state != POP3_ST_TRANS || s->ndeleted == 0) {
        pop3_auth_free(s);
        pop3_reply(s, true, NULL, "Logging out");
        pop3_close(s);
        return;
    }
    pop3_enter_state(s, POP3_ST_UPDATE);
    ids = calloc(s->ndeleted, sizeof(*ids));
    if (ids == NULL)
        abort();
    for (uint32_t i = 0; i < s->nmsgs; i++) {
        if (s->deleted[i])
            ids[n++] = s->msgs[i].id;
    }
    u = calloc(1, sizeof(*u));
    if (u == NULL)
        abort();
    u->st = s->st;
    snprintf(u->mailbox, sizeof(u->mailbox), "%s", s->mailbox);
    s->wait = POP3_WAIT_COMMIT;
    if (pop3_api->store->msg_delete(s->mailbox, ids, n, s->id, pop3_update_done,
                                    u) != MG_OK) {
        free(u);
        s->wait = POP3_WAIT_NONE;
        pop3_auth_free(s);
        pop3_reply(s, false, "SYS/TEMP",
                   "Deleting failed, no message was deleted; try again later");
        pop3_close(s);
    } else {
        pop3_auth_lock_handover(s);
    }
    free(ids);
}
