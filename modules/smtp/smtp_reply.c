/*
 * modules/smtp/smtp_reply.c -- replies: the engine's own, a hook handler's, and
 * those kept for later (a refusal inside the data is answered after it).
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

void
smtp_reply(struct smtp_session *s, int code, const char *ecode, const char *fmt,
           ...)
{
    char text[SMTP_TEXT_MAX];
    const char *lines[1] = {text};
    struct mg_reply r = {
        .code = code, .ecode = ecode, .nlines = 1, .lines = lines};
    va_list ap;

    if (s->closed)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    smtp_api->conn->write_reply(s->c, &r);
}

void
smtp_reply_saved(struct smtp_session *s, const struct smtp_saved *r)
{
    struct mg_reply rep = {.code = r->code,
                           .ecode = r->ecode,
                           .nlines = r->nlines,
                           .lines = (const char *const *)r->lines};

    if (s->closed || r->nlines == 0)
        return;
    smtp_api->conn->write_reply(s->c, &rep);
}

void
smtp_saved_clear(struct smtp_saved *r)
{
    for (size_t i = 0; i < r->nlines; i++)
        free(r->lines[i]);
    free(r->lines);
    free(r->ecode);
    memset(r, 0, sizeof(*r));
}

/* Keep a reply: code, enhanced code (or NULL), `nlines` lines of text
 * (copied with smtp_clean: the reply may come from a peer). */
static void
smtp_save_lines(struct smtp_saved *r, int code, const char *ecode,
                size_t nlines, const char *const *lines)
{
    smtp_saved_clear(r);
    r->code = code;
    r->ecode = ecode != NULL && ecode[0] != '\0' ? smtp_strdup(ecode) : NULL;
    r->lines = smtp_alloc((nlines + 1) * sizeof(*r->lines));
    for (size_t i = 0; i < nlines; i++) {
        size_t n = strlen(lines[i]);

        r->lines[i] = smtp_alloc(n + 1);
        smtp_clean(r->lines[i], n + 1, lines[i], n);
    }
    r->nlines = nlines;
}

void
smtp_save(struct smtp_saved *r, int code, const char *ecode, const char *text)
{
    smtp_save_lines(r, code, ecode, 1, &text);
}

/* An error the client caused; false when the session was closed for too
 * many of them. */
bool
smtp_error(struct smtp_session *s, int code, const char *ecode,
           const char *text)
{
    smtp_reply(s, code, ecode, "%s", text);
    if (++s->errors >= s->st->max_errors) {
        smtp_log(s, MG_LOG_INFO, "too many errors (%u); closing", s->errors);
        smtp_reply(s, 421, "4.7.0", "%s Too many errors, closing",
                   s->st->hostname);
        smtp_close(s);
        return false;
    }
    return true;
}

/* Does a handler's reply fit the verdict? */
bool
smtp_reply_fits(const struct mg_reply *r, enum mg_verdict v, int want)
{
    if (r->code == 0 || r->nlines == 0 || r->lines == NULL ||
        r->nlines > SMTP_REPLY_LINES_MAX)
        return false;
    for (size_t i = 0; i < r->nlines; i++) {
        if (r->lines[i] == NULL ||
            strnlen(r->lines[i], SMTP_REPLY_LINE_MAX + 1) > SMTP_REPLY_LINE_MAX)
            return false;
    }
    if (want != 0)
        return r->code == want;
    switch (v) {
    case MG_ACCEPT:
    case MG_PASS:
        return r->code >= 200 && r->code < 400;
    case MG_TEMPFAIL:
        return r->code >= 400 && r->code < 500;
    case MG_PERMFAIL:
        return r->code >= 500 && r->code < 600;
    default:
        return false;
    }
}

/* The handler's reply when it has one that fits, else the default. */
void
smtp_reply_hook(struct smtp_session *s, enum mg_verdict v, int want, int code,
                const char *ecode, const char *text)
{
    const struct mg_reply *r = &s->call.reply;

    if (r->code != 0) {
        if (smtp_reply_fits(r, v, want) &&
            smtp_api->conn->write_reply(s->c, r) == MG_OK)
            return;
        smtp_log(s, MG_LOG_WARNING,
                 "hook %s: the handler's reply %d does not fit its verdict; "
                 "using the default",
                 s->call.hook, r->code);
    }
    smtp_reply(s, code, ecode, "%s", text);
}

/* Keep a hook's refusal for a later reply (the data phase goes on): every
 * line of the handler's reply, as the other phases write it at once. */
void
smtp_save_hook(struct smtp_session *s, enum mg_verdict v,
               struct smtp_saved *out)
{
    const struct mg_reply *r = &s->call.reply;

    if (smtp_reply_fits(r, v, 0)) {
        smtp_save_lines(out, r->code, r->ecode, r->nlines, r->lines);
        return;
    }
    if (r->code != 0)
        smtp_log(s, MG_LOG_WARNING,
                 "hook %s: the handler's reply %d does not fit its verdict; "
                 "using the default",
                 s->call.hook, r->code);
    if (v == MG_TEMPFAIL)
        smtp_save(out, 451, "4.3.0", "Temporary failure, try again later");
    else
        smtp_save(out, 550, "5.7.1", "Message refused");
}
