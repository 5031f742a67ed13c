/*
 * store/dedup.c -- mg_store_api's dedup_get and dedup_put: the proxy's
 * index of recorded upstream messages, keyed by (mailbox, upstream, remote
 * user, upstream UIDL). Reads are short read transactions on the caller's
 * thread; writes go through the writer thread like every other write and
 * complete on the loop once durable.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup.h"
#include "store.h"

static struct mg_store *dedup_store;

void
mg_dedup_api_init(struct mg_store *st)
{
    dedup_store = st;
}

static bool
dedup_args_valid(const char *mailbox_id, const char *upstream, const char *user,
                 const char *uidl)
{
    return mg_mailbox_id_valid(mailbox_id) && upstream != NULL &&
           user != NULL && uidl != NULL && uidl[0] != '\0';
}

int
mg_dedup_api_get(const char *mailbox_id, const char *upstream, const char *user,
                 const char *uidl, uint64_t *msg_id_r, const char **error_r)
{
    MDB_txn *txn;
    int r;

    if (dedup_store == NULL) {
        *error_r = "no store";
        return MG_ERROR;
    }
    if (!dedup_args_valid(mailbox_id, upstream, user, uidl))
        return MG_DECLINED;
    if (mg_store_read_begin(dedup_store, &txn, error_r) != MG_OK)
        return MG_ERROR;
    r = mg_rec_dedup_get(dedup_store, txn, mailbox_id, upstream, user, uidl,
                         msg_id_r, error_r);
    mg_store_read_end(dedup_store, txn);
    return r;
}

struct dedup_put {
    struct mg_store_op op;
    char mailbox_id[MG_MAILBOX_ID_MAX + 1];
    char *upstream, *user, *uidl;
    uint64_t msg_id;
    uint64_t conn_id;
    mg_store_done_fn done;
    void *arg;
};

static int
dedup_put_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct dedup_put *d = op->arg;
    const char *err = NULL;
    int r = mg_rec_dedup_put(st, txn, d->mailbox_id, d->upstream, d->user,
                             d->uidl, d->msg_id, &err);

    if (r != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s",
                 err != NULL ? err : "de-duplication index write failed");
    return r;
}

static void
dedup_put_loop(void *arg)
{
    struct dedup_put *d = arg;
    struct mg_store_result res = {
        .status = d->op.status,
        .temporary = d->op.temporary,
        .error = d->op.error[0] != '\0' ? d->op.error : NULL,
    };

    d->done(d->conn_id, &res, d->arg);
    free(d->upstream);
    free(d->user);
    free(d->uidl);
    free(d);
}

static void
dedup_put_complete(struct mg_store_op *op)
{
    mg_post(dedup_put_loop, op->arg);
}

int
mg_dedup_api_put(const char *mailbox_id, const char *upstream, const char *user,
                 const char *uidl, uint64_t msg_id, uint64_t conn_id,
                 mg_store_done_fn done, void *arg)
{
    struct dedup_put *d;

    if (dedup_store == NULL || done == NULL ||
        !dedup_args_valid(mailbox_id, upstream, user, uidl))
        return MG_ERROR;
    d = mg_xcalloc(1, sizeof(*d));
    snprintf(d->mailbox_id, sizeof(d->mailbox_id), "%s", mailbox_id);
    d->upstream = mg_xstrdup(upstream);
    d->user = mg_xstrdup(user);
    d->uidl = mg_xstrdup(uidl);
    d->msg_id = msg_id;
    d->conn_id = conn_id;
    d->done = done;
    d->arg = arg;
    d->op.apply = dedup_put_apply;
    d->op.complete = dedup_put_complete;
    d->op.arg = d;
    d->op.new_data = true; /* a new entry: refused within the reserve */
    d->op.bytes = 64;
    mg_store_submit(dedup_store, &d->op);
    return MG_OK;
}
