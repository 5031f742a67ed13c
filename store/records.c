/*
 * store/records.c -- record operations inside a transaction.
 *
 * Every function returns MG_OK, MG_DECLINED or MG_ERROR with text through
 * error_r. The text lives in thread-local buffers (these run on the writer
 * thread and on readers' threads, where mg_error's shared buffers are not
 * safe). An MG_ERROR that LMDB or the system caused also leaves its code
 * for mg_rec_take_rc(), so the writer can call the failure temporary.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "store.h"

#define REC_ERRBUFS    4
#define REC_ERRBUF_LEN 256

static _Thread_local int rec_last_rc;
static _Thread_local char rec_errbufs[REC_ERRBUFS][REC_ERRBUF_LEN];
static _Thread_local unsigned rec_errnext;

static const char *rec_error(const char *fmt, ...) MG_PRINTF(1, 2);

static const char *
rec_error(const char *fmt, ...)
{
    char *b = rec_errbufs[rec_errnext++ % REC_ERRBUFS];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(b, REC_ERRBUF_LEN, fmt, ap);
    va_end(ap);
    return b;
}

/* An LMDB failure: remember its code, say what failed and why. */
static int
rec_fail(int rc, const char *what, const char **error_r)
{
    rec_last_rc = rc;
    *error_r = rec_error("%s: %s", what, mdb_strerror(rc));
    return MG_ERROR;
}

int
mg_rec_take_rc(void)
{
    int rc = rec_last_rc;

    rec_last_rc = 0;
    return rc;
}

static void
rec_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void
rec_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t
rec_get_u64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Valid ids fit the 32-byte key prefix and decode again (codec.c). */
static int
rec_check_id(const char *id, const char **error_r)
{
    if (id == NULL || !mg_mailbox_id_valid(id)) {
        *error_r = rec_error("invalid mailbox id");
        return MG_ERROR;
    }
    return MG_OK;
}

void
mg_rec_msg_key(uint8_t key[MG_MSG_KEY], const char *mailbox_id, uint64_t msg_id)
{
    size_t len = strnlen(mailbox_id, MG_MAILBOX_ID_MAX);

    memset(key, 0, MG_MAILBOX_ID_MAX);
    memcpy(key, mailbox_id, len);
    rec_put_u64(key + MG_MAILBOX_ID_MAX, msg_id);
}

static void
rec_chunk_key(uint8_t key[MG_CHUNK_KEY], const char *mailbox_id,
              uint64_t msg_id, uint32_t n)
{
    mg_rec_msg_key(key, mailbox_id, msg_id);
    rec_put_u32(key + MG_MSG_KEY, n);
}

/* ------------------------------------------------------------ counters */

/* A mailbox's counters live in their own small record, so that storing a
 * message updates 16 bytes instead of rewriting the mailbox record (keys,
 * policy lists) and so that editing a mailbox never writes counters. */
#define REC_COUNTER_LEN 16

static int
rec_counter_get(struct mg_store *st, MDB_txn *txn, const char *id,
                uint64_t *messages_r, uint64_t *bytes_r, const char **error_r)
{
    MDB_val k = {strlen(id), (void *)id}, v;
    int rc;

    *messages_r = 0;
    *bytes_r = 0;
    rc = mdb_get(txn, mg_store_dbs(st)->counter, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_OK; /* nothing stored yet */
    if (rc != 0)
        return rec_fail(rc, "reading mailbox counters", error_r);
    if (v.mv_size != REC_COUNTER_LEN) {
        *error_r = rec_error("mailbox counters of %s are corrupt", id);
        return MG_ERROR;
    }
    *messages_r = rec_get_u64(v.mv_data);
    *bytes_r = rec_get_u64((const uint8_t *)v.mv_data + 8);
    return MG_OK;
}

static int
rec_counter_put(struct mg_store *st, MDB_txn *txn, const char *id,
                uint64_t messages, uint64_t bytes, const char **error_r)
{
    uint8_t buf[REC_COUNTER_LEN];
    MDB_val k = {strlen(id), (void *)id}, v = {sizeof(buf), buf};
    int rc;

    rec_put_u64(buf, messages);
    rec_put_u64(buf + 8, bytes);
    rc = mdb_put(txn, mg_store_dbs(st)->counter, &k, &v, 0);
    if (rc != 0)
        return rec_fail(rc, "writing mailbox counters", error_r);
    return MG_OK;
}

/* ------------------------------------------------------------ mailboxes */

int
mg_rec_mailbox_get(struct mg_store *st, MDB_txn *txn, const char *id,
                   struct mg_mailbox *m, const char **error_r)
{
    MDB_val k, v;
    int rc;

    if (rec_check_id(id, error_r) != MG_OK)
        return MG_ERROR;
    k.mv_data = (void *)id;
    k.mv_size = strlen(id);
    rc = mdb_get(txn, mg_store_dbs(st)->mailbox, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "reading a mailbox", error_r);
    if (mg_codec_mailbox_decode(v.mv_data, v.mv_size, m, error_r) != MG_OK)
        return MG_ERROR;
    if (rec_counter_get(st, txn, id, &m->messages, &m->bytes, error_r) !=
        MG_OK) {
        mg_mailbox_clear(m);
        return MG_ERROR;
    }
    return MG_OK;
}

int
mg_rec_mailbox_put(struct mg_store *st, MDB_txn *txn,
                   const struct mg_mailbox *m, const char **error_r)
{
    struct mg_mailbox rec = *m; /* shallow: only the counters differ */
    struct mg_buf b;
    MDB_val k, v;
    int rc;

    if (rec_check_id(m->id, error_r) != MG_OK)
        return MG_ERROR;
    /* the counters are kept in the counter record, never here */
    rec.messages = 0;
    rec.bytes = 0;
    mg_buf_init(&b);
    mg_codec_mailbox_encode(&rec, &b);
    k.mv_data = (void *)m->id;
    k.mv_size = strlen(m->id);
    v.mv_data = (void *)mg_buf_data(&b);
    v.mv_size = mg_buf_len(&b);
    rc = mdb_put(txn, mg_store_dbs(st)->mailbox, &k, &v, 0);
    mg_buf_free(&b);
    if (rc != 0)
        return rec_fail(rc, "writing a mailbox", error_r);
    return MG_OK;
}

int
mg_rec_mailbox_del(struct mg_store *st, MDB_txn *txn, const char *id,
                   const char **error_r)
{
    MDB_val k;
    int rc;

    if (rec_check_id(id, error_r) != MG_OK)
        return MG_ERROR;
    k.mv_data = (void *)id;
    k.mv_size = strlen(id);
    rc = mdb_del(txn, mg_store_dbs(st)->mailbox, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "deleting a mailbox", error_r);
    rc = mdb_del(txn, mg_store_dbs(st)->counter, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rec_fail(rc, "deleting mailbox counters", error_r);
    return MG_OK;
}

int
mg_rec_mailbox_list(struct mg_store *st, MDB_txn *txn, struct mg_mailbox **v_r,
                    size_t *n_r, const char **error_r)
{
    struct mg_mailbox *v = NULL;
    size_t n = 0, cap = 0;
    MDB_cursor *c;
    MDB_val k, d;
    int rc, ret = MG_OK;

    rc = mdb_cursor_open(txn, mg_store_dbs(st)->mailbox, &c);
    if (rc != 0)
        return rec_fail(rc, "listing mailboxes", error_r);
    for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &d, MDB_NEXT)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = mg_xrealloc(v, cap * sizeof(*v));
        }
        memset(&v[n], 0, sizeof(v[n]));
        if (mg_codec_mailbox_decode(d.mv_data, d.mv_size, &v[n], error_r) !=
            MG_OK) {
            ret = MG_ERROR;
            break;
        }
        n++;
        if (rec_counter_get(st, txn, v[n - 1].id, &v[n - 1].messages,
                            &v[n - 1].bytes, error_r) != MG_OK) {
            ret = MG_ERROR;
            break;
        }
    }
    mdb_cursor_close(c);
    if (ret == MG_OK && rc != MDB_NOTFOUND)
        ret = rec_fail(rc, "listing mailboxes", error_r);
    if (ret != MG_OK) {
        for (size_t i = 0; i < n; i++)
            mg_mailbox_clear(&v[i]);
        free(v);
        return ret;
    }
    *v_r = v;
    *n_r = n;
    return MG_OK;
}

/* ------------------------------------------------------------- messages */

int
mg_rec_msg_ids(struct mg_store *st, MDB_txn *txn, uint64_t n, uint64_t *first_r,
               const char **error_r)
{
    static const char name[] = "next_msg";
    uint8_t buf[8];
    uint64_t next = 1;
    MDB_val k = {sizeof(name) - 1, (void *)name}, v;
    int rc;

    rc = mdb_get(txn, mg_store_dbs(st)->meta, &k, &v);
    if (rc == 0 && v.mv_size == 8)
        next = rec_get_u64(v.mv_data);
    else if (rc == 0) {
        *error_r = rec_error("store meta next_msg is corrupt");
        return MG_ERROR;
    } else if (rc != MDB_NOTFOUND)
        return rec_fail(rc, "reading the message id counter", error_r);
    if (next == 0 || n > UINT64_MAX - next) {
        *error_r = rec_error("message ids exhausted");
        return MG_ERROR;
    }
    rec_put_u64(buf, next + n);
    v.mv_data = buf;
    v.mv_size = sizeof(buf);
    rc = mdb_put(txn, mg_store_dbs(st)->meta, &k, &v, 0);
    if (rc != 0)
        return rec_fail(rc, "writing the message id counter", error_r);
    *first_r = next;
    return MG_OK;
}

int
mg_rec_msg_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
               uint64_t msg_id, const struct mg_msg_header *h,
               const char **error_r)
{
    uint8_t key[MG_MSG_KEY];
    struct mg_buf b;
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    if (rec_check_id(mailbox_id, error_r) != MG_OK)
        return MG_ERROR;
    mg_rec_msg_key(key, mailbox_id, msg_id);
    mg_buf_init(&b);
    mg_codec_msg_encode(h, &b);
    v.mv_data = (void *)mg_buf_data(&b);
    v.mv_size = mg_buf_len(&b);
    rc = mdb_put(txn, mg_store_dbs(st)->message, &k, &v, 0);
    mg_buf_free(&b);
    if (rc != 0)
        return rec_fail(rc, "writing a message record", error_r);
    return MG_OK;
}

int
mg_rec_msg_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
               uint64_t msg_id, struct mg_msg_header *h, const char **error_r)
{
    uint8_t key[MG_MSG_KEY];
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    if (rec_check_id(mailbox_id, error_r) != MG_OK)
        return MG_ERROR;
    mg_rec_msg_key(key, mailbox_id, msg_id);
    rc = mdb_get(txn, mg_store_dbs(st)->message, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "reading a message record", error_r);
    return mg_codec_msg_decode(v.mv_data, v.mv_size, h, error_r);
}

int
mg_rec_chunk_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                 uint64_t msg_id, uint32_t n, const void *data, size_t len,
                 const char **error_r)
{
    uint8_t key[MG_CHUNK_KEY];
    MDB_val k = {sizeof(key), key}, v = {len, (void *)data};
    int rc;

    if (rec_check_id(mailbox_id, error_r) != MG_OK)
        return MG_ERROR;
    rec_chunk_key(key, mailbox_id, msg_id, n);
    rc = mdb_put(txn, mg_store_dbs(st)->chunk, &k, &v, 0);
    if (rc != 0)
        return rec_fail(rc, "writing a message chunk", error_r);
    mg_store_chunk_written(st, key, len);
    return MG_OK;
}

int
mg_rec_chunk_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                 uint64_t msg_id, uint32_t n, const void **data_r,
                 size_t *len_r, const char **error_r)
{
    uint8_t key[MG_CHUNK_KEY];
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    if (rec_check_id(mailbox_id, error_r) != MG_OK)
        return MG_ERROR;
    rec_chunk_key(key, mailbox_id, msg_id, n);
    rc = mdb_get(txn, mg_store_dbs(st)->chunk, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "reading a message chunk", error_r);
    *data_r = v.mv_data;
    *len_r = v.mv_size;
    return MG_OK;
}

/* Add (sign 1) or remove (sign -1) a visible message from its mailbox's
 * counters. A mailbox that is gone has no counters to keep. */
static int
rec_count(struct mg_store *st, MDB_txn *txn, const char *mailbox_id, int sign,
          uint64_t size, bool must_exist, const char **error_r)
{
    MDB_val k = {strlen(mailbox_id), (void *)mailbox_id}, v;
    uint64_t messages, bytes;
    int rc;

    rc = mdb_get(txn, mg_store_dbs(st)->mailbox, &k, &v);
    if (rc == MDB_NOTFOUND) {
        if (!must_exist)
            return MG_OK;
        *error_r = rec_error("mailbox %s does not exist", mailbox_id);
        return MG_ERROR;
    }
    if (rc != 0)
        return rec_fail(rc, "reading a mailbox", error_r);
    if (rec_counter_get(st, txn, mailbox_id, &messages, &bytes, error_r) !=
        MG_OK)
        return MG_ERROR;
    if (sign > 0) {
        messages++;
        bytes += size;
    } else {
        messages = messages > 0 ? messages - 1 : 0;
        bytes = bytes > size ? bytes - size : 0;
    }
    return rec_counter_put(st, txn, mailbox_id, messages, bytes, error_r);
}

int
mg_rec_msg_publish(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                   uint64_t msg_id, const char **error_r)
{
    struct mg_msg_header h;
    int ret;

    ret = mg_rec_msg_get(st, txn, mailbox_id, msg_id, &h, error_r);
    if (ret == MG_DECLINED) {
        *error_r = rec_error("message %s/%llu does not exist", mailbox_id,
                             (unsigned long long)msg_id);
        return MG_ERROR;
    }
    if (ret != MG_OK)
        return ret;
    if (h.state == MG_MSG_VISIBLE)
        return MG_OK; /* published before: count it once */
    h.state = MG_MSG_VISIBLE;
    if (mg_rec_msg_put(st, txn, mailbox_id, msg_id, &h, error_r) != MG_OK)
        return MG_ERROR;
    return rec_count(st, txn, mailbox_id, 1, h.size, true, error_r);
}

int
mg_rec_msg_commit(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                  uint64_t msg_id, const struct mg_msg_header *h, bool publish,
                  const char **error_r)
{
    struct mg_msg_header c = *h;

    /* straight to VISIBLE: one header write, not HELD and then VISIBLE */
    c.state = publish ? MG_MSG_VISIBLE : MG_MSG_HELD;
    if (mg_rec_msg_put(st, txn, mailbox_id, msg_id, &c, error_r) != MG_OK)
        return MG_ERROR;
    if (!publish)
        return MG_OK;
    return rec_count(st, txn, mailbox_id, 1, c.size, true, error_r);
}

int
mg_rec_msg_delete(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                  uint64_t msg_id, const char **error_r)
{
    uint8_t key[MG_CHUNK_KEY];
    struct mg_msg_header h;
    MDB_cursor *c;
    MDB_val k, v;
    int rc, ret;

    ret = mg_rec_msg_get(st, txn, mailbox_id, msg_id, &h, error_r);
    if (ret != MG_OK)
        return ret;

    /* every chunk under the message key, whatever nchunks says */
    rec_chunk_key(key, mailbox_id, msg_id, 0);
    rc = mdb_cursor_open(txn, mg_store_dbs(st)->chunk, &c);
    if (rc != 0)
        return rec_fail(rc, "deleting message chunks", error_r);
    for (;;) {
        k.mv_data = key;
        k.mv_size = MG_MSG_KEY;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc != 0 || k.mv_size != MG_CHUNK_KEY ||
            memcmp(k.mv_data, key, MG_MSG_KEY) != 0)
            break;
        rc = mdb_cursor_del(c, 0);
        if (rc != 0)
            break;
    }
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rec_fail(rc, "deleting message chunks", error_r);

    k.mv_data = key;
    k.mv_size = MG_MSG_KEY;
    rc = mdb_del(txn, mg_store_dbs(st)->message, &k, NULL);
    if (rc != 0)
        return rec_fail(rc, "deleting a message record", error_r);
    if (h.state == MG_MSG_VISIBLE)
        return rec_count(st, txn, mailbox_id, -1, h.size, false, error_r);
    return MG_OK;
}

void
mg_rec_msg_prefetch(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                    uint64_t msg_id)
{
    uint8_t key[MG_CHUNK_KEY];
    MDB_cursor *c;
    MDB_val k = {MG_MSG_KEY, key}, v;
    int rc;

    if (!mg_store_drops_pages(st) || !mg_mailbox_id_valid(mailbox_id) ||
        mdb_cursor_open(txn, mg_store_dbs(st)->chunk, &c) != 0)
        return;
    rec_chunk_key(key, mailbox_id, msg_id, 0);
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size == MG_CHUNK_KEY &&
         memcmp(k.mv_data, key, MG_MSG_KEY) == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        mg_store_chunk_deleting(st, v.mv_data, v.mv_size);
    mdb_cursor_close(c);
}

/* Walk a mailbox's messages in id order; fn returns false to stop. */
static int
rec_msg_walk(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
             bool (*fn)(uint64_t id, const struct mg_msg_header *h, void *arg),
             void *arg, const char **error_r)
{
    uint8_t prefix[MG_MSG_KEY];
    struct mg_msg_header h;
    MDB_cursor *c;
    MDB_val k = {MG_MAILBOX_ID_MAX, prefix}, v;
    int rc, ret = MG_OK;

    if (rec_check_id(mailbox_id, error_r) != MG_OK)
        return MG_ERROR;
    mg_rec_msg_key(prefix, mailbox_id, 0);
    rc = mdb_cursor_open(txn, mg_store_dbs(st)->message, &c);
    if (rc != 0)
        return rec_fail(rc, "listing messages", error_r);
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != MG_MSG_KEY ||
            memcmp(k.mv_data, prefix, MG_MAILBOX_ID_MAX) != 0)
            break;
        if (mg_codec_msg_decode(v.mv_data, v.mv_size, &h, error_r) != MG_OK) {
            ret = MG_ERROR;
            break;
        }
        if (!fn(rec_get_u64((const uint8_t *)k.mv_data + MG_MAILBOX_ID_MAX), &h,
                arg))
            break;
    }
    mdb_cursor_close(c);
    if (ret == MG_OK && rc != 0 && rc != MDB_NOTFOUND)
        ret = rec_fail(rc, "listing messages", error_r);
    return ret;
}

struct rec_list {
    bool visible_only;
    struct mg_msg_ref *v;
    size_t n, cap;
};

static bool
rec_list_one(uint64_t id, const struct mg_msg_header *h, void *arg)
{
    struct rec_list *l = arg;

    if (l->visible_only && h->state != MG_MSG_VISIBLE)
        return true;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = mg_xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n].id = id;
    l->v[l->n].size = h->size;
    l->v[l->n].received = h->received;
    l->v[l->n].state = h->state;
    l->n++;
    return true;
}

int
mg_rec_msg_list(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                bool visible_only, struct mg_msg_ref **v_r, size_t *n_r,
                const char **error_r)
{
    struct rec_list l = {.visible_only = visible_only};

    if (rec_msg_walk(st, txn, mailbox_id, rec_list_one, &l, error_r) != MG_OK) {
        free(l.v);
        return MG_ERROR;
    }
    *v_r = l.v;
    *n_r = l.n;
    return MG_OK;
}

struct rec_oldest {
    bool found;
    uint64_t received;
};

static bool
rec_oldest_one(uint64_t id, const struct mg_msg_header *h, void *arg)
{
    struct rec_oldest *o = arg;

    (void)id;
    if (h->state != MG_MSG_VISIBLE)
        return true;
    o->found = true;
    o->received = h->received;
    return false;
}

int
mg_rec_msg_oldest(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                  uint64_t *received_r, const char **error_r)
{
    struct rec_oldest o = {0};

    if (rec_msg_walk(st, txn, mailbox_id, rec_oldest_one, &o, error_r) != MG_OK)
        return MG_ERROR;
    if (!o.found)
        return MG_DECLINED;
    *received_r = o.received;
    return MG_OK;
}

/* -------------------------------------------------------------- dedup */

static void
rec_hash_field(crypto_generichash_state *hs, const char *s)
{
    size_t len = s != NULL ? strlen(s) : 0;
    uint8_t lenbuf[4];

    /* length-prefixed: ("ab","c") and ("a","bc") hash differently */
    rec_put_u32(lenbuf, (uint32_t)len);
    crypto_generichash_update(hs, lenbuf, sizeof(lenbuf));
    if (len > 0)
        crypto_generichash_update(hs, (const uint8_t *)s, len);
}

/* The index key is a hash, so the index shows no readable names. */
static void
rec_dedup_key(uint8_t key[32], const char *mailbox_id, const char *upstream,
              const char *user, const char *uidl)
{
    crypto_generichash_state hs;

    crypto_generichash_init(&hs, NULL, 0, 32);
    rec_hash_field(&hs, mailbox_id);
    rec_hash_field(&hs, upstream);
    rec_hash_field(&hs, user);
    rec_hash_field(&hs, uidl);
    crypto_generichash_final(&hs, key, 32);
}

int
mg_rec_dedup_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                 const char *upstream, const char *user, const char *uidl,
                 uint64_t *msg_id_r, const char **error_r)
{
    uint8_t key[32];
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    rec_dedup_key(key, mailbox_id, upstream, user, uidl);
    rc = mdb_get(txn, mg_store_dbs(st)->dedup, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "reading the de-duplication index", error_r);
    if (v.mv_size != 8) {
        *error_r = rec_error("de-duplication record is corrupt");
        return MG_ERROR;
    }
    *msg_id_r = rec_get_u64(v.mv_data);
    return MG_OK;
}

int
mg_rec_dedup_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                 const char *upstream, const char *user, const char *uidl,
                 uint64_t msg_id, const char **error_r)
{
    uint8_t key[32], val[8];
    MDB_val k = {sizeof(key), key}, v = {sizeof(val), val};
    int rc;

    rec_dedup_key(key, mailbox_id, upstream, user, uidl);
    rec_put_u64(val, msg_id);
    rc = mdb_put(txn, mg_store_dbs(st)->dedup, &k, &v, 0);
    if (rc != 0)
        return rec_fail(rc, "writing the de-duplication index", error_r);
    return MG_OK;
}

/* ------------------------------------------------------------------ kv */

static int
rec_kv_key(const char *key, MDB_val *k, const char **error_r)
{
    size_t len = key != NULL ? strlen(key) : 0;

    if (len == 0 || len > 511) { /* LMDB's default key limit */
        *error_r = rec_error("invalid settings key");
        return MG_ERROR;
    }
    k->mv_data = (void *)key;
    k->mv_size = len;
    return MG_OK;
}

int
mg_rec_kv_get(struct mg_store *st, MDB_txn *txn, const char *key,
              struct mg_buf *value, const char **error_r)
{
    MDB_val k, v;
    int rc;

    if (rec_kv_key(key, &k, error_r) != MG_OK)
        return MG_ERROR;
    rc = mdb_get(txn, mg_store_dbs(st)->kv, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "reading a setting", error_r);
    mg_buf_append(value, v.mv_data, v.mv_size);
    return MG_OK;
}

int
mg_rec_kv_put(struct mg_store *st, MDB_txn *txn, const char *key,
              const void *value, size_t len, const char **error_r)
{
    MDB_val k, v = {len, (void *)value};
    int rc;

    if (rec_kv_key(key, &k, error_r) != MG_OK)
        return MG_ERROR;
    rc = mdb_put(txn, mg_store_dbs(st)->kv, &k, &v, 0);
    if (rc != 0)
        return rec_fail(rc, "writing a setting", error_r);
    return MG_OK;
}

int
mg_rec_kv_del(struct mg_store *st, MDB_txn *txn, const char *key,
              const char **error_r)
{
    MDB_val k;
    int rc;

    if (rec_kv_key(key, &k, error_r) != MG_OK)
        return MG_ERROR;
    rc = mdb_del(txn, mg_store_dbs(st)->kv, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return MG_DECLINED;
    if (rc != 0)
        return rec_fail(rc, "deleting a setting", error_r);
    return MG_OK;
}
