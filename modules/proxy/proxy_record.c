/*
 * modules/proxy/proxy_record.c -- a copy of every retrieved message in the
 * mailbox the login named: streamed into the store as the client receives
 * it (unstuffed) and committed durably together with its entry in the
 * de-duplication index under (mailbox, upstream, remote user, upstream
 * UIDL): one transaction, so a crash never leaves a copy the index does
 * not know (a store without msg_dedup gets the entry in a second commit).
 * Two sessions retrieving the same upstream message at the same time each
 * record a copy (neither is in the index when the other looks); the entry
 * names the later one.
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

static void
record_trace(struct proxy_session *s)
{
    const struct mg_peer *up =
        s->up != NULL ? s->st->api->conn->peer(s->up) : NULL;
    const char *uidl = record_uidl(s, s->msgno);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    int n;

    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    n = snprintf(s->wbuf, RECORD_PIECE,
                 "Received: from %s (%s)\r\n\tby %s with POP3S (mailgate "
                 "proxy%s%s)%s%s;\r\n\t%s\r\n",
                 s->login.host, up != NULL ? up->addr : "?", s->st->hostname,
                 up != NULL && up->tls_version ? " " : "",
                 up != NULL && up->tls_version ? up->tls_version : "",
                 uidl != NULL ? " id " : "", uidl != NULL ? uidl : "", date);
    s->wlen = n > 0 && n < RECORD_PIECE ? (size_t)n : 0;
}

int
proxy_record_begin(struct proxy_session *s)
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
    const char *uidl = record_uidl(s, s->msgno);

    proxy_record_abort(s);
    s->w = rs(s)->msg_begin(ids, 1, &env, s->id, &err);
    if (s->w == NULL) {
        snprintf(s->whybuf, sizeof(s->whybuf), "%s",
                 err != NULL ? err : "the store refused the message");
        s->why = s->whybuf;
        return MG_ERROR;
    }
    if (s->wbuf == NULL) {
        s->wbuf = malloc(RECORD_PIECE + PROXY_DATA_LINE + 2);
        if (s->wbuf == NULL)
            abort();
    }
    s->wsize = 0;
    s->rec_failed = s->rec_wait = s->rec_commit = s->rec_end = false;
    s->rec_dedup = false;
    if (uidl != NULL &&
        rs(s)->size >= offsetof(struct mg_store_api, msg_dedup) +
                           sizeof(rs(s)->msg_dedup) &&
        rs(s)->msg_dedup(s->w, s->login.upstream, s->login.user, uidl) == MG_OK)
        s->rec_dedup = true;
    record_trace(s);
    return MG_OK;
}

void
proxy_record_abort(struct proxy_session *s)
{
    if (s->w != NULL) {
        rs(s)->msg_free(s->w); /* removes what was written; no callback */
        s->w = NULL;
    }
    s->wlen = 0;
    s->rec_wait = false;
}

static void record_commit(struct proxy_session *s);

static void
record_resume(uint64_t conn_id, void *arg)
{
    struct proxy_session *s = proxy_session_find(conn_id);
    int r;

    (void)arg;
    if (s == NULL || !s->rec_wait)
        return;
    proxy_enter(s);
    s->rec_wait = false;
    r = rs(s)->msg_write(s->w, s->wbuf, s->wlen, record_resume, NULL);
    if (r == MG_AGAIN) {
        s->rec_wait = true;
    } else {
        if (r != MG_OK)
            s->rec_failed = true;
        s->wsize += s->wlen;
        s->wlen = 0;
        if (s->rec_end)
            record_commit(s);
        else
            proxy_relay_resume(s);
    }
    proxy_leave(s);
}

/* Hand the buffered piece to the store. */
static int
record_flush(struct proxy_session *s)
{
    int r;

    if (s->wlen == 0 || s->rec_failed)
        return MG_OK;
    r = rs(s)->msg_write(s->w, s->wbuf, s->wlen, record_resume, NULL);
    if (r == MG_AGAIN) {
        s->rec_wait = true;
        return MG_AGAIN;
    }
    if (r != MG_OK)
        s->rec_failed = true; /* commit reports why */
    s->wsize += s->wlen;
    s->wlen = 0;
    return MG_OK;
}

int
proxy_record_line(struct proxy_session *s, const char *line, size_t len)
{
    if (s->rec_failed || s->w == NULL)
        return MG_OK;
    memcpy(s->wbuf + s->wlen, line, len);
    memcpy(s->wbuf + s->wlen + len, "\r\n", 2);
    s->wlen += len + 2;
    if (s->wlen < RECORD_PIECE)
        return MG_OK;
    return record_flush(s);
}

static void
record_indexed(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct proxy_session *s = proxy_session_find(conn_id);

    (void)arg;
    if (s == NULL || !s->rec_commit)
        return;
    proxy_enter(s);
    if (res->status != MG_OK)
        proxy_session_log(s, MG_LOG_WARNING,
                          "message %u recorded, but not entered in the "
                          "de-duplication index (%s): it may be recorded "
                          "again",
                          (unsigned)s->msgno,
                          res->error != NULL ? res->error : "store error");
    proxy_relay_recorded(s, true);
    proxy_leave(s);
}

static void
record_committed(uint64_t conn_id, const struct mg_store_result *res, void *arg)
{
    struct proxy_session *s = proxy_session_find(conn_id);
    const struct mg_core_api *api;
    const char *uidl;
    uint64_t id = 0;
    char own_uidl[40];

    (void)arg;
    if (s == NULL || !s->rec_commit)
        return;
    api = s->st->api;
    proxy_enter(s);
    if (res->status != MG_OK) {
        snprintf(s->whybuf, sizeof(s->whybuf), "%s",
                 res->error != NULL ? res->error : "commit failed");
        s->why = s->whybuf;
        proxy_record_abort(s);
        proxy_relay_recorded(s, false);
        proxy_leave(s);
        return;
    }
    if (api->store->msg_id(s->w, 0, &id, own_uidl) == MG_OK) {
        struct mg_hook_message_stored data = {
            .mailbox_id = s->login.mailbox,
            .msg_id = id,
            .size = s->wsize,
            .source = "proxy-pop3",
        };
        struct mg_hook_call call = {
            .hook = "message.stored",
            .conn_id = s->id,
            .data = &data,
        };

        (void)api->hook_run(&call, NULL, NULL);
    }
    api->store->msg_free(s->w);
    s->w = NULL;
    uidl = record_uidl(s, s->msgno);
    if (uidl == NULL || s->rec_dedup ||
        api->store->dedup_put(s->login.mailbox, s->login.upstream,
                              s->login.user, uidl, id, s->id, record_indexed,
                              NULL) != MG_OK)
        proxy_relay_recorded(s, true);
    proxy_leave(s);
}

static void
record_commit(struct proxy_session *s)
{
    s->rec_end = false;
    if (s->rec_failed ||
        rs(s)->msg_commit(s->w, true, record_committed, NULL) != MG_OK) {
        s->why = "the store could not take the message";
        proxy_record_abort(s);
        proxy_relay_recorded(s, false);
    }
}

void
proxy_record_end(struct proxy_session *s)
{
    if (record_flush(s) == MG_AGAIN) {
        s->rec_end = true; /* record_resume commits */
        return;
    }
    record_commit(s);
}
