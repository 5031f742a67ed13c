/*
 * modules/smtp/smtp_command.c -- command dispatch and the commands without a
 * file of their own (EHLO/HELO, STARTTLS, RSET, NOOP, QUIT, VRFY, ...).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

static void
smtp_caps_build(struct smtp_session *s)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);
    size_t n = 0;

    snprintf(s->size_cap, sizeof(s->size_cap), "SIZE %" PRIu64,
             s->st->max_message_size);
    s->caps[n++] = "PIPELINING";
    s->caps[n++] = s->size_cap;
    s->caps[n++] = "8BITMIME";
    s->caps[n++] = "SMTPUTF8";
    s->caps[n++] = "ENHANCEDSTATUSCODES";
    s->caps[n++] = "CHUNKING";
    if (!p->tls && s->listener_tls == MG_TLS_STARTTLS)
        s->caps[n++] = "STARTTLS";
    s->auth_offered = (p->tls || s->plain_auth) &&
                      smtp_api->hook_has("smtp.auth") && s->auth_user == NULL;
    if (s->auth_offered)
        s->caps[n++] = "AUTH PLAIN LOGIN";
    s->caps[n] = NULL;
}

static void
smtp_ehlo_cont(struct smtp_session *s, enum mg_verdict v)
{
    const char *lines[SMTP_CAPS_MAX + 1];
    struct mg_reply r = {.code = 250};
    size_t n = 0;
    bool esmtp;

    if (v == MG_TEMPFAIL) {
        smtp_reply_hook(s, v, 0, 451, "4.3.0",
                        "Temporary failure, try again later");
        return;
    }
    if (v == MG_PERMFAIL) {
        smtp_reply_hook(s, v, 0, 550, "5.7.1", "Refused");
        return;
    }
    /* read the hook data first: in a BDAT transaction the reset runs
     * smtp.data.end, whose data shares s->h (tests/fuzz/fuzz_session) */
    esmtp = s->h.ehlo.esmtp;
    smtp_txn_reset(s);
    free(s->helo);
    s->helo = s->pend_name;
    s->pend_name = NULL;
    s->esmtp = esmtp;
    lines[n++] = s->st->hostname;
    if (s->esmtp) {
        for (size_t i = 0; s->caps[i] != NULL; i++)
            lines[n++] = s->caps[i];
    }
    r.nlines = n;
    r.lines = lines;
    smtp_api->conn->write_reply(s->c, &r);
    smtp_api->conn->set_line_max(
        s->c, s->esmtp && s->auth_offered ? SMTP_AUTH_LINE_MAX : SMTP_LINE_MAX);
    smtp_enter_state(s, SMTP_ST_READY);
}

static void
smtp_cmd_helo(struct smtp_session *s, const struct smtp_command *cmd)
{
    char name[SMTP_DOMAIN_MAX + 3];
    struct smtp_error err;

    if (smtp_parse_helo(cmd->arg, cmd->arglen, name, sizeof(name), &err) !=
        MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    free(s->pend_name);
    s->pend_name = smtp_strdup(name);
    smtp_caps_build(s);
    memset(&s->h.ehlo, 0, sizeof(s->h.ehlo));
    s->h.ehlo.s = &s->view;
    s->h.ehlo.name = s->pend_name;
    s->h.ehlo.esmtp = cmd->cmd == SMTP_CMD_EHLO;
    s->h.ehlo.caps = s->caps;
    smtp_hook(s, "smtp.ehlo", &s->h.ehlo, smtp_ehlo_cont);
}

static void
smtp_cmd_starttls(struct smtp_session *s, const struct smtp_command *cmd)
{
    const struct mg_peer *p = smtp_api->conn->peer(s->c);

    if (p->tls) {
        smtp_error(s, 503, "5.5.1", "TLS already active");
        return;
    }
    if (s->listener_tls != MG_TLS_STARTTLS) {
        smtp_error(s, 502, "5.5.1", "STARTTLS not available");
        return;
    }
    if (cmd->arglen > 0) {
        smtp_error(s, 501, "5.5.4", "Syntax: STARTTLS");
        return;
    }
    smtp_reply(s, 220, "2.0.0", "Ready to start TLS");
    smtp_txn_reset(s);
    /* before the call: MG_CONN_TLS_READY may come from inside it */
    s->wait = SMTP_WAIT_TLS;
    smtp_enter_state(s, SMTP_ST_TLS);
    if (smtp_api->conn->starttls(s->c) != MG_OK)
        smtp_close(s);
}

static void
smtp_cmd_rset(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_txn_reset(s);
    smtp_reply(s, 250, "2.0.0", "Ok");
}

static void
smtp_cmd_noop(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 250, "2.0.0", "Ok");
}

void
smtp_cmd_quit(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 221, "2.0.0", "Bye");
    smtp_close(s);
}

static void
smtp_cmd_vrfy(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 252, "2.5.2", "Cannot VRFY user");
}

static void
smtp_cmd_expn(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_error(s, 502, "5.5.1", "EXPN not available");
}

static void
smtp_cmd_help(struct smtp_session *s, const struct smtp_command *cmd)
{
    (void)cmd;
    smtp_reply(s, 214, "2.0.0", "See RFC 5321 (mailgate journal target)");
}

struct smtp_cmd_entry {
    enum smtp_cmd cmd;
    unsigned states; /* where the command is taken at all */
    void (*fn)(struct smtp_session *s, const struct smtp_command *cmd);
};

static const struct smtp_cmd_entry smtp_commands[] = {
    {SMTP_CMD_HELO, SMTP_CMDSTATES, smtp_cmd_helo},
    {SMTP_CMD_EHLO, SMTP_CMDSTATES, smtp_cmd_helo},
    {SMTP_CMD_STARTTLS, (1u << SMTP_ST_INIT) | (1u << SMTP_ST_READY),
     smtp_cmd_starttls},
    {SMTP_CMD_AUTH, (1u << SMTP_ST_INIT) | (1u << SMTP_ST_READY),
     smtp_cmd_auth},
    {SMTP_CMD_MAIL, SMTP_CMDSTATES, smtp_cmd_mail},
    {SMTP_CMD_RCPT, SMTP_CMDSTATES, smtp_cmd_rcpt},
    {SMTP_CMD_DATA, SMTP_CMDSTATES, smtp_cmd_data},
    {SMTP_CMD_BDAT, SMTP_CMDSTATES, smtp_cmd_bdat},
    {SMTP_CMD_RSET, SMTP_CMDSTATES | (1u << SMTP_ST_REFUSED), smtp_cmd_rset},
    {SMTP_CMD_NOOP, SMTP_CMDSTATES, smtp_cmd_noop},
    {SMTP_CMD_QUIT, SMTP_CMDSTATES | (1u << SMTP_ST_REFUSED), smtp_cmd_quit},
    {SMTP_CMD_VRFY, SMTP_CMDSTATES, smtp_cmd_vrfy},
    {SMTP_CMD_EXPN, SMTP_CMDSTATES, smtp_cmd_expn},
    {SMTP_CMD_HELP, SMTP_CMDSTATES, smtp_cmd_help},
};

void
smtp_command(struct smtp_session *s, const char *line, size_t len)
{
    struct smtp_command cmd;
    struct smtp_error err;
    size_t i;

    if (smtp_parse_command(line, len, &cmd, &err) != MG_OK) {
        smtp_error(s, err.code, err.ecode, err.text);
        return;
    }
    if (cmd.cmd == SMTP_CMD_UNKNOWN) {
        char verb[24];

        smtp_clean(verb, sizeof(verb), cmd.verb,
                   cmd.verblen < 20 ? cmd.verblen : 20);
        smtp_log(s, MG_LOG_DEBUG, "unknown command %s", verb);
        smtp_error(s, 500, "5.5.1", "Command unrecognized");
        return;
    }
    for (i = 0; i < sizeof(smtp_commands) / sizeof(smtp_commands[0]); i++) {
        const struct smtp_cmd_entry *e = &smtp_commands[i];

        if (e->cmd != cmd.cmd)
            continue;
        if (!(e->states & (1u << s->state))) {
            smtp_error(s, 503, "5.5.1", "Bad sequence of commands");
            return;
        }
        e->fn(s, &cmd);
        return;
    }
    smtp_error(s, 502, "5.5.1", "Command not implemented");
}
