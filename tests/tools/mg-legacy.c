/*
 * tests/tools/mg-legacy.c -- store a message as encryption scheme 1 wrote
 * it (test-only).
 *
 *   mg-legacy DATA_DIR MAILBOX_ID < MESSAGE
 *
 * Opens DATA_DIR/store (no daemon may run on it) and stores standard
 * input, unchanged, as one visible message of the mailbox the way
 * versions before scheme 2 did: a fresh message key sealed to the
 * mailbox key (crypto_box_seal) and a secretstream of envelope and body.
 * A store of today holds such messages after an upgrade; the tests use
 * this to read schemes 1, 2 and 3 side by side. Prints the message id.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store.h"

struct legacy_op {
    struct mg_store_op op;
    const char *mailbox_id;
    const uint8_t *body;
    size_t size;
    uint64_t id;
};

static int
legacy_apply(struct mg_store *st, MDB_txn *txn, struct mg_store_op *op)
{
    struct legacy_op *l = (struct legacy_op *)op;
    static char *rcpts[] = {"archive@example.org"};
    static const struct mg_envelope env = {
        .source = "legacy",
        .sender = "old@example.org",
        .rcpts = rcpts,
        .nrcpts = 1,
    };
    static uint8_t c[MG_VAULT_CHUNK + MG_VAULT_ABYTES];
    struct mg_msg_header h;
    struct mg_mailbox m;
    struct mg_vault_enc *e;
    const char *error = NULL;
    struct mg_buf eb;
    size_t off = 0;
    uint32_t k = 0;
    int rc;

    memset(&m, 0, sizeof(m));
    rc = mg_rec_mailbox_get(st, txn, l->mailbox_id, &m, &error);
    if (rc == MG_OK)
        rc = mg_rec_msg_ids(st, txn, 1, &l->id, &error);
    if (rc != MG_OK) {
        mg_mailbox_clear(&m);
        snprintf(op->error, sizeof(op->error), "%s", error);
        return MG_ERROR;
    }
    memset(&h, 0, sizeof(h));
    h.state = MG_MSG_WRITING;
    h.alg = MG_VAULT_ALG_V1;
    h.received = (uint64_t)time(NULL);
    e = mg_vault_enc_begin_v1(m.pk, l->mailbox_id, l->id, h.sealed_key,
                              h.header);
    mg_mailbox_clear(&m);
    if (e == NULL) {
        snprintf(op->error, sizeof(op->error), "unusable public key");
        return MG_ERROR;
    }
    mg_buf_init(&eb);
    mg_codec_envelope_encode(&env, &eb);
    mg_vault_enc_push(e, mg_buf_data(&eb), mg_buf_len(&eb), false, c);
    rc = mg_rec_chunk_put(st, txn, l->mailbox_id, l->id, k++, c,
                          mg_buf_len(&eb) + MG_VAULT_ABYTES, &error);
    mg_buf_free(&eb);
    do {
        size_t n =
            l->size - off < MG_VAULT_CHUNK ? l->size - off : MG_VAULT_CHUNK;

        mg_vault_enc_push(e, l->body + off, n, off + n == l->size, c);
        if (rc == MG_OK)
            rc = mg_rec_chunk_put(st, txn, l->mailbox_id, l->id, k++, c,
                                  n + MG_VAULT_ABYTES, &error);
        off += n;
    } while (off < l->size);
    mg_vault_enc_free(e);
    h.size = l->size;
    h.nchunks = k;
    if (rc == MG_OK)
        rc = mg_rec_msg_commit(st, txn, l->mailbox_id, l->id, &h, true, &error);
    if (rc != MG_OK)
        snprintf(op->error, sizeof(op->error), "%s",
                 error != NULL ? error : "failed");
    return rc;
}

int
main(int argc, char **argv)
{
    struct mg_store_config cfg = {.map_size = 4ull << 30, .reserve = 16u << 20};
    struct legacy_op l = {0};
    struct mg_store *st;
    const char *error = NULL;
    uint8_t *body = NULL;
    size_t cap = 0;
    char dir[4096];

    if (argc != 3) {
        fprintf(stderr, "usage: mg-legacy DATA_DIR MAILBOX_ID < MESSAGE\n");
        return 1;
    }
    for (;;) {
        size_t n;

        body = realloc(body, cap + 65536);
        if (body == NULL)
            return 1;
        n = fread(body + cap, 1, 65536, stdin);
        cap += n;
        if (n < 65536)
            break;
    }
    l.mailbox_id = argv[2];
    l.body = body;
    l.size = cap;
    snprintf(dir, sizeof(dir), "%s/store", argv[1]);
    cfg.dir = dir;
    if (mg_vault_init(1, &error) != MG_OK ||
        mg_store_open(&cfg, &st, &error) != MG_OK) {
        fprintf(stderr, "mg-legacy: %s: %s\n", dir, error);
        return 1;
    }
    l.op.apply = legacy_apply;
    if (mg_store_run(st, &l.op) != MG_OK) {
        fprintf(stderr, "mg-legacy: %s\n", l.op.error);
        mg_store_close(st);
        return 1;
    }
    mg_store_close(st);
    free(body);
    printf("%" PRIu64 "\n", l.id);
    return 0;
}
