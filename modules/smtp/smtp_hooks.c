/*
 * modules/smtp/smtp_hooks.c -- running the hooks of doc/hooks.md: the session
 * view handlers see, suspended runs and their continuations.
 */
#include "config.h"

#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

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
void
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
enum mg_verdict
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

/* A failed or abandoned data phase: smtp.data.end with MG_ERROR, so that
 * handlers can let go of what they hold (the verdict is ignored). */
void
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
