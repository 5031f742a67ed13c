/*
 * store/module_api.c -- the mg_store_api table modules get.
 *
 * Puts the store's threads behind the loop: writer-thread completions and
 * worker-pool results are posted back to the loop and delivered by conn
 * id. A handle the module frees while a completion is in flight lives on
 * until that completion arrived, and then no callback runs.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include <mailgate/store.h>

#include "dedup.h"
#include "store.h"

#define MA_ID_BLOCK 1024 /* ids reserved per durable write */

static struct mg_store *ma_store;
static struct mg_vault_wrap ma_dummy_wrap; /* equal delay for unknown ids */
static uint8_t ma_dummy_pk[MG_VAULT_PK_BYTES];

/* -------------------------------------------------------------- ids */

/* Message ids come from a block reserved ahead, refilled off the loop,
 * so that starting a message never waits for the disk. */
static struct {
    uint64_t next, end;        /* the block in use */
    uint64_t spare, spare_end; /* the next block, once reserved */
    bool refilling;
    struct mg_store_op op;
    uint64_t first; /* result of the refill */
} ma_ids;

static int
ma_ids_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    const char *err = NULL;
    int r = mg_rec_msg_ids(st, txn, MA_ID_BLOCK, &ma_ids.first, &err);

    if (r != MG_OK && err != NULL)
        snprintf(op->error, sizeof(op->error), "%s", err);
    return r;
}

static void
ma_ids_loop(void *arg)
{
    (void)arg;
    ma_ids.refilling = false;
    if (ma_ids.op.status != MG_OK) {
        mg_log(MG_LOG_WARNING, "store: cannot reserve message ids: %s",
               ma_ids.op.error);
        return;
    }
    ma_ids.spare = ma_ids.first;
    ma_ids.spare_end = ma_ids.first + MA_ID_BLOCK;
}

static void
ma_ids_complete(struct mg_store_op *op)
{
    (void)op;
    mg_post(ma_ids_loop, NULL);
}

static void
ma_ids_refill(void)
{
    if (ma_ids.refilling || ma_ids.spare_end > ma_ids.spare)
        return;
    memset(&ma_ids.op, 0, sizeof(ma_ids.op));
    ma_ids.op.apply = ma_ids_apply;
    ma_ids.op.complete = ma_ids_complete;
    ma_ids.refilling = true;
    mg_store_submit(ma_store, &ma_ids.op);
}

/* n consecutive-or-not ids; MG_AGAIN when the pool is empty (the refill
 * is on its way: a temporary failure for the caller). */
static int
ma_ids_take(uint64_t *ids, size_t n)
{
    size_t have = (size_t)(ma_ids.end - ma_ids.next) +
                  (size_t)(ma_ids.spare_end - ma_ids.spare);

    if (have < n) {
        ma_ids_refill();
        return MG_AGAIN;
    }
    for (size_t i = 0; i < n; i++) {
        if (ma_ids.next == ma_ids.end) {
            ma_ids.next = ma_ids.spare;
            ma_ids.end = ma_ids.spare_end;
            ma_ids.spare = ma_ids.spare_end = 0;
        }
        ids[i] = ma_ids.next++;
    }
    if (ma_ids.end - ma_ids.next < MA_ID_BLOCK / 2)
        ma_ids_refill();
    return MG_OK;
}

/* ---------------------------------------------------------- mailboxes */

static void
ma_info_fill(struct mg_mailbox_info *info, const struct mg_mailbox *m)
{
    memset(info, 0, sizeof(*info));
    snprintf(info->id, sizeof(info->id), "%s", m->id);
    info->active = m->active;
    info->accept_journal = m->accept_journal;
    info->accept_proxy = m->accept_proxy;
    info->require_tls = m->require_tls;
    info->messages = m->messages;
    info->bytes = m->bytes;
    info->ntargets = m->ntargets;
    info->targets = mg_xcalloc(m->ntargets + 1, sizeof(char *));
    for (size_t i = 0; i < m->ntargets; i++)
        info->targets[i] = mg_xstrdup(m->targets[i]);
    info->nnetworks = m->nnetworks;
    info->networks = mg_xcalloc(m->nnetworks + 1, sizeof(char *));
    for (size_t i = 0; i < m->nnetworks; i++)
        info->networks[i] = mg_xstrdup(m->networks[i]);
}

static void
ma_mailbox_info_free(struct mg_mailbox_info *info)
{
    for (size_t i = 0; i < info->ntargets; i++)
        free(info->targets[i]);
    free(info->targets);
    for (size_t i = 0; i < info->nnetworks; i++)
        free(info->networks[i]);
    free(info->networks);
    memset(info, 0, sizeof(*info));
}

static int
ma_mailbox_get(const char *id, struct mg_mailbox_info *info_r,
               const char **error_r)
{
    struct mg_mailbox m;
    MDB_txn *txn;
    int r;

    memset(info_r, 0, sizeof(*info_r));
    if (!mg_mailbox_id_valid(id))
        return MG_DECLINED;
    if (mg_store_read_begin(ma_store, &txn, error_r) != MG_OK)
        return MG_ERROR;
    memset(&m, 0, sizeof(m));
    r = mg_rec_mailbox_get(ma_store, txn, id, &m, error_r);
    mg_store_read_end(ma_store, txn);
    if (r != MG_OK)
        return r;
    ma_info_fill(info_r, &m);
    mg_mailbox_clear(&m);
    return MG_OK;
}

/* ----------------------------------------------------------- writing */

struct mg_msg_writer {
    struct mg_store_writer *w;
    uint64_t conn_id;
    size_t ncopies;
    unsigned inflight; /* completions posted or awaited */
    bool freed;        /* the module let go */
    bool busy;         /* a commit, publish or discard is under way */
    bool lazy;         /* ... a lazy one (its failure is logged here) */
    mg_store_resume_fn resume;
    void *resume_arg;
    mg_store_done_fn done;
    void *done_arg;
};

/* A writer-thread result carried to the loop. */
struct ma_result {
    struct mg_msg_writer *mw;
    int status;
    bool temporary;
    char error[200];
};

static void
ma_writer_release(struct mg_msg_writer *mw)
{
    if (mw->inflight > 0)
        return;
    mg_store_writer_free(mw->w);
    free(mw);
}

static void
ma_done_loop(void *arg)
{
    struct ma_result *res = arg;
    struct mg_msg_writer *mw = res->mw;
    struct mg_store_result out = {
        .status = res->status,
        .temporary = res->temporary,
        .error = res->error[0] != '\0' ? res->error : NULL,
    };
    mg_store_done_fn done = mw->done;

    mw->done = NULL;
    mw->busy = false;
    /* still counted in flight: a msg_free() inside done() must not free
     * mw under this function */
    if (!mw->freed && done != NULL)
        done(mw->conn_id, &out, mw->done_arg);
    else if (mw->lazy && out.status != MG_OK)
        mg_log(MG_LOG_ERROR,
               "store: a held message could not be settled (%s): it stays "
               "held and is published, flagged unconfirmed, at the next "
               "start",
               out.error != NULL ? out.error : "store error");
    mw->inflight--;
    free(res);
    if (mw->freed)
        ma_writer_release(mw);
}

static void
ma_done_thread(struct mg_store_writer *w, int status, bool temporary,
               const char *error, void *arg)
{
    struct ma_result *res = mg_xcalloc(1, sizeof(*res));

    (void)w;
    res->mw = arg;
    res->status = status;
    res->temporary = temporary;
    if (error != NULL)
        snprintf(res->error, sizeof(res->error), "%s", error);
    mg_post(ma_done_loop, res);
}

static void
ma_drained_loop(void *arg)
{
    struct mg_msg_writer *mw = arg;
    mg_store_resume_fn resume = mw->resume;

    mw->inflight--;
    mw->resume = NULL;
    if (mw->freed) {
        ma_writer_release(mw);
        return;
    }
    if (resume != NULL)
        resume(mw->conn_id, mw->resume_arg);
}

static void
ma_drained_thread(void *arg)
{
    mg_post(ma_drained_loop, arg);
}

static struct mg_msg_writer *
ma_msg_begin(const char *const *mailbox_ids, size_t n,
             const struct mg_envelope_info *env, uint64_t conn_id,
             const char **error_r)
{
    struct mg_envelope e = {
        .source = (char *)env->source,
        .sender = (char *)env->sender,
        .rcpts = (char **)env->rcpts,
        .nrcpts = env->nrcpts,
        .client = (char *)env->client,
        .tls = (char *)env->tls,
    };
    struct mg_msg_writer *mw;
    uint64_t *ids;

    if (n == 0) {
        *error_r = "no mailbox to store into";
        return NULL;
    }
    if (mg_store_low_space(ma_store)) {
        *error_r = "the store is full (within its reserve): new mail is "
                   "refused until mailboxes are emptied";
        return NULL;
    }
    ids = mg_xcalloc(n, sizeof(*ids));
    if (ma_ids_take(ids, n) != MG_OK) {
        free(ids);
        *error_r = "message ids are being reserved; try again";
        return NULL;
    }
    mw = mg_xcalloc(1, sizeof(*mw));
    mw->conn_id = conn_id;
    mw->ncopies = n;
    mw->w =
        mg_store_writer_begin_ids(ma_store, mailbox_ids, n, ids, &e, error_r);
    free(ids);
    if (mw->w == NULL) {
        free(mw);
        return NULL;
    }
    return mw;
}

static int
ma_msg_write(struct mg_msg_writer *mw, const void *data, size_t len,
             mg_store_resume_fn resume, void *arg)
{
    int r;

    /* The callback must be in place before the write can ask for it: the
     * writer thread may drain the queue between an MG_AGAIN and anything
     * done after it, and a drain that finds no callback is lost (the
     * session then waits for ever). Its post runs on this loop thread, so
     * after the bookkeeping below. */
    mg_store_writer_on_drained(mw->w, ma_drained_thread, mw);
    r = mg_store_writer_write(mw->w, data, len);
    if (r == MG_AGAIN && mw->resume == NULL) {
        mw->resume = resume;
        mw->resume_arg = arg;
        mw->inflight++;
    }
    return r;
}

enum ma_step {
    MA_COMMIT,
    MA_PUBLISH,
    MA_DISCARD,
    MA_LAZY
};

static int
ma_msg_step(struct mg_msg_writer *mw, enum ma_step what, bool publish,
            mg_store_done_fn done, void *arg)
{
    if (mw->busy)
        return MG_ERROR; /* one step at a time */
    mw->busy = true;
    mw->lazy = what == MA_LAZY;
    mw->done = done;
    mw->done_arg = arg;
    mw->inflight++;
    switch (what) {
    case MA_COMMIT:
        mg_store_writer_commit(mw->w, publish, ma_done_thread, mw);
        break;
    case MA_PUBLISH:
        mg_store_writer_publish(mw->w, ma_done_thread, mw);
        break;
    case MA_DISCARD:
        mg_store_writer_discard(mw->w, ma_done_thread, mw);
        break;
    case MA_LAZY:
        mg_store_writer_settle_lazy(mw->w, publish, ma_done_thread, mw);
        break;
    }
    return MG_OK;
}

static int
ma_msg_dedup(struct mg_msg_writer *mw, const char *upstream, const char *user,
             const char *uidl)
{
    if (mw->busy)
        return MG_ERROR; /* a commit is under way */
    return mg_store_writer_dedup(mw->w, upstream, user, uidl);
}

static int
ma_msg_commit(struct mg_msg_writer *mw, bool publish, mg_store_done_fn done,
              void *arg)
{
    return ma_msg_step(mw, MA_COMMIT, publish, done, arg);
}

static int
ma_msg_publish(struct mg_msg_writer *mw, mg_store_done_fn done, void *arg)
{
    return ma_msg_step(mw, MA_PUBLISH, true, done, arg);
}

static int
ma_msg_discard(struct mg_msg_writer *mw, mg_store_done_fn done, void *arg)
{
    return ma_msg_step(mw, MA_DISCARD, false, done, arg);
}

static int
ma_msg_settle_lazy(struct mg_msg_writer *mw, bool publish,
                   mg_store_done_fn done, void *arg)
{
    return ma_msg_step(mw, MA_LAZY, publish, done, arg);
}

static int
ma_msg_id(const struct mg_msg_writer *mw, size_t i, uint64_t *id_r,
          char uidl_r[40])
{
    if (i >= mw->ncopies)
        return MG_DECLINED;
    *id_r = mg_store_writer_ids(mw->w)[i];
    mg_msg_uidl(ma_store, *id_r, uidl_r);
    return MG_OK;
}

static void
ma_msg_free(struct mg_msg_writer *mw)
{
    if (mw == NULL)
        return;
    mw->freed = true;
    ma_writer_release(mw);
}

/* ----------------------------------------------------- listing, delete */

static int
ma_msg_list(const char *mailbox_id, struct mg_msg_entry **list_r, size_t *n_r,
            const char **error_r)
{
    struct mg_msg_ref *refs = NULL;
    MDB_txn *txn;
    size_t n = 0;
    int r;

    *list_r = NULL;
    *n_r = 0;
    if (mg_store_read_begin(ma_store, &txn, error_r) != MG_OK)
        return MG_ERROR;
    r = mg_rec_msg_list(ma_store, txn, mailbox_id, true, &refs, &n, error_r);
    mg_store_read_end(ma_store, txn);
    if (r != MG_OK)
        return r;
    *list_r = mg_xcalloc(n + 1, sizeof(**list_r));
    for (size_t i = 0; i < n; i++) {
        (*list_r)[i].id = refs[i].id;
        (*list_r)[i].size = refs[i].size;
        (*list_r)[i].received = refs[i].received;
        mg_msg_uidl(ma_store, refs[i].id, (*list_r)[i].uidl);
    }
    *n_r = n;
    free(refs);
    return MG_OK;
}

struct ma_delete {
    struct mg_store_op op;
    char mailbox_id[MG_MAILBOX_ID_MAX + 1];
    uint64_t *ids;
    size_t n;
    uint64_t conn_id;
    mg_store_done_fn done;
    void *arg;
};

static int
ma_delete_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct ma_delete *d = op->arg;

    for (size_t i = 0; i < d->n; i++)
        mg_rec_msg_prefetch(st, txn, d->mailbox_id, d->ids[i]);
    for (size_t i = 0; i < d->n; i++) {
        const char *err = NULL;
        int r = mg_rec_msg_delete(st, txn, d->mailbox_id, d->ids[i], &err);

        if (r == MG_DECLINED)
            continue; /* already gone: deleting twice is not an error */
        if (r != MG_OK) {
            snprintf(op->error, sizeof(op->error), "%s",
                     err != NULL ? err : "delete failed");
            return r;
        }
    }
    return MG_OK;
}

static void
ma_delete_loop(void *arg)
{
    struct ma_delete *d = arg;
    struct mg_store_result res = {
        .status = d->op.status,
        .temporary = d->op.temporary,
        .error = d->op.error[0] != '\0' ? d->op.error : NULL,
    };

    d->done(d->conn_id, &res, d->arg);
    free(d->ids);
    free(d);
}

static void
ma_delete_complete(struct mg_store_op *op)
{
    mg_post(ma_delete_loop, op->arg);
}

static int
ma_msg_delete(const char *mailbox_id, const uint64_t *ids, size_t n,
              uint64_t conn_id, mg_store_done_fn done, void *arg)
{
    struct ma_delete *d;

    if (!mg_mailbox_id_valid(mailbox_id) || done == NULL)
        return MG_ERROR;
    d = mg_xcalloc(1, sizeof(*d));
    snprintf(d->mailbox_id, sizeof(d->mailbox_id), "%s", mailbox_id);
    d->ids = mg_xcalloc(n ? n : 1, sizeof(*ids));
    memcpy(d->ids, ids, n * sizeof(*ids));
    d->n = n;
    d->conn_id = conn_id;
    d->done = done;
    d->arg = arg;
    d->op.apply = ma_delete_apply;
    d->op.complete = ma_delete_complete;
    d->op.arg = d;
    d->op.new_data = false; /* deletions go through within the reserve */
    mg_store_submit(ma_store, &d->op);
    return MG_OK;
}

/* ------------------------------------------------------------- keys */

struct mg_mbox_key {
    struct mg_vault_key *vk;
    char mailbox_id[MG_MAILBOX_ID_MAX + 1];
    uint64_t conn_id; /* the session that unlocked it: its readers' resumes */
};

/* Passwords are copied into guarded memory that is wiped when freed. */
static char *
ma_secret_dup(const char *s, size_t len)
{
    char *p = mg_vault_secure_alloc(len + 1);

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

struct ma_unlock {
    char mailbox_id[MG_MAILBOX_ID_MAX + 1];
    char *password; /* sodium_malloc'd, wiped */
    size_t pwlen;
    uint64_t conn_id;
    void (*done)(uint64_t conn_id, struct mg_mbox_key *key, int status,
                 void *arg);
    void *arg;
    struct mg_vault_key *vk;
    int status;
};

static void
ma_unlock_work(void *arg)
{
    struct ma_unlock *u = arg;
    struct mg_mailbox m;
    const char *err = NULL;
    MDB_txn *txn;
    int r = MG_DECLINED;

    memset(&m, 0, sizeof(m));
    if (mg_mailbox_id_valid(u->mailbox_id) &&
        mg_store_read_begin(ma_store, &txn, &err) == MG_OK) {
        r = mg_rec_mailbox_get(ma_store, txn, u->mailbox_id, &m, &err);
        mg_store_read_end(ma_store, txn);
    }
    if (r == MG_OK && m.nwraps > 0) {
        u->status =
            mg_vault_unlock(&m.wraps[0], m.pk, u->password, &u->vk, &err);
    } else {
        struct mg_vault_key *dummy = NULL;

        /* unknown mailbox: spend the same time as a real derivation, so
         * that the answer's delay does not tell which ids exist */
        (void)mg_vault_unlock(&ma_dummy_wrap, ma_dummy_pk, u->password, &dummy,
                              &err);
        mg_vault_key_free(dummy);
        u->status = r == MG_ERROR ? MG_ERROR : MG_DECLINED;
    }
    if (u->status == MG_ERROR)
        mg_log(MG_LOG_WARNING, "store: unlocking mailbox %s: %s", u->mailbox_id,
               err != NULL ? err : "failed");
    mg_mailbox_clear(&m);
    sodium_memzero(u->password, u->pwlen);
}

static void
ma_unlock_done(void *arg)
{
    struct ma_unlock *u = arg;
    struct mg_mbox_key *key = NULL;

    if (u->status == MG_OK) {
        key = mg_xcalloc(1, sizeof(*key));
        key->vk = u->vk;
        key->conn_id = u->conn_id;
        snprintf(key->mailbox_id, sizeof(key->mailbox_id), "%s", u->mailbox_id);
    }
    u->done(u->conn_id, key, u->status, u->arg);
    sodium_free(u->password);
    free(u);
}

static int
ma_key_unlock(const char *mailbox_id, const char *password, uint64_t conn_id,
              void (*done)(uint64_t conn_id, struct mg_mbox_key *key,
                           int status, void *arg),
              void *arg)
{
    struct ma_unlock *u = mg_xcalloc(1, sizeof(*u));

    snprintf(u->mailbox_id, sizeof(u->mailbox_id), "%s", mailbox_id);
    u->pwlen = strlen(password);
    u->password = ma_secret_dup(password, u->pwlen);
    u->conn_id = conn_id;
    u->done = done;
    u->arg = arg;
    if (mg_workers_submit(ma_unlock_work, ma_unlock_done, u) != MG_OK) {
        sodium_free(u->password);
        free(u);
        return MG_ERROR;
    }
    return MG_OK;
}

static void
ma_key_free(struct mg_mbox_key *key)
{
    if (key == NULL)
        return;
    mg_vault_key_free(key->vk);
    free(key);
}

/* ----------------------------------------------------------- reading */

/* One piece is read ahead: while the session sends piece n, a worker
 * decrypts piece n + 1 (on another core), so a RETR is not a sequence of
 * decrypt-then-send turns. The piece handed out is a copy, because the
 * store reader's buffer is reused by the read ahead. */
struct mg_msg_reader {
    struct mg_store_reader *r;
    bool busy;   /* a worker is fetching the next piece */
    bool ready;  /* a result waits to be handed out */
    bool closed; /* the module let go while busy */
    int status;
    const void *data;
    size_t len;
    char error[200];
    uint8_t *out; /* the piece handed out */
    size_t outcap;
    mg_store_resume_fn resume;
    void *resume_arg;
    uint64_t conn_id;
};

static struct mg_msg_reader *
ma_msg_open(struct mg_mbox_key *key, uint64_t msg_id, const char **error_r)
{
    struct mg_msg_reader *mr = mg_xcalloc(1, sizeof(*mr));

    if (mg_store_reader_open(ma_store, key->vk, key->mailbox_id, msg_id, &mr->r,
                             error_r) != MG_OK) {
        free(mr);
        return NULL;
    }
    mr->conn_id = key->conn_id;
    return mr;
}

static void
ma_reader_free(struct mg_msg_reader *mr)
{
    mg_store_reader_close(mr->r);
    if (mr->out != NULL)
        sodium_memzero(mr->out, mr->outcap); /* plaintext */
    free(mr->out);
    free(mr);
}

/* Decrypting a chunk touches pages that may not be in memory: off the
 * loop, so a page fault never stalls other sessions. */
static void
ma_read_work(void *arg)
{
    struct mg_msg_reader *mr = arg;
    const char *error = NULL;

    mr->status = mg_store_reader_next(mr->r, &mr->data, &mr->len, &error);
    snprintf(mr->error, sizeof(mr->error), "%s", error != NULL ? error : "");
}

static void
ma_read_done(void *arg)
{
    struct mg_msg_reader *mr = arg;
    mg_store_resume_fn resume = mr->resume;

    mr->busy = false;
    mr->ready = true;
    mr->resume = NULL;
    if (mr->closed) {
        ma_reader_free(mr);
        return;
    }
    if (resume != NULL)
        resume(mr->conn_id, mr->resume_arg);
}

static int
ma_read_submit(struct mg_msg_reader *mr)
{
    mr->busy = true;
    if (mg_workers_submit(ma_read_work, ma_read_done, mr) != MG_OK) {
        mr->busy = false;
        return MG_ERROR;
    }
    return MG_OK;
}

static int
ma_msg_read(struct mg_msg_reader *mr, const void **data, size_t *len,
            mg_store_resume_fn resume, void *arg)
{
    if (mr->ready) {
        int status = mr->status;

        mr->ready = false;
        if (status != MG_OK) {
            *data = NULL;
            *len = 0;
            if (status == MG_ERROR)
                mg_log(MG_LOG_DEBUG, "store: reading: %s", mr->error);
            return status;
        }
        if (mr->len > mr->outcap) {
            if (mr->out != NULL)
                sodium_memzero(mr->out, mr->outcap);
            free(mr->out);
            mr->out = mg_xmalloc(mr->len);
            mr->outcap = mr->len;
        }
        if (mr->len > 0)
            memcpy(mr->out, mr->data, mr->len);
        *data = mr->out;
        *len = mr->len;
        (void)ma_read_submit(mr); /* the next piece; a failure shows then */
        return MG_OK;
    }
    if (!mr->busy && ma_read_submit(mr) != MG_OK)
        return MG_ERROR;
    mr->resume = resume;
    mr->resume_arg = arg;
    return MG_AGAIN;
}

static void
ma_msg_close(struct mg_msg_reader *mr)
{
    if (mr == NULL)
        return;
    if (mr->busy) {
        mr->closed = true; /* freed when the worker is done */
        return;
    }
    ma_reader_free(mr);
}

/* -------------------------------------------------------------- table */

static const struct mg_store_api ma_api = {
    .size = sizeof(struct mg_store_api),
    .mailbox_get = ma_mailbox_get,
    .mailbox_info_free = ma_mailbox_info_free,
    .msg_begin = ma_msg_begin,
    .msg_write = ma_msg_write,
    .msg_commit = ma_msg_commit,
    .msg_publish = ma_msg_publish,
    .msg_discard = ma_msg_discard,
    .msg_free = ma_msg_free,
    .msg_list = ma_msg_list,
    .msg_delete = ma_msg_delete,
    .key_unlock = ma_key_unlock,
    .key_free = ma_key_free,
    .msg_open = ma_msg_open,
    .msg_read = ma_msg_read,
    .msg_close = ma_msg_close,
    .msg_id = ma_msg_id,
    .dedup_get = mg_dedup_api_get,
    .dedup_put = mg_dedup_api_put,
    .msg_dedup = ma_msg_dedup,
    .msg_settle_lazy = ma_msg_settle_lazy,
};

int
mg_store_api_open(const struct mg_settings *s, const char **error_r)
{
    struct mg_store_config cfg = {
        .map_size = s->store_map_size,
        .reserve = s->store_reserve,
        .recover = true, /* the daemon holds the data directory */
        /* 0 in the file means a key pair per message */
        .sender_key_lifetime = s->store_sender_key_lifetime > 0
                                   ? (int)s->store_sender_key_lifetime
                                   : -1,
        .alg = s->store_cipher == MG_CIPHER_AES256GCM ? MG_VAULT_ALG_V3
               : s->store_cipher == MG_CIPHER_XCHACHA20POLY1305
                   ? MG_VAULT_ALG_V2
                   : 0, /* auto */
        .drop_written_pages = s->store_drop_written_pages,
    };
    char *dir = mg_xasprintf("%s/store", s->data_dir);
    uint64_t ops, mem;
    int r;

    if (mg_vault_init(s->kdf_concurrency, error_r) != MG_OK) {
        free(dir);
        return MG_ERROR;
    }
    cfg.dir = dir;
    r = mg_store_open(&cfg, &ma_store, error_r);
    free(dir);
    if (r != MG_OK)
        return MG_ERROR;
    mg_dedup_api_init(ma_store);
    /* the first block of ids before the loop runs; later ones ahead */
    memset(&ma_ids.op, 0, sizeof(ma_ids.op));
    ma_ids.op.apply = ma_ids_apply;
    if (mg_store_run(ma_store, &ma_ids.op) != MG_OK) {
        *error_r =
            mg_error("store: cannot reserve message ids: %s", ma_ids.op.error);
        return MG_ERROR;
    }
    ma_ids.next = ma_ids.first;
    ma_ids.end = ma_ids.first + MA_ID_BLOCK;
    /* a wrap nobody can open, with the parameters real ones use: trying
     * it costs what a real unlock costs */
    mg_vault_default_limits(&ops, &mem);
    ma_dummy_wrap.kind = MG_WRAP_PASSWORD;
    ma_dummy_wrap.alg = MG_WRAP_ALG_ARGON2ID_SECRETBOX;
    ma_dummy_wrap.opslimit = ops;
    ma_dummy_wrap.memlimit = mem;
    randombytes_buf(ma_dummy_wrap.salt, sizeof(ma_dummy_wrap.salt));
    randombytes_buf(ma_dummy_wrap.nonce, sizeof(ma_dummy_wrap.nonce));
    randombytes_buf(ma_dummy_wrap.wrapped, sizeof(ma_dummy_wrap.wrapped));
    randombytes_buf(ma_dummy_pk, sizeof(ma_dummy_pk));
    mg_log(MG_LOG_INFO, "store: %s/store open (epoch %s)", s->data_dir,
           mg_store_epoch(ma_store));
    return MG_OK;
}

struct mg_store *
mg_store_api_store(void)
{
    return ma_store;
}

const struct mg_store_api *
mg_store_api_get(void)
{
    return ma_store != NULL ? &ma_api : NULL;
}

void
mg_store_api_close(void)
{
    if (ma_store == NULL)
        return;
    mg_store_close(ma_store);
    ma_store = NULL;
    mg_dedup_api_init(NULL);
}
