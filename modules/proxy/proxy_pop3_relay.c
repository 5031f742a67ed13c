/*
 * modules/proxy/proxy_pop3_relay.c -- the POP3 proxy's relay of the
 * client's commands to the upstream, one at a time, once the login is
 * done (proxy_pop3.c hands the session over). The upstream may have
 * RETRs read ahead outstanding before (and after) the client's command:
 * s->upq says whose reply comes next.
 *
 * The client's commands are parsed and written anew (never forwarded as
 * sent), upstream status lines are bounded and checked, data lines of any
 * length pass in bounded pieces, and a RETR the mailbox has no copy of is
 * recorded (proxy_record.c): its terminating "." reaches the client only
 * once the copy is durable. A DELE of a message without a copy retrieves
 * and records it first.
 *
 * Between the client's commands the relay lets the record-ahead part
 * (proxy_pop3_ahead.c) use the upstream; a RETR of a message read ahead
 * is answered from memory, and a DELE or QUIT waits for the commit of a
 * copy read ahead (PC_PFWAIT).
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy_pop3.h"

/* ------------------------------------------------- sending upstream */

static const char *const proxy_caps_fixed[] = {"RESP-CODES", "PIPELINING"};

/* A message number (or line count, zero_ok) of a command. */
static bool
parse_num(const char *p, size_t len, bool zero_ok, uint32_t *n_r)
{
    uint64_t n = 0;

    if (len == 0 || len > 10)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(p[i] - '0');
    }
    if (n > UINT32_MAX || (n == 0 && !zero_ok))
        return false;
    *n_r = (uint32_t)n;
    return true;
}

static void
relay_capa(struct proxy_session *s)
{
    proxy_out_add(s, "+OK Capability list follows\r\n", 30);
    if (s->caps.top)
        proxy_out_line(s, "TOP", 3);
    if (s->caps.uidl)
        proxy_out_line(s, "UIDL", 4);
    if (s->caps.expire)
        proxy_out_line(s, "EXPIRE NEVER", 12);
    for (size_t i = 0; i < 2; i++)
        proxy_out_line(s, proxy_caps_fixed[i], strlen(proxy_caps_fixed[i]));
    proxy_out_line(s, ".", 1);
    proxy_out_flush(s);
}

/* The client needs the upstream, which is gone: tell why, end the
 * session. */
static void
upstream_gone(struct proxy_session *s)
{
    s->failures++;
    proxy_out_reply(s, "-ERR [SYS/TEMP] The upstream %s",
                    s->up_gone != NULL ? s->up_gone : "closed the connection");
    proxy_session_kill(s, "upstream closed");
}

/* A command of the client's that the upstream answers. */
static void
up_cmd(struct proxy_session *s, enum proxy_cmd cmd, const char *verb, int nargs,
       uint32_t a, uint32_t b)
{
    s->cmd = cmd;
    if (s->up == NULL) {
        upstream_gone(s);
        return;
    }
    s->up_busy = true;
    proxy_upq_push(s, PROXY_UPQ_CLIENT);
    if (nargs == 0)
        proxy_upstream_send(s, "%s", verb);
    else if (nargs == 1)
        proxy_upstream_send(s, "%s %u", verb, (unsigned)a);
    else
        proxy_upstream_send(s, "%s %u %u", verb, (unsigned)a, (unsigned)b);
}

/* The upstream's reply to the client's command is complete (it is the
 * head of the upstream's queue while up_busy). */
static void
up_answered(struct proxy_session *s)
{
    if (s->up_busy) {
        s->up_busy = false;
        proxy_upq_pop(s);
    }
}

/* The client's command is answered: the next one may come, and reading
 * ahead may go on meanwhile. */
static void
relay_finish(struct proxy_session *s)
{
    up_answered(s);
    s->cmd = PC_NONE;
    s->in_data = false;
    s->mid_line = false;
    s->record = false;
    s->top_whole = false;
    proxy_pf_continue(s);
}

/* ----------------------------------------------------- the commands */

static void
relay_retr(struct proxy_session *s, uint32_t n, bool dele)
{
    s->msgno = n;
    if (proxy_record_have(s, n)) {
        s->deduped++;
        s->record = false;
        up_cmd(s, dele ? PC_DELE : PC_RETR, dele ? "DELE" : "RETR", 1, n, 0);
        return;
    }
    if (proxy_record_begin(s, &s->rec, n) != MG_OK) {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING, "cannot record message %u: %s",
                          (unsigned)n, s->why);
        proxy_out_reply(s,
                        "-ERR [SYS/TEMP] The message cannot be archived now; "
                        "try again later");
        return;
    }
    s->record = true;
    up_cmd(s, dele ? PC_DELE_RETR : PC_RETR, "RETR", 1, n, 0);
}

/* DELE n (or QUIT, n 0) while the copy of n (any) read ahead is being
 * committed: wait for it (DELE then finds it recorded, or records it
 * anew; QUIT leaves every copy read ahead durable). */
static bool
relay_pf_wait(struct proxy_session *s, uint32_t n, char then)
{
    struct proxy_prefetch *pf = n != 0 ? proxy_pf_ready(s, n) : NULL;

    if (!proxy_pf_committing(s, n)) {
        if (pf != NULL)
            proxy_pf_drop(s, pf); /* deleted: nobody will RETR it */
        return false;
    }
    proxy_pf_commit_held(s);
    if (s->dead)
        return true;
    s->cmd = PC_PFWAIT;
    s->pf_then = then;
    s->msgno = n;
    return true;
}

/* One client command line. */
static void
relay_command(struct proxy_session *s, const char *line, size_t len)
{
    const char *arg, *sp = memchr(line, ' ', len);
    size_t vlen = sp != NULL ? (size_t)(sp - line) : len, alen;
    uint32_t n, m;

    arg = sp != NULL ? sp + 1 : line + len;
    alen = sp != NULL ? len - vlen - 1 : 0;
#define VERB(w) (vlen == sizeof(w) - 1 && strncasecmp(line, w, vlen) == 0)
    if (VERB("QUIT") && alen == 0) {
        if (!relay_pf_wait(s, 0, 'Q'))
            up_cmd(s, PC_QUIT, "QUIT", 0, 0, 0);
    } else if (VERB("RSET") && alen == 0) {
        up_cmd(s, PC_RSET, "RSET", 0, 0, 0);
    } else if ((VERB("STAT") || VERB("NOOP")) && alen == 0) {
        up_cmd(s, PC_SINGLE, VERB("STAT") ? "STAT" : "NOOP", 0, 0, 0);
    } else if (VERB("LIST") || VERB("UIDL")) {
        const char *verb = VERB("LIST") ? "LIST" : "UIDL";

        if (alen == 0)
            up_cmd(s, PC_MULTI, verb, 0, 0, 0);
        else if (parse_num(arg, alen, false, &n))
            up_cmd(s, PC_SINGLE, verb, 1, n, 0);
        else
            proxy_out_reply(s, "-ERR Invalid message number");
    } else if (VERB("RETR") || VERB("DELE")) {
        if (!parse_num(arg, alen, false, &n)) {
            proxy_out_reply(s, "-ERR Invalid message number");
        } else if (VERB("RETR")) {
            s->retrieved++;
            struct proxy_prefetch *pf = proxy_pf_ready(s, n);

            if (pf != NULL)
                proxy_pf_serve(s, pf);
            else
                relay_retr(s, n, false);
        } else if (!relay_pf_wait(s, n, 'D')) {
            relay_retr(s, n, true);
        }
    } else if (VERB("TOP")) {
        const char *sp2 = memchr(arg, ' ', alen);

        if (sp2 != NULL && parse_num(arg, (size_t)(sp2 - arg), false, &n) &&
            parse_num(sp2 + 1, alen - (size_t)(sp2 - arg) - 1, true, &m)) {
            /* TOP records nothing, but a client that reads whole messages
             * with it (fetchmail: TOP n 99999999) walks through them */
            if (m >= PROXY_TOP_WHOLE && proxy_pf_ready(s, n) != NULL) {
                /* the whole message: what was read ahead */
                proxy_pf_serve(s, proxy_pf_ready(s, n));
            } else {
                s->msgno = n;
                up_cmd(s, PC_MULTI, "TOP", 2, n, m);
                s->top_whole = m >= PROXY_TOP_WHOLE;
            }
        } else
            proxy_out_reply(s, "-ERR Syntax: TOP msg lines");
    } else if (VERB("CAPA") && alen == 0) {
        relay_capa(s);
    } else if (VERB("USER") || VERB("PASS") || VERB("AUTH") || VERB("APOP") ||
               VERB("STLS")) {
        proxy_out_reply(s, "-ERR Already logged in");
    } else {
        proxy_out_reply(s, "-ERR Unknown command");
    }
#undef VERB
}

/* The next client command; false when there is none yet. */
static bool
relay_client_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    enum mg_eol eol;
    int r;

    if (s->c == NULL)
        return false;
    r = proxy_conn(s)->getline(s->c, &line, &len, &eol);
    if (r == MG_AGAIN)
        return false;
    if (r == MG_DECLINED) {
        proxy_out_reply(s, "-ERR Line too long");
        return true;
    }
    if (memchr(line, '\r', len) != NULL || memchr(line, '\0', len) != NULL) {
        proxy_out_reply(s, "-ERR Invalid characters in the command");
        return true;
    }
    relay_command(s, line, len);
    return true;
}

static void
mark_gone(struct proxy_session *s, uint32_t n)
{
    if (n == 0 || n > s->nuidls)
        return;
    if (s->gone == NULL) {
        s->gone = calloc(s->nuidls, sizeof(*s->gone));
        if (s->gone == NULL)
            abort();
    }
    s->gone[n - 1] = true;
}

/* The end of a multi-line reply of the client's command. */
static bool
relay_data_end(struct proxy_session *s, bool fwd)
{
    bool retr = s->cmd == PC_RETR || (s->cmd == PC_MULTI && s->top_whole);
    uint32_t next = s->msgno + 1;

    up_answered(s);
    if (s->record) {
        proxy_out_flush(s);
        proxy_record_end(s, &s->rec); /* proxy_relay_recorded follows */
    } else {
        if (fwd)
            proxy_out_line(s, ".", 1);
        relay_finish(s);
    }
    if (retr)
        proxy_pf_start(s, next); /* while the client reads this one */
    return !s->dead;
}

/* One upstream line (or piece of a long one) of the command in flight;
 * false to stop for now. */
static bool
relay_upstream_line(struct proxy_session *s)
{
    const char *line;
    size_t len;
    bool ok, eol = true, fwd = s->cmd != PC_DELE_RETR;
    int r;

    if (s->up == NULL)
        return false;
    if (s->in_data)
        r = proxy_upstream_piece(s, &line, &len, &eol);
    else
        r = proxy_upstream_line(s, &line, &len, true);
    if (r == MG_AGAIN)
        return false;
    if (r != MG_OK) {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING, "upstream %s: %s",
                          s->login.upstream, s->why);
        if (!s->in_data)
            proxy_out_reply(s, "-ERR [SYS/TEMP] %s", s->why);
        proxy_session_kill(s, "upstream protocol violation");
        return false;
    }
    if (s->in_data) {
        bool stuffed = !s->mid_line && len > 0 && line[0] == '.';

        if (!s->mid_line && eol && len == 1 && line[0] == '.')
            return relay_data_end(s, fwd);
        s->mid_line = !eol;
        if (fwd) {
            proxy_out_add(s, line, len);
            if (eol)
                proxy_out_add(s, "\r\n", 2);
        }
        if (s->record && proxy_record_piece(s, &s->rec, line + stuffed,
                                            len - stuffed, eol) == MG_AGAIN)
            return false;
        return !s->blocked;
    }
    ok = line[0] == '+';
    if (!ok ||
        (s->cmd != PC_MULTI && s->cmd != PC_RETR && s->cmd != PC_DELE_RETR))
        up_answered(s); /* a one-line reply */
    if (fwd || !ok)
        proxy_out_line(s, line, len);
    switch (s->cmd) {
    case PC_MULTI:
    case PC_RETR:
    case PC_DELE_RETR:
        if (ok) {
            s->in_data = true;
            s->mid_line = false;
            return true;
        }
        proxy_record_abort(s, &s->rec);
        break;
    case PC_DELE:
        if (ok) {
            s->deleted++;
            mark_gone(s, s->msgno);
        }
        break;
    case PC_RSET:
        if (ok && s->gone != NULL)
            memset(s->gone, 0, s->nuidls * sizeof(*s->gone));
        break;
    case PC_QUIT:
        proxy_out_flush(s);
        proxy_session_kill(s, "QUIT");
        return false;
    default:
        break;
    }
    proxy_out_flush(s);
    relay_finish(s);
    return true;
}

/* The client's next command (already received), if it is `verb n`. */
static bool
relay_next_is(struct proxy_session *s, const char *verb, uint32_t *msgno)
{
    const char *in, *lf;
    size_t n;

    if (s->c == NULL)
        return false;
    proxy_conn(s)->peek(s->c, &in, &n);
    lf = memchr(in, '\n', n < 64 ? n : 64);
    if (lf == NULL)
        return false;
    n = (size_t)(lf - in);
    if (n > 0 && in[n - 1] == '\r')
        n--;
    return n > 5 && strncasecmp(in, verb, 4) == 0 && in[4] == ' ' &&
           parse_num(in + 5, n - 5, false, msgno);
}

/* The client's next command (already received) is RETR of a message read
 * ahead: it needs nothing from the upstream, which may still be sending
 * the next one. */
bool
proxy_relay_next_local(struct proxy_session *s)
{
    uint32_t msgno;

    return relay_next_is(s, "RETR", &msgno) && proxy_pf_ready(s, msgno) != NULL;
}

/* The client's next command is DELE of a message whose copy is durable
 * and the upstream announced PIPELINING: it may go upstream behind the
 * messages being read ahead (POP3 answers in order), so its answer
 * follows theirs without a round trip of its own. */
static bool
relay_next_dele_ready(struct proxy_session *s)
{
    uint32_t msgno;

    return s->caps.pipelining && relay_next_is(s, "DELE", &msgno) &&
           !proxy_pf_committing(s, msgno) && proxy_record_have(s, msgno);
}

static void
relay_pump(struct proxy_session *s)
{
    while (!s->dead) {
        struct proxy_prefetch *pf = proxy_pf_reading(s);

        if (pf != NULL) {
            /* the upstream is sending a message read ahead: the client's
             * next command waits for the end of it */
            if (proxy_pf_step(s, pf))
                continue;
            if (!s->dead && s->cmd == PC_NONE && !s->blocked &&
                (proxy_relay_next_local(s) || relay_next_dele_ready(s)) &&
                relay_client_line(s)) {
                /* answered from memory, or sent on: the next RETR read
                 * ahead may go behind it */
                proxy_pf_continue(s);
                continue;
            }
            if (!s->dead)
                proxy_out_flush(s);
            return;
        }
        if (s->cmd == PC_NONE && s->nupq == 0) {
            proxy_out_flush(s);
            if (s->closing) {
                proxy_out_reply(s,
                                "-ERR [SYS/TEMP] The gateway is shutting down");
                proxy_session_kill(s, "shutdown");
                return;
            }
            if (s->up == NULL) {
                upstream_gone(s);
                return;
            }
            if (s->blocked || !relay_client_line(s))
                return;
            continue;
        }
        if (s->cmd == PC_PFWAIT || s->blocked || s->rec.wait || s->rec.commit)
            return;
        if (!relay_upstream_line(s)) {
            if (!s->dead && !s->rec.commit)
                proxy_out_flush(s);
            return;
        }
    }
}

void
proxy_relay_resume(struct proxy_session *s)
{
    relay_pump(s);
}

/* A copy read ahead is durable now (or dropped): the DELE or QUIT that
 * waited for it (PC_PFWAIT) goes on. */
static void
relay_pf_waited(struct proxy_session *s)
{
    if (s->cmd == PC_PFWAIT) {
        s->cmd = PC_NONE;
        if (s->pf_then == 'Q') {
            if (!relay_pf_wait(s, 0, 'Q'))
                up_cmd(s, PC_QUIT, "QUIT", 0, 0, 0);
        } else if (!relay_pf_wait(s, s->msgno, 'D')) {
            relay_retr(s, s->msgno, true);
        }
    }
}

/* The copy of the client's message could not be recorded: count and log
 * it with what follows for the client. */
static void
record_failed(struct proxy_session *s, const char *outcome)
{
    s->failures++;
    proxy_session_log(s, MG_LOG_WARNING,
                      "message %u could not be recorded (%s): %s",
                      (unsigned)s->msgno, s->why, outcome);
}

void
proxy_relay_recorded(struct proxy_session *s, struct proxy_rec *r, bool ok)
{
    bool ahead = r->ahead;

    if (r >= &s->pf[0].rec && r <= &s->pf[PROXY_AHEAD - 1].rec) {
        proxy_pf_recorded(
            s,
            (struct proxy_prefetch *)((char *)r -
                                      offsetof(struct proxy_prefetch, rec)),
            ok);
        relay_pf_waited(s);
    } else if (s->cmd == PC_RETR) {
        if (!ok) {
            record_failed(s, "the client does not get its end");
            proxy_session_kill(s, "recording failed");
            return;
        }
        s->recorded++;
        s->ahead += ahead;
        proxy_out_line(s, ".", 1);
        proxy_out_flush(s);
        relay_finish(s);
    } else if (s->cmd == PC_DELE_RETR) {
        if (!ok) {
            record_failed(s, "DELE refused");
            proxy_out_reply(
                s, "-ERR [SYS/TEMP] The message could not be archived; "
                   "it was not deleted");
            relay_finish(s);
        } else {
            s->recorded++;
            s->record = false;
            s->in_data = false;
            up_cmd(s, PC_DELE, "DELE", 1, s->msgno, 0);
        }
    }
    relay_pump(s);
}

void
proxy_relay_upstream_event(struct proxy_session *s, enum mg_conn_event ev)
{
    switch (ev) {
    case MG_CONN_READABLE:
        relay_pump(s);
        return;
    case MG_CONN_DRAINED:
    case MG_CONN_TLS_READY:
        return;
    default:
        s->up = NULL;
        s->dpend = 0;
        s->up_gone = ev == MG_CONN_TIMEOUT ? "did not answer in time"
                                           : "closed the connection";
        if (s->cmd == PC_QUIT)
            return;
        /* every message read ahead that had not come whole is lost */
        for (uint8_t i = 0; i < s->nupq; i++) {
            if (s->upq[i] != PROXY_UPQ_CLIENT)
                proxy_pf_lost(s, &s->pf[s->upq[i]]);
        }
        s->nupq = 0;
        proxy_pf_commit_held(s); /* nothing follows them now */
        if (s->dead)
            return;
        if (s->up_busy) { /* the client's command waits for it */
            s->failures++;
            if (!s->in_data)
                proxy_out_reply(s, "-ERR [SYS/TEMP] The upstream %s",
                                s->up_gone);
            proxy_session_kill(s, ev == MG_CONN_TIMEOUT ? "upstream timeout"
                                                        : "upstream closed");
            return;
        }
        relay_pump(s); /* a commit in flight still ends its RETR */
        return;
    }
}
