/*
 * modules/proxy/proxy_pop3_ahead.c -- record-ahead for the POP3 proxy
 * (prefetch_max_size).
 *
 * Once the upstream has sent message n for the client's RETR, the proxy
 * retrieves n + 1 itself (when it is in the listing, not deleted in this
 * session, not yet recorded and within the limit), keeps it in memory and
 * records it at once, so its commit runs while the client is still busy
 * with n. The client's RETR n + 1 is then answered from memory, its "."
 * once that copy is durable. At an upstream that announced PIPELINING
 * the RETR of the next message goes as soon as the upstream has begun
 * to answer the one before (at most PROXY_PIPE awaited), so that the
 * upstream never idles for a proxy round trip; elsewhere one command at
 * a time. The upstream's replies come in the order of s->upq. A client
 * command waits until the upstream has sent all of the messages being
 * read ahead, except a DELE of a message whose copy is durable at a
 * PIPELINING upstream: it is sent behind them at once (POP3 answers in
 * order), and the next RETR read ahead may follow it. A copy read ahead
 * may hold its commit back to share one disk commit with the next
 * (pf_hold). A message read ahead that the client never asks for stays
 * recorded: it is in the user's mailbox at the upstream, and archiving
 * it early loses nothing.
 *
 * The relay (proxy_pop3_relay.c) calls in here between the client's
 * commands; up to PROXY_AHEAD messages are held (s->pf).
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_pop3.h"

/* The slot whose message the upstream is sending (or sends next), or
 * NULL when the upstream's next reply is not for one. */
struct proxy_prefetch *
proxy_pf_reading(struct proxy_session *s)
{
    int head = proxy_upq_head(s);

    return head >= 0 && head != PROXY_UPQ_CLIENT ? &s->pf[head] : NULL;
}

/* The message n read ahead completely, or NULL. */
struct proxy_prefetch *
proxy_pf_ready(struct proxy_session *s, uint32_t n)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && s->pf[i].msgno == n)
            return &s->pf[i];
    }
    return NULL;
}

/* A copy read ahead still being committed (any message when n is 0). */
bool
proxy_pf_committing(struct proxy_session *s, uint32_t n)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && !s->pf[i].done &&
            (n == 0 || s->pf[i].msgno == n))
            return true;
    }
    return false;
}

/* Forget a message read ahead; a copy already committed stays. */
void
proxy_pf_drop(struct proxy_session *s, struct proxy_prefetch *pf)
{
    proxy_record_abort(s, &pf->rec);
    pf->state = PF_IDLE;
    pf->in_data = pf->mid_line = pf->unusable = pf->done = pf->held = false;
    pf->len = 0;
    if (pf->cap > 4 * PROXY_DATA_LINE) { /* keep only a small buffer */
        free(pf->data);
        pf->data = NULL;
        pf->cap = 0;
    }
}

/* What one message read ahead may take in memory: its status line, the
 * limit plus the stuffing and line ends a LIST size may not count, and the
 * final ".". */
static size_t
pf_cap_max(const struct proxy_session *s)
{
    return PROXY_STATUS_MAX + 2 + (size_t)s->st->prefetch_max +
           PROXY_DATA_LINE + 3;
}

/* A RETR read ahead may go upstream now: the upstream is idle, or it
 * announced PIPELINING and fewer than PROXY_PIPE are awaited, and the
 * client's command is none, a RETR (relayed, or from memory waiting for
 * its commit) or a DELE: nothing that must go upstream after it. */
static bool
pf_may_send(const struct proxy_session *s)
{
    if (s->cmd != PC_NONE && s->cmd != PC_RETR && s->cmd != PC_DELE)
        return false;
    if (s->nupq == 0)
        return true;
    return s->caps.pipelining && proxy_upq_ahead(s) < PROXY_PIPE;
}

/* Read ahead message n, if the upstream may take its RETR now (see
 * pf_may_send), a slot is free and n qualifies. */
void
proxy_pf_start(struct proxy_session *s, uint32_t n)
{
    struct proxy_prefetch *pf = NULL;

    if (s->st->prefetch_max == 0 || s->up == NULL || s->dead || s->closing ||
        !s->have_uidls || s->sizes == NULL || !pf_may_send(s))
        return;
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_IDLE)
            pf = &s->pf[i];
        else if (s->pf[i].msgno >= n)
            return; /* already ahead of n */
    }
    if (pf == NULL || n == 0 || n > s->nuidls || s->uidls[n - 1] == NULL ||
        s->sizes[n - 1] > s->st->prefetch_max ||
        (s->gone != NULL && s->gone[n - 1]) || proxy_record_have(s, n))
        return;
    if (proxy_record_begin(s, &pf->rec, n) != MG_OK)
        return; /* the store refuses now: the client's RETR tries again */
    pf->rec.ahead = true;
    s->pf_last = n;
    pf->state = PF_READING;
    pf->msgno = n;
    pf->in_data = pf->mid_line = pf->unusable = pf->done = pf->held = false;
    pf->len = 0;
    proxy_upq_push(s, (uint8_t)(pf - s->pf));
    proxy_upstream_send(s, "RETR %u", (unsigned)n);
}

/* Keep a piece of the message read ahead; false (and nothing kept) when
 * it would pass the limit. */
static bool
pf_keep(struct proxy_session *s, struct proxy_prefetch *pf, const char *data,
        size_t len, bool eol)
{
    size_t need = pf->len + len + 2 + 3; /* room for the final "." */

    if (need > pf_cap_max(s))
        return false;
    if (need > pf->cap) {
        size_t cap = pf->cap > 0 ? pf->cap : 2 * PROXY_DATA_LINE;
        char *p;

        while (cap < need)
            cap *= 2;
        if (cap > pf_cap_max(s))
            cap = pf_cap_max(s);
        p = realloc(pf->data, cap);
        if (p == NULL)
            abort();
        pf->data = p;
        pf->cap = cap;
    }
    memcpy(pf->data + pf->len, data, len);
    pf->len += len;
    if (eol) {
        memcpy(pf->data + pf->len, "\r\n", 2);
        pf->len += 2;
    }
    return true;
}

/* The upstream broke off (or broke the protocol) while a message was
 * being read ahead: nothing of it is kept. */
void
proxy_pf_lost(struct proxy_session *s, struct proxy_prefetch *pf)
{
    s->failures++;
    proxy_session_log(s, MG_LOG_WARNING,
                      "upstream %s: %s while message %u was read ahead (not "
                      "recorded)",
                      s->login.upstream,
                      s->up_gone != NULL ? s->up_gone : "lost",
                      (unsigned)pf->msgno);
    proxy_pf_drop(s, pf);
}

/* The client has sent a command that needs the upstream: it goes first,
 * reading further ahead resumes once it is answered (relay_finish() in
 * proxy_pop3_relay.c). */
static bool
client_waits(struct proxy_session *s)
{
    const char *in;
    size_t n;

    if (s->c == NULL)
        return false;
    proxy_conn(s)->peek(s->c, &in, &n);
    return n > 0 && !proxy_relay_next_local(s);
}

/* Start the commits held back to share one with the next message's. */
void
proxy_pf_commit_held(struct proxy_session *s)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && s->pf[i].held) {
            s->pf[i].held = false;
            proxy_record_end(s, &s->pf[i].rec); /* proxy_relay_recorded */
            if (s->dead)
                return;
        }
    }
}

/* Commit pf's copy right behind the one held back, if any. */
static void
pf_commit_with_held(struct proxy_session *s, struct proxy_prefetch *pf)
{
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state == PF_READY && s->pf[i].held)
            proxy_session_log(s, MG_LOG_DEBUG,
                              "messages %u and %u read ahead: their commits "
                              "go together",
                              (unsigned)s->pf[i].msgno, (unsigned)pf->msgno);
    }
    proxy_pf_commit_held(s);
    if (!s->dead) /* proxy_relay_recorded follows */
        proxy_record_end(s, &pf->rec);
}

/* Message pf has come whole: hold its commit back so that it shares one
 * disk commit (the store's writer takes both at once) with the next
 * message read ahead, when the client will first ask for another message
 * in memory (so there is time: the next one comes while the client reads
 * that one) and the next one may be read ahead. Whatever needs the copy
 * first (the client's RETR, DELE or QUIT, the upstream's loss or refusal
 * of the next one) commits it at once. */
static bool
pf_hold(struct proxy_session *s, const struct proxy_prefetch *pf)
{
    uint32_t next = pf->msgno + 1;
    bool before = false;

    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        const struct proxy_prefetch *o = &s->pf[i];

        if (o->state == PF_READY && o->held)
            return false; /* that one goes now, with this one */
        if (o != pf && o->state == PF_READY && o->msgno < pf->msgno)
            before = true;
    }
    return before && next <= s->nuidls && s->uidls[next - 1] != NULL &&
           s->sizes[next - 1] <= s->st->prefetch_max &&
           (s->gone == NULL || !s->gone[next - 1]);
}

/* Read further ahead after the last message read ahead, if any. */
void
proxy_pf_continue(struct proxy_session *s)
{
    if (s->pf_last > 0 && !client_waits(s))
        proxy_pf_start(s, s->pf_last + 1);
}

/* An upstream read for message pf that gave no line: wait for more
 * (MG_AGAIN), or, if the upstream broke the protocol, lose the message
 * and end the session. Always false: the step cannot go on. */
static bool
pf_read_failed(struct proxy_session *s, struct proxy_prefetch *pf, int r)
{
    if (r == MG_AGAIN)
        return false;
    s->up_gone = s->why;
    proxy_pf_lost(s, pf);
    proxy_session_kill(s, "upstream protocol violation");
    return false;
}

bool
proxy_pf_step(struct proxy_session *s, struct proxy_prefetch *pf)
{
    const char *p;
    size_t len;
    bool eol, stuffed;
    int r;

    if (s->up == NULL || pf->rec.wait)
        return false;
    if (!pf->in_data) {
        r = proxy_upstream_line(s, &p, &len, true);
        if (r != MG_OK)
            return pf_read_failed(s, pf, r);
        if (p[0] != '+') { /* the client's own RETR will hear why */
            proxy_upq_pop(s);
            proxy_pf_drop(s, pf);
            proxy_pf_commit_held(s); /* nothing to share a commit with */
            return !s->dead;
        }
        /* the reply as the client gets it, in one piece */
        pf_keep(s, pf, p, len, true);
        pf->in_data = true;
        /* a PIPELINING upstream gets the next RETR now: it starts on it
         * once this one is sent, without waiting for the proxy */
        proxy_pf_continue(s);
        return !s->dead;
    }
    r = proxy_upstream_piece(s, &p, &len, &eol);
    if (r != MG_OK)
        return pf_read_failed(s, pf, r);
    if (!pf->mid_line && eol && len == 1 && p[0] == '.') {
        proxy_upq_pop(s);
        if (pf->unusable) {
            proxy_pf_drop(s, pf);
            proxy_pf_commit_held(s);
        } else {
            pf->state = PF_READY;
            /* its last piece encrypted first: a commit held back and
             * this one's then reach the store's writer together */
            proxy_record_settle(s, &pf->rec);
            if (pf_hold(s, pf)) {
                pf->held = true;
            } else {
                pf_commit_with_held(s, pf);
            }
        }
        if (!s->dead)
            proxy_pf_continue(s);
        return !s->dead;
    }
    stuffed = !pf->mid_line && len > 0 && p[0] == '.';
    pf->mid_line = !eol;
    if (pf->unusable)
        return true;
    if (!pf_keep(s, pf, p, len, eol)) {
        /* larger than its listing said: drained, not kept; the client's
         * RETR is relayed and recorded as usual */
        pf->unusable = true;
        proxy_record_abort(s, &pf->rec);
        return true;
    }
    return proxy_record_piece(s, &pf->rec, p + stuffed, len - stuffed, eol) !=
           MG_AGAIN;
}

/* RETR of a message read ahead: answered from memory, its "." once its
 * copy is durable. */
void
proxy_pf_serve(struct proxy_session *s, struct proxy_prefetch *pf)
{
    struct proxy_rec tmp;
    uint32_t last = pf->msgno;
    bool held = pf->held;

    s->msgno = pf->msgno;
    proxy_out_flush(s);
    /* status, data and, when its copy is durable, the "." in one write:
     * one system call, one wake-up of the client */
    if (pf->done) {
        memcpy(pf->data + pf->len, ".\r\n", 3); /* room: pf_cap_max() */
        pf->len += 3;
    }
    if (proxy_conn(s)->write(s->c, pf->data, pf->len) == MG_AGAIN)
        s->blocked = true;
    if (pf->done) {
        proxy_pf_drop(s, pf);
    } else {
        /* its commit is in flight: the client's command waits for it */
        tmp = s->rec;
        s->rec = pf->rec;
        pf->rec = tmp;
        s->cmd = PC_RETR;
        s->record = true;
        s->in_data = true;
        proxy_pf_drop(s, pf);
        if (held) { /* its commit was held back: it goes now */
            proxy_record_end(s, &s->rec); /* proxy_relay_recorded follows */
            if (s->dead)
                return;
        }
    }
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].state != PF_IDLE && s->pf[i].msgno > last)
            last = s->pf[i].msgno;
    }
    proxy_pf_start(s, last + 1);
}

/* A copy read ahead is durable, or could not be stored. */
void
proxy_pf_recorded(struct proxy_session *s, struct proxy_prefetch *pf, bool ok)
{
    if (ok) {
        pf->done = true;
        s->recorded++;
        s->ahead++;
    } else {
        s->failures++;
        proxy_session_log(s, MG_LOG_WARNING,
                          "message %u read ahead could not be recorded "
                          "(%s): the client's RETR retrieves it again",
                          (unsigned)pf->msgno, s->why);
        proxy_pf_drop(s, pf);
    }
}
