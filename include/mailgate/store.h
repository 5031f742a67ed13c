/*
 * include/mailgate/store.h -- the store and vault calls modules make.
 *
 * Everything here is asynchronous and streaming: a message is written as a
 * sequence of chunks into a *pending* record and becomes visible only when
 * committed; the completion arrives on the loop, addressed by the caller's
 * conn id, once the data is fsync'd. Nothing here blocks the loop for
 * longer than a short read transaction, and no call takes a whole message.
 *
 * The core fills `mg_core_api.store` once the store is configured (the
 * store issue); until then it is NULL and modules must refuse mail with a
 * temporary error.
 */
#ifndef MG_STORE_H
#define MG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mg_msg_writer; /* opaque: one message being stored */
struct mg_msg_reader; /* opaque: one message being read back */
struct mg_mbox_key;   /* opaque: an unlocked mailbox key (never the bytes) */

/** Policy and state of a mailbox as the protocol modules need it. */
struct mg_mailbox_info {
    char id[33];
    bool active;         /**< false = suspended: 4xx for new mail */
    bool accept_journal; /**< SMTP journal mail may be delivered */
    bool accept_proxy;   /**< proxy sessions may record into it */
    bool require_tls;    /**< senders must use TLS */
    uint64_t messages;
    uint64_t bytes;
};

/** Completion of an asynchronous store call, on the loop. `status` is
 * MG_OK, or MG_ERROR with `temporary` telling a 4xx cause (disk full,
 * map full, I/O error) from a permanent one. */
struct mg_store_result {
    int status;
    bool temporary;
    const char *error;
    uint64_t msg_ids[8]; /**< ids of the copies committed (first 8) */
};

typedef void (*mg_store_done_fn)(uint64_t conn_id,
                                 const struct mg_store_result *res, void *arg);

/** The store's calls. Ids in, completions by conn id out. */
struct mg_store_api {
    size_t size;
    /** Look a mailbox up (short read transaction). MG_DECLINED: none. */
    int (*mailbox_get)(const char *id, struct mg_mailbox_info *info_r,
                       const char **error_r);

    /** Start one message to one or more mailboxes: reserves the message
     * ids (the encryption binds them) and a fresh key per copy. */
    struct mg_msg_writer *(*msg_begin)(const char *const *mailbox_ids, size_t n,
                                       uint64_t conn_id, const char **error_r);
    /** Encrypt and queue a piece of the message (in the caller, not the
     * writer thread). MG_AGAIN: the writer is behind; wait for `resume`. */
    int (*msg_write)(struct mg_msg_writer *w, const void *data, size_t len,
                     void (*resume)(uint64_t conn_id, void *arg), void *arg);
    /** Commit all copies in one durable transaction. `publish` false
     * leaves them pending (the SMTP proxy) for msg_publish/msg_discard. */
    int (*msg_commit)(struct mg_msg_writer *w, bool publish,
                      mg_store_done_fn done, void *arg);
    /** Publish or discard a committed pending message. */
    int (*msg_publish)(struct mg_msg_writer *w, mg_store_done_fn done,
                       void *arg);
    int (*msg_discard)(struct mg_msg_writer *w, mg_store_done_fn done,
                       void *arg);
    /** Forget a writer (after an error or after publish/discard). */
    void (*msg_free)(struct mg_msg_writer *w);

    /** Unlock a mailbox key with its password, on the worker pool. */
    int (*key_unlock)(const char *mailbox_id, const char *password,
                      uint64_t conn_id,
                      void (*done)(uint64_t conn_id, struct mg_mbox_key *key,
                                   int status, void *arg),
                      void *arg);
    void (*key_free)(struct mg_mbox_key *key);

    /** Read a message back chunk by chunk; data is decrypted and
     * authenticated before it is handed out. */
    struct mg_msg_reader *(*msg_open)(struct mg_mbox_key *key, uint64_t msg_id,
                                      const char **error_r);
    /** Next plaintext piece; MG_AGAIN: prefetch running, `resume` follows;
     * MG_DECLINED: end of message; MG_ERROR: authentication failed. */
    int (*msg_read)(struct mg_msg_reader *r, const void **data, size_t *len,
                    void (*resume)(uint64_t conn_id, void *arg), void *arg);
    void (*msg_close)(struct mg_msg_reader *r);
};

#endif /* MG_STORE_H */
