/*
 * modules/proxy/proxy_record.c -- a copy of every retrieved message in the
 * mailbox the login named: streamed into the store as the client receives
 * it (unstuffed) and committed durably together with its entry in the
 * de-duplication index under (mailbox, upstream, remote user, upstream
 * UIDL): one transaction, so a crash never leaves a copy the index does
 * not know (a store without msg_dedup gets the entry in a second commit).
 * Two sessions retrieving the same upstream message at the same time each
 * record a copy (neither is in the index when the other looks); the entry
 * names the later one. A session has at most 1 + PROXY_AHEAD recordings
 * in flight: the client's RETR (proxy_pop3_relay.c) and those recorded
 * ahead (proxy_pop3_ahead.c); store callbacks find theirs by a sequence
 * number, never by a pointer.
 *
 * The copy starts with one `Received:` field naming the upstream, the
 * gateway and the upstream's UIDL; the rest is the message byte for byte
 * as the upstream sent it (lines ending in a bare LF get CRLF, as the
 * client receives them).
 */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy.h"

#define RECORD_PIECE (64 * 1024)

static const struct mg_store_api *
rs(const struct proxy_session *s)
{
    return s->st->api->store;
}

static const char *
record_uidl(const struct proxy_session *s, uint32_t n)
{
    if (!s->have_uidls || n == 0 || n > s->nuidls)
        return NULL;
    return s->uidls[n - 1];
}

bool
proxy_record_have(struct proxy_session *s, uint32_t n)
{
    const char *uidl = record_uidl(s, n), *err = NULL;
    uint64_t id;

    if (uidl == NULL)
        return false;
    return rs(s)->dedup_get(s->login.mailbox, s->login.upstream, s->login.user,
                            uidl, &id, &err) == MG_OK;
}

/* The session and the recording a store callback is for, or NULL. */
static struct proxy_rec *
record_find(uint64_t conn_id, void *arg, struct proxy_session **s_r)
{
    struct proxy_session *s = proxy_session_find(conn_id);
    uint64_t seq = (uint64_t)(uintptr_t)arg;

    *s_r = s;
    if (s == NULL || seq == 0)
        return NULL;
    if (s->rec.seq == seq)
        return &s->rec;
    for (size_t i = 0; i < PROXY_AHEAD; i++) {
        if (s->pf[i].rec.seq == seq)
            return &s->pf[i].rec;
    }
    return NULL;
}

static void *
record_arg(const struct proxy_rec *r)
{
    return (void *)(uintptr_t)r->seq;
}

static void
record_trace(struct proxy_session *s, struct proxy_rec *r)
{
    const struct mg_peer *up =
        s->up != NULL ? s->st->api->conn->peer(s->up) : NULL;
    const char *uidl = record_uidl(s, r->msgno);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    int n;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    n = snprintf(r->wbuf, RECORD_PIECE,
                 "Received: from %s (%s)\r\n\tby %s with POP3S (mailgate "
                 "proxy%s%s)%s%s;\r\n\t%s\r\n",
                 s->login.host, up != NULL ? up->addr : "?", s->st->hostname,
                 up != NULL && up->tls_version ? " " : "",
                 up != NULL && up->tls_version ? up->tls_version : "",
                 uidl != NULL ? " id " : "", uidl != NULL ? uidl : "", date);
    r->wlen = n > 0 && n < RECORD_PIECE ? (size_t)n : 0;
}

int
proxy_record_begin(struct proxy_session *s, struct proxy_rec *r, uint32_t n)
{
    const char *rcpts[1] = {s->login.user};
    struct mg_envelope_info env = {
        .source = "proxy-pop3",
        .sender = "",
        .rcpts = rcpts,
        .nrcpts = 1,
        .client = s->peer[0] != '\0' ? s->peer : NULL,
        .tls = s->peer_tls[0] != '\0' ? s->peer_tls : NULL,
    };
    const char *ids[1] = {s->login.mailbox}, *err = NULL;
    const char *uidl = record_uidl(s, n);

    proxy_record_abort(s, r);
    r->msgno = n;
    r->w = rs(s)->msg_begin(ids, 1, &env, s->id, &err);
    if (r->w == NULL) {
        snprintf(s->whybuf, sizeof(s->whybuf), "%s",
                 err != NULL ? err : "the store refused the message");
        s->why = s->whybuf;
        return MG_ERROR;
    }
    if (r->wbuf == NULL) {
        r->wbuf = malloc(RECORD_PIECE + PROXY_DATA_LINE + 2);
        if (r->wbuf == NULL)
            abort();
    }
    r->seq = ++s->rec_seq;
    r->wsize = 0;
    r->failed = r->wait = r->commit = r->end = r->dedup = r->ahead = false;
    if (uidl != NULL &&
        rs(s)->size >= offsetof(struct mg_store_api, msg_dedup) +
                           sizeof(rs(s)->msg_dedup) &&
        rs(s)->msg_dedup(r->w, s->login.upstream, s->login.user, uidl) == MG_OK)
        r->dedup = true;
    record_trace(s, r);
    return MG_OK;
}

void
proxy_record_abort(struct proxy_session *s, struct proxy_rec *r)
{
    if (r->w != NULL) {
        rs(s)->msg_free(r->w); /* removes what was written; no callback */
        r->w = NULL;
    }
    r->seq = 0;
    r->wlen = 0;
    r->wait = r->commit = r->end = false;
}

void
proxy_record_free(struct proxy_rec *r)
{
    free(r->wbuf);
    r->wbuf = NULL;
}

static void record_commit(struct proxy_session *s, struct proxy_rec *r);

static void
record_resume(uint64_t conn_id, void *arg)
{
    struct proxy_session *s;
    struct proxy_rec *rec = record_find(conn_id, arg, &s);
    int r;

    if (rec == NULL || !rec->wait)
        return;
    proxy_enter(s);
    rec->wait = false;
    r = rs(s)->msg_write(rec->w, rec->wbuf, rec->wlen, record_resume,
                         record_arg(rec));
    if (r == MG_AGAIN) {
        rec->wait = true;
    } else {
        if (r != MG_OK)
            rec->failed = true;
        rec->wsize += rec->wlen;
        rec->wlen = 0;
        if (rec->end)
            record_commit(s, rec);
        else
            proxy_relay_resume(s);
    }
    proxy_leave(s);
}

/* Hand the buffered piece to the store. */
static int
record_flush(struct proxy_session *s, struct proxy_rec *r)
{
    int st;

    if (r->wlen == 0 || r->failed)
        return MG_OK;
    st = rs(s)->msg_write(r->w, r->wbuf, r->wlen, record_resume, record_arg(r));
    if (st == MG_AGAIN) {
        r->wait = true;
        return MG_AGAIN;
    }
    if (st != MG_OK)
        r->failed = true; /* commit reports why */
    r->wsize += r->wlen;
    r->wlen = 0;
    return MG_OK;
}

int
proxy_record_piece(struct proxy_session *s, struct proxy_rec *r,
                   const char *data, size_t len, bool eol)
{
    if (r->failed || r->w == NULL)
        return MG_OK;
    memcpy(r->wbuf + r->wlen, data, len); /* len <= PROXY_DATA_LINE */
    r->wlen += len;
    if (eol) {
        memcpy(r->wbuf + r->wlen, "\r\n", 2);
        r->wlen += 2;
    }
    if (r->wlen < RECORD_PIECE)
        return MG_OK;
    return record_flush(s, r);
}

static void
record_indexed(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct proxy_session *s;
    struct proxy_rec *r = record_find(conn_id, arg, &s);

    if (r == NULL || !r->commit)
        return;
    proxy_enter(s);
    if (res->status != MG_OK)
        proxy_session_log(s, MG_LOG_WARNING,
                          "message %u recorded, but not entered in the "
                          "de-duplication index (%s): it may be recorded "
                          "again",
                          (unsigned)r->msgno,
                          res->error != NULL ? res->error : "store error");
    r->commit = false;
    r->seq = 0;
    proxy_relay_recorded(s, r, true);
    proxy_leave(s);
}

static void
record_committed(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct proxy_session *s;
    struct proxy_rec *r = record_find(conn_id, arg, &s);
    const struct mg_core_api *api;
    const char *uidl;
    uint64_t id = 0;
    char own_uidl[40];

    if (r == NULL || !r->commit)
        return;
    api = s->st->api;
    proxy_enter(s);
    if (res->status != MG_OK) {
        snprintf(s->whybuf, sizeof(s->whybuf), "%s",
                 res->error != NULL ? res->error : "commit failed");
        s->why = s->whybuf;
        proxy_record_abort(s, r);
        proxy_relay_recorded(s, r, false);
        proxy_leave(s);
        return;
    }
    if (api->store->msg_id(r->w, 0, &id, own_uidl) == MG_OK) {
        struct mg_hook_message_stored data = {
            .mailbox_id = s->login.mailbox,
            .msg_id = id,
            .size = r->wsize,
            .source = "proxy-pop3",
        };
        struct mg_hook_call call = {
            .hook = "message.stored",
            .conn_id = s->id,
            .data = &data,
        };

        (void)api->hook_run(&call, NULL, NULL);
    }
    api->store->msg_free(r->w);
    r->w = NULL;
    uidl = record_uidl(s, r->msgno);
    if (uidl == NULL || r->dedup ||
        api->store->dedup_put(s->login.mailbox, s->login.upstream,
                              s->login.user, uidl, id, s->id, record_indexed,
                              record_arg(r)) != MG_OK) {
        r->commit = false;
        r->seq = 0;
        proxy_relay_recorded(s, r, true);
    }
    proxy_leave(s);
}

static void
record_commit(struct proxy_session *s, struct proxy_rec *r)
{
    r->end = false;
    r->commit = true;
    if (r->failed || rs(s)->msg_commit(r->w, true, record_committed,
                                       record_arg(r)) != MG_OK) {
        s->why = "the store could not take the message";
        proxy_record_abort(s, r);
        proxy_relay_recorded(s, r, false);
    }
}

void
proxy_record_settle(struct proxy_session *s, struct proxy_rec *r)
{
    if (r->w != NULL && !r->wait)
        (void)record_flush(s, r); /* MG_AGAIN: record_resume takes it on */
}

void
proxy_record_end(struct proxy_session *s, struct proxy_rec *r)
{
    r->commit = true; /* the end is in flight from here */
    if (r->wait) {
        r->end = true; /* the piece the store refused goes first */
        return;
    }
    if (record_flush(s, r) == MG_AGAIN) {
        r->end = true; /* record_resume commits */
        return;
    }
    record_commit(s, r);
}
