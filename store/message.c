/*
 * store/message.c -- streaming writer and reader of one message.
 *
 * Writer: the caller's thread encrypts (one vault stream per mailbox copy)
 * and queues ops; the store's writer thread only puts records. Chunk 0 of
 * every copy is the encoded envelope, chunks 1.. the body, the last one
 * pushed with the FINAL tag (possibly empty). Encrypted chunks are held
 * and queued a few at a time as one op; a message is WRITING until the
 * commit op (which carries the chunks still held) writes every copy's
 * header HELD or VISIBLE in one op. A message small enough to be held
 * whole is one op: its headers are written once, already committed.
 *
 * Reader: the header, then one chunk per short read transaction,
 * decrypted straight from the mapped page into the reader's buffer.
 */
#include "config.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "store.h"

/* Ciphertext bytes one writer may have queued and not yet committed. */
#define MSG_QUEUE_LIMIT (4 * 1024 * 1024)
/* Encrypted chunks a writer collects before it queues them as one op:
 * fewer ops (nested transactions, wake-ups) per message, and a message
 * below this size goes to the writer thread whole, with its commit. */
#define MSG_HOLD_BYTES (256 * 1024)
#define MSG_ERR_LEN    200

/* mg_error() is loop-only; writers and readers run on other threads. */
static _Thread_local char msg_errbuf[MSG_ERR_LEN];

static const char *msg_error(const char *fmt, ...) MG_PRINTF(1, 2);

static const char *
msg_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg_errbuf, sizeof(msg_errbuf), fmt, ap);
    va_end(ap);
    return msg_errbuf;
}

void
mg_msg_uidl(const struct mg_store *st, uint64_t msg_id, char out[40])
{
    /* the epoch changes at restore, so a restored store never repeats a
     * UIDL an archiver has seen */
    snprintf(out, 40, "%.16s-%" PRIu64, mg_store_epoch(st), msg_id);
}

/* ================================================================ writer */

enum msg_wstate {
    MSG_W_OPEN = 0,   /* accepting data */
    MSG_W_COMMITTING, /* commit queued, done not yet run */
    MSG_W_HELD,       /* committed HELD */
    MSG_W_FINISHED,   /* VISIBLE or discarded: nothing left to clean */
};

enum msg_op_kind {
    MSG_OP_IDS,
    MSG_OP_FIRST,
    MSG_OP_CHUNK,
    MSG_OP_COMMIT,
    MSG_OP_PUBLISH,
    MSG_OP_DISCARD,
    MSG_OP_DELETE,
};

struct mg_store_writer;

/** One queued op of a writer (or a stand-alone delete). */
struct msg_op {
    struct mg_store_op op;
    enum msg_op_kind kind;
    struct mg_store_writer *w; /* NULL for a stand-alone delete */
    uint32_t chunk;            /* MSG_OP_CHUNK, MSG_OP_FIRST: chunk number */
    size_t clen;               /* ciphertext bytes per copy */
    uint8_t *data;             /* n * clen */
    bool publish;              /* MSG_OP_COMMIT */
    uint32_t nchunks;          /* MSG_OP_COMMIT */
    uint64_t size;             /* MSG_OP_COMMIT */
    mg_store_writer_fn done;
    void *done_arg;
    /* MSG_OP_IDS, MSG_OP_DELETE */
    uint64_t first;
    size_t n;
    char (*mailbox_ids)[MG_MAILBOX_ID_MAX + 1];
    uint64_t *ids;
    /* the held chunk ops this op carries (never queued themselves) */
    struct msg_op *parts, *next_part;
};

struct mg_store_writer {
    struct mg_store *st;
    size_t n;
    char (*mailbox_ids)[MG_MAILBOX_ID_MAX + 1];
    uint64_t *ids;
    struct mg_vault_enc **enc;
    struct mg_msg_header *hdr; /* per copy: sealed key, stream header */
    uint8_t *plain;            /* up to MG_VAULT_CHUNK bytes of body */
    size_t pcap;               /* its size */
    size_t plen;
    uint32_t nchunks;            /* chunks encrypted so far */
    struct msg_op *held, **tail; /* encrypted chunks not yet queued */
    size_t held_bytes;
    uint64_t size; /* body bytes accepted */
    enum msg_wstate state;
    /* the proxy's de-duplication entry for copy 0, written in the commit's
     * own transaction (mg_store_writer_dedup) */
    char *dd_upstream, *dd_user, *dd_uidl;

    /* shared with the store's writer thread */
    pthread_mutex_t lock;
    unsigned refs; /* the caller's + one per queued op */
    size_t outstanding;
    bool failed;       /* an op completed with an error */
    bool apply_failed; /* an op failed in its batch, not yet completed */
    bool temporary;
    char error[MSG_ERR_LEN];
    bool want_drained;
    bool freed;
    void (*drained)(void *arg);
    void *drained_arg;
};

static void
msg_op_error(struct mg_store_op *op, const char *error)
{
    snprintf(op->error, sizeof(op->error), "%s", error ? error : "failed");
}

/* A record call failed: its text into the op; an LMDB-style code back. */
static int
msg_apply_fail(struct mg_store_op *op, int rc, const char *error)
{
    msg_op_error(op, error);
    return rc == MG_DECLINED || rc == MG_OK ? MG_ERROR : rc;
}

static void
msg_writer_unref(struct mg_store_writer *w)
{
    bool last;
    size_t i;

    pthread_mutex_lock(&w->lock);
    last = --w->refs == 0;
    pthread_mutex_unlock(&w->lock);
    if (!last)
        return;
    for (i = 0; i < w->n; i++) {
        if (w->enc[i] != NULL)
            mg_vault_enc_free(w->enc[i]);
    }
    sodium_memzero(w->plain, w->pcap);
    free(w->plain);
    free(w->enc);
    free(w->hdr);
    free(w->ids);
    free(w->mailbox_ids);
    free(w->dd_upstream);
    free(w->dd_user);
    free(w->dd_uidl);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* The parts an op carried: each held a writer ref (w outlives this: the
 * carrying op holds one more). */
static void
msg_parts_free(struct msg_op *parts)
{
    struct msg_op *p, *next;

    for (p = parts; p != NULL; p = next) {
        next = p->next_part;
        free(p->data);
        msg_writer_unref(p->w);
        free(p);
    }
}

static void
msg_op_free(struct msg_op *o)
{
    msg_parts_free(o->parts);
    free(o->data);
    if (o->w == NULL) {
        free(o->mailbox_ids);
        free(o->ids);
    }
    free(o);
}

static bool
msg_writer_failed(struct mg_store_writer *w, struct mg_store_op *op)
{
    bool failed;

    pthread_mutex_lock(&w->lock);
    failed = w->failed || w->apply_failed;
    if (failed)
        msg_op_error(op, w->error);
    pthread_mutex_unlock(&w->lock);
    return failed;
}

/* Note a failure at apply time, so a commit later in the same batch sees
 * it before any completion ran (the completion says whether temporary). */
static void
msg_writer_set_failed(struct mg_store_writer *w, const char *error)
{
    pthread_mutex_lock(&w->lock);
    if (!w->failed && !w->apply_failed) {
        w->apply_failed = true;
        snprintf(w->error, sizeof(w->error), "%s", error);
    }
    pthread_mutex_unlock(&w->lock);
}

static enum msg_wstate
msg_writer_state(struct mg_store_writer *w)
{
    enum msg_wstate state;

    pthread_mutex_lock(&w->lock);
    state = w->state;
    pthread_mutex_unlock(&w->lock);
    return state;
}

static int
msg_apply_ids(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    const char *error = NULL;
    int rc;

    rc = mg_rec_msg_ids(st, txn, o->n, &o->first, &error);
    if (rc != MG_OK)
        return msg_apply_fail(op, rc, error);
    return MG_OK;
}

/* Put chunk o->chunk of every copy; MSG_OP_FIRST also the WRITING
 * headers, unless the commit in the same op writes them. */
static int
msg_apply_chunk(struct mg_store *st, MDB_txn *txn, struct msg_op *o,
                bool committing)
{
    struct mg_store_writer *w = o->w;
    struct mg_store_op *op = &o->op;
    const char *error = NULL;
    size_t i;
    int rc;

    if (msg_writer_failed(w, op))
        return MG_ERROR;
    for (i = 0; i < w->n; i++) {
        if (o->kind == MSG_OP_FIRST && !committing) {
            rc = mg_rec_msg_put(st, txn, w->mailbox_ids[i], w->ids[i],
                                &w->hdr[i], &error);
            if (rc != MG_OK)
                goto fail;
        }
        rc = mg_rec_chunk_put(st, txn, w->mailbox_ids[i], w->ids[i], o->chunk,
                              o->data + i * o->clen, o->clen, &error);
        if (rc != MG_OK)
            goto fail;
    }
    return MG_OK;
fail:
    rc = msg_apply_fail(op, rc, error);
    msg_writer_set_failed(w, op->error);
    return rc;
}

/* Every chunk present, then each header HELD or VISIBLE: all copies in
 * this one op, so they become visible together. */
static int
msg_apply_commit(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    struct mg_store_writer *w = o->w;
    struct mg_msg_header h;
    const char *error = NULL;
    const void *data;
    uint64_t now = (uint64_t)time(NULL);
    size_t i, len;
    uint32_t k;
    int rc;

    if (msg_writer_failed(w, op))
        return MG_ERROR;
    for (i = 0; i < w->n; i++) {
        /* a chunk op of an earlier, failed batch may not have reported
         * yet: check rather than trust (what this op carries was just put) */
        for (k = 0; k < (o->parts != NULL ? o->parts->chunk : o->nchunks);
             k++) {
            rc = mg_rec_chunk_get(st, txn, w->mailbox_ids[i], w->ids[i], k,
                                  &data, &len, &error);
            if (rc != MG_OK) {
                return msg_apply_fail(
                    op, rc, msg_error("message data missing (chunk %u)", k));
            }
        }
        h = w->hdr[i];
        h.size = o->size;
        h.nchunks = o->nchunks;
        h.received = now;
        rc = mg_rec_msg_commit(st, txn, w->mailbox_ids[i], w->ids[i], &h,
                               o->publish, &error);
        if (rc != MG_OK)
            return msg_apply_fail(op, rc, error);
    }
    if (w->dd_uidl != NULL) {
        rc = mg_rec_dedup_put(st, txn, w->mailbox_ids[0], w->dd_upstream,
                              w->dd_user, w->dd_uidl, w->ids[0], &error);
        if (rc != MG_OK)
            return msg_apply_fail(op, rc, error);
    }
    return MG_OK;
}

/* The held chunks this op carries, then the commit if it is one. */
static int
msg_apply_parts(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    bool committing = o->kind == MSG_OP_COMMIT;

    for (struct msg_op *p = o->parts; p != NULL; p = p->next_part) {
        int rc = msg_apply_chunk(st, txn, p, committing);

        if (rc != MG_OK) {
            msg_op_error(op, p->op.error);
            return rc;
        }
    }
    return committing ? msg_apply_commit(st, txn, op) : MG_OK;
}

static int
msg_apply_publish(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    struct mg_store_writer *w = o->w;
    const char *error = NULL;
    size_t i;
    int rc;

    for (i = 0; i < w->n; i++) {
        rc = mg_rec_msg_publish(st, txn, w->mailbox_ids[i], w->ids[i], &error);
        if (rc != MG_OK)
            return msg_apply_fail(op, rc, error);
    }
    return MG_OK;
}

/* Remove every copy (discard of a HELD message, or uncommitted data). */
static int
msg_apply_delete(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    const char *error = NULL;
    size_t i;
    int rc;

    for (i = 0; i < o->n; i++) {
        rc = mg_rec_msg_delete(st, txn, o->mailbox_ids[i], o->ids[i], &error);
        if (rc != MG_OK && rc != MG_DECLINED)
            return msg_apply_fail(op, rc, error);
    }
    return MG_OK;
}

/* Writer thread: a chunk op finished; account and maybe signal drained. */
static void
msg_complete_chunk(struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    struct mg_store_writer *w = o->w;
    void (*drained)(void *) = NULL;
    void *drained_arg = NULL;

    pthread_mutex_lock(&w->lock);
    w->outstanding -= op->bytes;
    if (op->status != MG_OK && !w->failed) {
        w->failed = true;
        w->temporary = op->temporary;
        if (!w->apply_failed || op->error[0] != '\0') {
            snprintf(w->error, sizeof(w->error), "%s",
                     op->error[0] != '\0' ? op->error : "storing failed");
        }
    }
    if (w->want_drained &&
        (w->outstanding <= MSG_QUEUE_LIMIT / 2 || w->failed)) {
        w->want_drained = false;
        if (!w->freed) {
            drained = w->drained;
            drained_arg = w->drained_arg;
        }
    }
    pthread_mutex_unlock(&w->lock);
    msg_op_free(o);
    if (drained != NULL)
        drained(drained_arg);
    msg_writer_unref(w);
}

/* Writer thread: commit, publish or discard finished. */
static void
msg_complete_step(struct mg_store_op *op)
{
    struct msg_op *o = op->arg;
    struct mg_store_writer *w = o->w;
    mg_store_writer_fn done = o->done;
    void *done_arg = o->done_arg;
    const char *error = NULL;
    int status = op->status;
    bool temporary = op->temporary;

    pthread_mutex_lock(&w->lock);
    if (o->kind == MSG_OP_COMMIT)
        w->outstanding -= op->bytes;
    if (status == MG_OK) {
        if (o->kind == MSG_OP_COMMIT)
            w->state = o->publish ? MSG_W_FINISHED : MSG_W_HELD;
        else
            w->state = MSG_W_FINISHED;
    } else {
        if (o->kind == MSG_OP_COMMIT) {
            /* a failure of an earlier chunk wins: it is the cause */
            if (w->failed) {
                temporary = w->temporary;
                snprintf(op->error, sizeof(op->error), "%s", w->error);
            }
            w->state = MSG_W_OPEN;
            w->failed = true;
        }
        error = op->error[0] != '\0' ? op->error : "storing failed";
    }
    pthread_mutex_unlock(&w->lock);
    if (done != NULL)
        done(w, status, temporary, error, done_arg);
    msg_op_free(o);
    msg_writer_unref(w);
}

static void
msg_complete_delete(struct mg_store_op *op)
{
    msg_op_free(op->arg);
}

static struct msg_op *
msg_op_new(struct mg_store_writer *w, enum msg_op_kind kind,
           mg_store_apply_fn apply, mg_store_complete_fn complete)
{
    struct msg_op *o = mg_xcalloc(1, sizeof(*o));

    o->kind = kind;
    o->w = w;
    o->op.apply = apply;
    o->op.complete = complete;
    o->op.arg = o;
    if (w != NULL) {
        pthread_mutex_lock(&w->lock);
        w->refs++;
        pthread_mutex_unlock(&w->lock);
    }
    return o;
}

/* Encrypt `len` plaintext bytes as the next chunk of every copy. */
static struct msg_op *
msg_chunk_op(struct mg_store_writer *w, enum msg_op_kind kind,
             const void *plain, size_t len, bool final)
{
    /* carried by another op: never queued, so neither apply nor complete */
    struct msg_op *o = msg_op_new(w, kind, NULL, NULL);
    size_t i;

    o->chunk = w->nchunks++;
    o->clen = len + MG_VAULT_ABYTES;
    o->data = mg_xmalloc(w->n * o->clen);
    for (i = 0; i < w->n; i++)
        mg_vault_enc_push(w->enc[i], plain, len, final, o->data + i * o->clen);
    o->op.new_data = true;
    o->op.bytes = w->n * o->clen;
    return o;
}

static void
msg_queue(struct mg_store_writer *w, struct msg_op *o)
{
    pthread_mutex_lock(&w->lock);
    w->outstanding += o->op.bytes;
    pthread_mutex_unlock(&w->lock);
    mg_store_submit(w->st, &o->op);
}

/* Room for `need` plaintext bytes; the old buffer is wiped, not leaked
 * to the allocator with message data in it. */
static void
msg_plain_room(struct mg_store_writer *w, size_t need)
{
    size_t cap = w->pcap ? w->pcap : 4096;
    uint8_t *p;

    if (need <= w->pcap)
        return;
    while (cap < need)
        cap *= 2;
    if (cap > MG_VAULT_CHUNK)
        cap = MG_VAULT_CHUNK;
    p = mg_xmalloc(cap);
    if (w->plen > 0)
        memcpy(p, w->plain, w->plen);
    if (w->plain != NULL) {
        sodium_memzero(w->plain, w->pcap);
        free(w->plain);
    }
    w->plain = p;
    w->pcap = cap;
}

/* Give the held chunks to op o (they go out with it). */
static void
msg_take_held(struct mg_store_writer *w, struct msg_op *o)
{
    o->parts = w->held;
    o->op.bytes += w->held_bytes;
    w->held = NULL;
    w->tail = &w->held;
    w->held_bytes = 0;
}

/* Encrypt `len` bytes as the next chunk and hold it; queue what is held
 * once it is enough for an op of its own (never the final chunk: that
 * one goes out with the commit). */
static void
msg_hold(struct mg_store_writer *w, enum msg_op_kind kind, const void *plain,
         size_t len, bool final)
{
    struct msg_op *o = msg_chunk_op(w, kind, plain, len, final);

    *w->tail = o;
    w->tail = &o->next_part;
    w->held_bytes += o->op.bytes;
    if (!final && w->held_bytes >= MSG_HOLD_BYTES) {
        struct msg_op *carrier =
            msg_op_new(w, MSG_OP_CHUNK, msg_apply_parts, msg_complete_chunk);

        msg_take_held(w, carrier);
        carrier->op.new_data = true;
        msg_queue(w, carrier);
    }
}

/* A short read txn: every mailbox exists and is active; its public key. */
static int
msg_mailbox_keys(struct mg_store *st, const char *const *ids, size_t n,
                 uint8_t (*pk)[MG_VAULT_PK_BYTES], const char **error_r)
{
    struct mg_mailbox m;
    const char *error = NULL;
    MDB_txn *txn;
    size_t i;
    int rc = MG_OK;

    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        *error_r = msg_error("%s", error);
        return MG_ERROR;
    }
    for (i = 0; i < n && rc == MG_OK; i++) {
        memset(&m, 0, sizeof(m));
        rc = mg_rec_mailbox_get(st, txn, ids[i], &m, &error);
        if (rc == MG_DECLINED) {
            *error_r = msg_error("no mailbox %s", ids[i]);
            rc = MG_ERROR;
        } else if (rc != MG_OK) {
            *error_r = msg_error("mailbox %s: %s", ids[i], error);
            rc = MG_ERROR;
        } else if (!m.active) {
            *error_r = msg_error("mailbox %s is suspended", ids[i]);
            rc = MG_ERROR;
        } else {
            memcpy(pk[i], m.pk, MG_VAULT_PK_BYTES);
        }
        mg_mailbox_clear(&m);
    }
    mg_store_read_end(st, txn);
    return rc;
}

struct mg_store_writer *
mg_store_writer_begin_ids(struct mg_store *st, const char *const *mailbox_ids,
                          size_t n, const uint64_t *ids,
                          const struct mg_envelope *env, const char **error_r)
{
    struct mg_store_writer *w;
    uint8_t(*pk)[MG_VAULT_PK_BYTES];
    struct mg_buf envbuf;
    size_t i;

    if (n == 0) {
        *error_r = "no mailbox";
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (!mg_mailbox_id_valid(mailbox_ids[i])) {
            *error_r = "invalid mailbox id";
            return NULL;
        }
    }
    pk = mg_xcalloc(n, sizeof(*pk));
    if (msg_mailbox_keys(st, mailbox_ids, n, pk, error_r) != MG_OK) {
        free(pk);
        return NULL;
    }
    mg_buf_init(&envbuf);
    mg_codec_envelope_encode(env, &envbuf);
    if (mg_buf_len(&envbuf) > MG_VAULT_CHUNK) {
        sodium_memzero(envbuf.data, envbuf.cap);
        mg_buf_free(&envbuf);
        free(pk);
        *error_r = "envelope too large";
        return NULL;
    }

    w = mg_xcalloc(1, sizeof(*w));
    w->st = st;
    w->n = n;
    w->refs = 1;
    pthread_mutex_init(&w->lock, NULL);
    w->mailbox_ids = mg_xcalloc(n, sizeof(*w->mailbox_ids));
    w->ids = mg_xcalloc(n, sizeof(*w->ids));
    w->enc = mg_xcalloc(n, sizeof(*w->enc));
    w->hdr = mg_xcalloc(n, sizeof(*w->hdr));
    w->plain = NULL; /* sized on demand: most messages are small */
    for (i = 0; i < n; i++) {
        snprintf(w->mailbox_ids[i], sizeof(w->mailbox_ids[i]), "%s",
                 mailbox_ids[i]);
        w->ids[i] = ids[i];
        w->hdr[i].state = MG_MSG_WRITING;
        w->hdr[i].alg = mg_store_alg(st);
        w->hdr[i].received = (uint64_t)time(NULL);
        w->enc[i] = mg_vault_enc_begin(
            mg_store_senders(st), pk[i], w->hdr[i].alg, w->mailbox_ids[i],
            w->ids[i], w->hdr[i].epk, w->hdr[i].header);
        if (w->enc[i] == NULL) {
            /* a public key that cannot be sealed to: a damaged record */
            free(pk);
            sodium_memzero(envbuf.data, envbuf.cap);
            mg_buf_free(&envbuf);
            *error_r = msg_error("mailbox %s has an unusable public key",
                                 mailbox_ids[i]);
            mg_store_writer_free(w);
            return NULL;
        }
    }
    free(pk);

    /* chunk 0: the envelope, with the WRITING headers */
    w->tail = &w->held;
    msg_hold(w, MSG_OP_FIRST, mg_buf_data(&envbuf), mg_buf_len(&envbuf), false);
    sodium_memzero(envbuf.data, envbuf.cap);
    mg_buf_free(&envbuf);
    return w;
}

struct mg_store_writer *
mg_store_writer_begin(struct mg_store *st, const char *const *mailbox_ids,
                      size_t n, const struct mg_envelope *env,
                      const char **error_r)
{
    struct mg_store_writer *w;
    struct msg_op ids_op;
    uint64_t *ids;

    if (n == 0) {
        *error_r = "no mailbox";
        return NULL;
    }
    /* reserve the ids first: the encryption binds them */
    memset(&ids_op, 0, sizeof(ids_op));
    ids_op.kind = MSG_OP_IDS;
    ids_op.n = n;
    ids_op.op.apply = msg_apply_ids;
    ids_op.op.arg = &ids_op;
    ids_op.op.new_data = true;
    if (mg_store_run(st, &ids_op.op) != MG_OK) {
        *error_r =
            msg_error("reserving message ids: %s",
                      ids_op.op.error[0] != '\0' ? ids_op.op.error : "failed");
        return NULL;
    }
    ids = mg_xcalloc(n, sizeof(*ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = ids_op.first + i;
    w = mg_store_writer_begin_ids(st, mailbox_ids, n, ids, env, error_r);
    free(ids);
    return w;
}

const uint64_t *
mg_store_writer_ids(const struct mg_store_writer *w)
{
    return w->ids;
}

/*
 * MG_AGAIN means the data was not taken: call again with the same bytes
 * after `drained` ran. One call takes all of `len`, so callers pass
 * buffers of a reasonable size (a socket read), not a whole message.
 */
int
mg_store_writer_write(struct mg_store_writer *w, const void *data, size_t len)
{
    const uint8_t *p = data;
    size_t take;

    pthread_mutex_lock(&w->lock);
    if (w->failed || w->state != MSG_W_OPEN) {
        pthread_mutex_unlock(&w->lock);
        return MG_ERROR;
    }
    if (w->outstanding > MSG_QUEUE_LIMIT) {
        w->want_drained = true;
        pthread_mutex_unlock(&w->lock);
        return MG_AGAIN;
    }
    pthread_mutex_unlock(&w->lock);

    while (len > 0) {
        if (w->plen == MG_VAULT_CHUNK) {
            msg_hold(w, MSG_OP_CHUNK, w->plain, w->plen, false);
            w->plen = 0;
        }
        if (w->plen == 0 && len > MG_VAULT_CHUNK) {
            /* a whole chunk with more bytes after it in this call cannot
             * be the last: encrypted from the caller's buffer, no copy */
            msg_hold(w, MSG_OP_CHUNK, p, MG_VAULT_CHUNK, false);
            w->size += MG_VAULT_CHUNK;
            p += MG_VAULT_CHUNK;
            len -= MG_VAULT_CHUNK;
            continue;
        }
        take = MG_VAULT_CHUNK - w->plen;
        if (take > len)
            take = len;
        msg_plain_room(w, w->plen + take);
        memcpy(w->plain + w->plen, p, take);
        w->plen += take;
        w->size += take;
        p += take;
        len -= take;
    }
    return MG_OK;
}

void
mg_store_writer_on_drained(struct mg_store_writer *w,
                           void (*drained)(void *arg), void *arg)
{
    pthread_mutex_lock(&w->lock);
    w->drained = drained;
    w->drained_arg = arg;
    pthread_mutex_unlock(&w->lock);
}

int
mg_store_writer_dedup(struct mg_store_writer *w, const char *upstream,
                      const char *user, const char *uidl)
{
    if (msg_writer_state(w) != MSG_W_OPEN || w->dd_uidl != NULL ||
        upstream == NULL || user == NULL || uidl == NULL || uidl[0] == '\0')
        return MG_ERROR;
    w->dd_upstream = mg_xstrdup(upstream);
    w->dd_user = mg_xstrdup(user);
    w->dd_uidl = mg_xstrdup(uidl);
    return MG_OK;
}

void
mg_store_writer_commit(struct mg_store_writer *w, bool publish,
                       mg_store_writer_fn done, void *arg)
{
    struct msg_op *o;

    if (msg_writer_state(w) != MSG_W_OPEN) {
        done(w, MG_ERROR, false, "message already committed", arg);
        return;
    }
    msg_plain_room(w, 1); /* an empty body still has a final chunk */
    /* the final chunk even when the writer failed: the stream ends; it
     * and whatever is held go out with the commit, in one op */
    msg_hold(w, MSG_OP_CHUNK, w->plain, w->plen, true);
    sodium_memzero(w->plain, w->plen);
    w->plen = 0;
    o = msg_op_new(w, MSG_OP_COMMIT, msg_apply_parts, msg_complete_step);
    msg_take_held(w, o);
    o->publish = publish;
    o->nchunks = w->nchunks;
    o->size = w->size;
    o->done = done;
    o->done_arg = arg;
    o->op.new_data = true;
    pthread_mutex_lock(&w->lock);
    w->state = MSG_W_COMMITTING;
    pthread_mutex_unlock(&w->lock);
    msg_queue(w, o);
}

static struct msg_op *
msg_delete_op(struct mg_store_writer *w, struct mg_store_writer *owner)
{
    struct msg_op *o;

    o = msg_op_new(owner, owner != NULL ? MSG_OP_DISCARD : MSG_OP_DELETE,
                   msg_apply_delete,
                   owner != NULL ? msg_complete_step : msg_complete_delete);
    /* a stand-alone delete outlives the writer: its own copy of the ids */
    o->n = w->n;
    if (owner != NULL) {
        o->mailbox_ids = w->mailbox_ids;
        o->ids = w->ids;
    } else {
        o->mailbox_ids = mg_xcalloc(w->n, sizeof(*o->mailbox_ids));
        memcpy(o->mailbox_ids, w->mailbox_ids, w->n * sizeof(*w->mailbox_ids));
        o->ids = mg_xcalloc(w->n, sizeof(*o->ids));
        memcpy(o->ids, w->ids, w->n * sizeof(*w->ids));
    }
    return o;
}

/* Publish or discard a HELD message; a lazy op starts no commit. */
static void
msg_settle(struct mg_store_writer *w, bool publish, bool lazy,
           mg_store_writer_fn done, void *arg)
{
    struct msg_op *o;

    if (msg_writer_state(w) != MSG_W_HELD) {
        done(w, MG_ERROR, false, "message not held", arg);
        return;
    }
    if (publish)
        o = msg_op_new(w, MSG_OP_PUBLISH, msg_apply_publish, msg_complete_step);
    else
        o = msg_delete_op(w, w);
    o->done = done;
    o->done_arg = arg;
    if (lazy)
        mg_store_submit_lazy(w->st, &o->op);
    else
        mg_store_submit(w->st, &o->op);
}

void
mg_store_writer_publish(struct mg_store_writer *w, mg_store_writer_fn done,
                        void *arg)
{
    msg_settle(w, true, false, done, arg);
}

void
mg_store_writer_discard(struct mg_store_writer *w, mg_store_writer_fn done,
                        void *arg)
{
    msg_settle(w, false, false, done, arg);
}

void
mg_store_writer_settle_lazy(struct mg_store_writer *w, bool publish,
                            mg_store_writer_fn done, void *arg)
{
    msg_settle(w, publish, true, done, arg);
}

/*
 * Free while a commit, publish or discard is pending is allowed: its done
 * still runs. A message whose commit then fails stays WRITING until the
 * next start removes it.
 */
void
mg_store_writer_free(struct mg_store_writer *w)
{
    enum msg_wstate state;

    if (w == NULL)
        return;
    /* held chunks were never queued: none of them is in the store */
    msg_parts_free(w->held);
    w->held = NULL;
    w->tail = &w->held;
    w->held_bytes = 0;
    pthread_mutex_lock(&w->lock);
    w->freed = true;
    state = w->state;
    pthread_mutex_unlock(&w->lock);
    /* queued after every chunk op, so it removes all of them */
    if (state == MSG_W_OPEN)
        mg_store_submit(w->st, &msg_delete_op(w, NULL)->op);
    msg_writer_unref(w);
}

/* ================================================================ reader */

struct mg_store_reader {
    struct mg_store *st;
    char mailbox_id[MG_MAILBOX_ID_MAX + 1];
    uint64_t id;
    struct mg_msg_header h;
    struct mg_envelope env;
    struct mg_vault_dec *dec;
    uint32_t next; /* next chunk to read */
    uint64_t got;  /* body bytes returned */
    bool end;      /* the FINAL chunk was returned */
    bool failed;
    uint8_t *buf; /* MG_VAULT_CHUNK bytes of plaintext */
    char error[MSG_ERR_LEN];
};

/* Read and decrypt chunk r->next in its own short read txn. */
static int
msg_reader_pull(struct mg_store_reader *r, size_t *len_r, bool *final_r,
                const char **error_r)
{
    const char *error = NULL;
    const void *data;
    MDB_txn *txn;
    size_t len;
    int rc;

    if (mg_store_read_begin(r->st, &txn, &error) != MG_OK) {
        *error_r = msg_error("%s", error);
        return MG_ERROR;
    }
    rc = mg_rec_chunk_get(r->st, txn, r->mailbox_id, r->id, r->next, &data,
                          &len, &error);
    if (rc == MG_DECLINED) {
        *error_r =
            msg_error("message %" PRIu64 ": chunk %u missing", r->id, r->next);
        rc = MG_ERROR;
    } else if (rc != MG_OK) {
        *error_r = msg_error("message %" PRIu64 ": %s", r->id, error);
        rc = MG_ERROR;
    } else if (len < MG_VAULT_ABYTES ||
               len > MG_VAULT_CHUNK + MG_VAULT_ABYTES) {
        *error_r = msg_error("message %" PRIu64 ": chunk %u has a bad size",
                             r->id, r->next);
        rc = MG_ERROR;
    } else if (mg_vault_dec_pull(r->dec, data, len, r->buf, len_r, final_r) !=
               MG_OK) {
        *error_r =
            msg_error("message %" PRIu64 ": chunk %u fails authentication",
                      r->id, r->next);
        rc = MG_ERROR;
    }
    mg_store_read_end(r->st, txn);
    if (rc == MG_OK)
        r->next++;
    return rc;
}

int
mg_store_reader_open(struct mg_store *st, const struct mg_vault_key *key,
                     const char *mailbox_id, uint64_t msg_id,
                     struct mg_store_reader **r_r, const char **error_r)
{
    struct mg_store_reader *r;
    const char *error = NULL;
    MDB_txn *txn;
    size_t len;
    bool final;
    int rc;

    if (!mg_mailbox_id_valid(mailbox_id)) {
        *error_r = "invalid mailbox id";
        return MG_DECLINED;
    }
    r = mg_xcalloc(1, sizeof(*r));
    r->st = st;
    snprintf(r->mailbox_id, sizeof(r->mailbox_id), "%s", mailbox_id);
    r->id = msg_id;
    r->buf = mg_xmalloc(MG_VAULT_CHUNK);

    if (mg_store_read_begin(st, &txn, &error) != MG_OK) {
        *error_r = msg_error("%s", error);
        rc = MG_ERROR;
        goto fail;
    }
    rc = mg_rec_msg_get(st, txn, mailbox_id, msg_id, &r->h, &error);
    mg_store_read_end(st, txn);
    if (rc == MG_DECLINED || (rc == MG_OK && r->h.state == MG_MSG_WRITING)) {
        *error_r = msg_error("no message %" PRIu64, msg_id);
        rc = MG_DECLINED;
        goto fail;
    }
    if (rc != MG_OK) {
        *error_r = msg_error("message %" PRIu64 ": %s", msg_id, error);
        goto fail;
    }
    rc = MG_ERROR;
    if ((r->h.alg != MG_VAULT_ALG_V1 && r->h.alg != MG_VAULT_ALG_V2 &&
         r->h.alg != MG_VAULT_ALG_V3) ||
        r->h.nchunks < 2) {
        *error_r = msg_error("message %" PRIu64 ": bad header", msg_id);
        goto fail;
    }
    if (mg_vault_dec_begin(key, mailbox_id, msg_id, r->h.alg, r->h.sealed_key,
                           r->h.epk, r->h.header, &r->dec, &error) != MG_OK) {
        *error_r = msg_error("message %" PRIu64 ": %s", msg_id,
                             error != NULL ? error : "cannot decrypt");
        goto fail;
    }
    if (msg_reader_pull(r, &len, &final, error_r) != MG_OK)
        goto fail;
    if (final) {
        *error_r = msg_error("message %" PRIu64 ": truncated", msg_id);
        goto fail;
    }
    if (mg_codec_envelope_decode(r->buf, len, &r->env, &error) != MG_OK) {
        *error_r =
            msg_error("message %" PRIu64 ": envelope: %s", msg_id, error);
        goto fail;
    }
    sodium_memzero(r->buf, len);
    *r_r = r;
    return MG_OK;
fail:
    mg_store_reader_close(r);
    return rc;
}

const struct mg_envelope *
mg_store_reader_envelope(const struct mg_store_reader *r)
{
    return &r->env;
}

uint64_t
mg_store_reader_size(const struct mg_store_reader *r)
{
    return r->h.size;
}

static int
msg_reader_fail(struct mg_store_reader *r, const char *error,
                const char **error_r)
{
    r->failed = true;
    snprintf(r->error, sizeof(r->error), "%s", error);
    sodium_memzero(r->buf, MG_VAULT_CHUNK);
    *error_r = r->error;
    return MG_ERROR;
}

int
mg_store_reader_next(struct mg_store_reader *r, const void **data_r,
                     size_t *len_r, const char **error_r)
{
    const char *error = NULL;
    size_t len;
    bool final;

    if (r->failed) {
        *error_r = r->error;
        return MG_ERROR;
    }
    if (r->end)
        return MG_DECLINED;
    if (r->next >= r->h.nchunks) {
        return msg_reader_fail(
            r, msg_error("message %" PRIu64 ": truncated", r->id), error_r);
    }
    if (msg_reader_pull(r, &len, &final, &error) != MG_OK)
        return msg_reader_fail(r, error, error_r);
    /* the stream's FINAL tag, the chunk count and the size must agree */
    if (final != (r->next == r->h.nchunks)) {
        return msg_reader_fail(
            r, msg_error("message %" PRIu64 ": truncated", r->id), error_r);
    }
    if (len > r->h.size - r->got || (final && r->got + len != r->h.size) ||
        (!final && len != MG_VAULT_CHUNK)) {
        return msg_reader_fail(
            r, msg_error("message %" PRIu64 ": size mismatch", r->id), error_r);
    }
    r->got += len;
    r->end = final;
    *data_r = r->buf;
    *len_r = len;
    return MG_OK;
}

void
mg_store_reader_close(struct mg_store_reader *r)
{
    if (r == NULL)
        return;
    if (r->dec != NULL)
        mg_vault_dec_free(r->dec);
    mg_envelope_clear(&r->env);
    sodium_memzero(r->buf, MG_VAULT_CHUNK);
    free(r->buf);
    free(r);
}
