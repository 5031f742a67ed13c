/*
 * modules/smtp/smtp_envelope.c -- the envelope: MAIL and RCPT with the
 * recipient rules (local mailboxes, networks, TLS, limits) and the transaction
 * state.
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mailgate/module.h>

#include "smtp_session.h"

void
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

/* Back to READY (or INIT before EHLO), the transaction forgotten. */
void
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
void
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

void
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

void
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

void
smtp_rcpt_release(struct smtp_session *s)
{
    if (s->pend_have_info) {
        smtp_api->store->mailbox_info_free(&s->pend_info);
        s->pend_have_info = false;
    }
    free(s->pend_mbox);
    s->pend_mbox = NULL;
}

/* A refused recipient: the reply, and a log line that tells the
 * administrator why a sender's copies bounce (the mailbox id of a known
 * mailbox; the address only with log_addresses). */
static void
smtp_rcpt_refuse(struct smtp_session *s, int code, const char *ecode,
                 const char *text)
{
    char who[SMTP_PATH_MAX + 1];

    if (s->st->log_addresses && s->pend_name != NULL)
        smtp_clean(who, sizeof(who), s->pend_name, strlen(s->pend_name));
    else if (s->pend_have_info)
        snprintf(who, sizeof(who), "mailbox %s", s->pend_info.id);
    else
        snprintf(who, sizeof(who), "%s",
                 s->pend_mbox != NULL ? "an unknown mailbox"
                                      : "another domain");
    smtp_log(s, MG_LOG_INFO, "recipient refused (%s): %d %s %s", who, code,
             ecode, text);
    if (code >= 500)
        smtp_error(s, code, ecode, text);
    else
        smtp_reply(s, code, ecode, "%s", text);
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
        smtp_rcpt_refuse(s, 550, "5.7.1", "Relaying denied");
    } else if (!s->st->local_delivery) {
        smtp_rcpt_refuse(s, 550, "5.7.1", "Local delivery is disabled");
    } else if (smtp_api->store == NULL) {
        smtp_reply(s, 451, "4.3.0", "Mailbox lookup failed, try again later");
    } else if (mi == NULL) {
        smtp_rcpt_refuse(s, 550, "5.1.1", "Mailbox unknown");
    } else if (!mi->active) {
        smtp_rcpt_refuse(s, 450, "4.2.1", "Mailbox suspended, try again later");
    } else if (!mi->accept_journal) {
        smtp_rcpt_refuse(s, 550, "5.7.1",
                         "Mailbox does not accept journal mail");
    } else {
        bool net_ok = mi->nnetworks == 0;
        const char *neterr = NULL; /* networks are checked when set */

        for (size_t i = 0; i < mi->nnetworks && !net_ok; i++)
            net_ok = smtp_api->net_match(mi->networks[i],
                                         (const struct sockaddr *)&p->sa,
                                         &neterr) == 1;
        if (!net_ok)
            smtp_rcpt_refuse(s, 550, "5.7.1", "Sender network not allowed");
        else if (mi->require_tls && !p->tls)
            smtp_rcpt_refuse(s, 550, "5.7.1", "TLS required for this mailbox");
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

void
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
