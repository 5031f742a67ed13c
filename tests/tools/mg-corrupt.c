/*
 * tests/tools/mg-corrupt.c -- flip one bit of a stored chunk (test-only).
 *
 *   mg-corrupt DATA_DIR MAILBOX_ID MSG_ID CHUNK
 *
 * Opens DATA_DIR/store (no daemon may run on it), and in one committed
 * write transaction flips the lowest bit of the middle byte of chunk
 * CHUNK of the message (chunk 0 is the envelope, 1 the first piece of the
 * body). Used to check that readers never hand out bytes that fail
 * authentication. Exit 0 when the chunk was changed, 1 otherwise.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

struct corrupt_op {
    struct mg_store_op op;
    const char *mailbox_id;
    uint64_t msg_id;
    uint32_t chunk;
};

static int
corrupt_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct corrupt_op *c = (struct corrupt_op *)op;
    const char *error = NULL;
    const void *data;
    size_t len;
    uint8_t *copy;
    int rc = mg_rec_chunk_get(st, txn, c->mailbox_id, c->msg_id, c->chunk,
                              &data, &len, &error);

    if (rc != MG_OK || len == 0) {
        snprintf(op->error, sizeof(op->error), "chunk %" PRIu32 ": %s",
                 c->chunk, rc != MG_OK && error != NULL ? error : "empty");
        return MG_ERROR;
    }
    copy = malloc(len);
    if (copy == NULL) {
        snprintf(op->error, sizeof(op->error), "out of memory");
        return MG_ERROR;
    }
    memcpy(copy, data, len);
    copy[len / 2] ^= 1;
    rc = mg_rec_chunk_put(st, txn, c->mailbox_id, c->msg_id, c->chunk, copy,
                          len, &error);
    free(copy);
    if (rc != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s", error);
    return rc;
}

static uint64_t
corrupt_number(const char *s, const char *what)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        fprintf(stderr, "mg-corrupt: bad %s: %s\n", what, s);
        exit(1);
    }
    return (uint64_t)v;
}

int
main(int argc, char **argv)
{
    struct mg_store_config cfg = {.map_size = 4ull << 30, .reserve = 16u << 20};
    struct corrupt_op c = {0};
    struct mg_store *st;
    const char *error = NULL;
    char dir[4096];

    if (argc != 5) {
        fprintf(stderr, "usage: mg-corrupt DATA_DIR MAILBOX_ID MSG_ID CHUNK\n");
        return 1;
    }
    c.mailbox_id = argv[2];
    c.msg_id = corrupt_number(argv[3], "message id");
    c.chunk = (uint32_t)corrupt_number(argv[4], "chunk number");
    snprintf(dir, sizeof(dir), "%s/store", argv[1]);
    cfg.dir = dir;
    if (mg_vault_init(1, &error) != MG_OK ||
        mg_store_open(&cfg, &st, &error) != MG_OK) {
        fprintf(stderr, "mg-corrupt: %s: %s\n", dir, error);
        return 1;
    }
    c.op.apply = corrupt_apply;
    if (mg_store_run(st, &c.op) != MG_OK) {
        fprintf(stderr, "mg-corrupt: %s\n", c.op.error);
        mg_store_close(st);
        return 1;
    }
    mg_store_close(st);
    printf("flipped a bit of chunk %" PRIu32 " of message %" PRIu64 "\n",
           c.chunk, c.msg_id);
    return 0;
}
