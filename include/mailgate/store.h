/*
 * include/mailgate/store.h -- the store and vault calls modules make.
 *
 * Everything here is asynchronous and streaming: a message is written as a
 * sequence of chunks into a *pending* record and becomes visible only when
 * committed; the completion arrives on the loop, addressed by the caller's
 * conn id, once the data is fsync'd. Nothing here blocks the loop for
 * longer than a short read transaction, and no call takes a whole message.
 *
 * `mg_core_api.store` is NULL only in a process without a store (tests);
 * a module that needs it refuses to configure then.
 */
#ifndef MG_STORE_H
#define MG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mg_msg_writer; /* opaque: one message being stored */
struct mg_msg_reader; /* opaque: one message being read back */
struct mg_mbox_key;   /* opaque: an unlocked mailbox key (never the bytes) */

/** Policy and state of a mailbox as the protocol modules need it. Owned
 * by the caller after mailbox_get; release with mailbox_info_free. */
struct mg_mailbox_info {
    char id[33];
    bool active;         /**< false = suspended: 4xx for new mail */
    bool accept_journal; /**< SMTP journal mail may be delivered */
    bool accept_proxy;   /**< proxy sessions may record into it */
    bool require_tls;    /**< senders must use TLS */
    uint64_t messages;
    uint64_t bytes;
    char **targets; /**< proxy targets of its own; none = global policy */
    size_t ntargets;
    char **networks; /**< sender networks (CIDR); none = any */
    size_t nnetworks;
};

/** The envelope of a message, stored inside the encrypted part. */
struct mg_envelope_info {
    const char *source; /**< "smtp", "proxy-smtp", "proxy-pop3" */
    const char *sender; /**< reverse-path without <>, "" for <> */
    const char *const *rcpts;
    size_t nrcpts;
    const char *client; /**< peer address or NULL */
    const char *tls;    /**< "TLSv1.3 TLS_AES_256_GCM_SHA384" or NULL */
};

/** Completion of an asynchronous store call, on the loop. `status` is
 * MG_OK, or MG_ERROR with `temporary` telling a 4xx cause (disk full,
 * map full, I/O error) from a permanent one. */
struct mg_store_result {
    int status;
    bool temporary;
    const char *error;
};

typedef void (*mg_store_done_fn)(uint64_t conn_id,
                                 const struct mg_store_result *res, void *arg);
/** Called on the loop when a call that said MG_AGAIN can go on. */
typedef void (*mg_store_resume_fn)(uint64_t conn_id, void *arg);

/** One message of a mailbox listing. */
struct mg_msg_entry {
    uint64_t id;
    uint64_t size;     /**< bytes of the stored message (plaintext) */
    uint64_t received; /**< unix seconds */
    char uidl[40];     /**< store epoch + id: never repeated */
};

/** The store's calls. Ids in, completions by conn id out. */
struct mg_store_api {
    size_t size;
    /** Look a mailbox up (short read transaction). MG_DECLINED: none. */
    int (*mailbox_get)(const char *id, struct mg_mailbox_info *info_r,
                       const char **error_r);
    void (*mailbox_info_free)(struct mg_mailbox_info *info);

    /** Start one message to one or more mailboxes (all copies commit
     * together). Ids come from a pool reserved ahead, so this does not
     * wait for the disk. MG_ERROR (NULL) with a temporary cause when the
     * store is within its reserve. */
    struct mg_msg_writer *(*msg_begin)(const char *const *mailbox_ids, size_t n,
                                       const struct mg_envelope_info *env,
                                       uint64_t conn_id, const char **error_r);
    /** Encrypt and queue a piece of the message (in the caller, not the
     * writer thread); pass pieces of socket-read size. MG_AGAIN: the writer
     * is behind and nothing was taken: call again with the same piece after
     * `resume` ran on the loop. MG_ERROR: the message failed; commit
     * reports why. */
    int (*msg_write)(struct mg_msg_writer *w, const void *data, size_t len,
                     mg_store_resume_fn resume, void *arg);
    /** Commit all copies in one durable transaction. `publish` false
     * leaves them held (the SMTP proxy) for msg_publish/msg_discard. */
    int (*msg_commit)(struct mg_msg_writer *w, bool publish,
                      mg_store_done_fn done, void *arg);
    /** Publish or discard a committed held message. */
    int (*msg_publish)(struct mg_msg_writer *w, mg_store_done_fn done,
                       void *arg);
    int (*msg_discard)(struct mg_msg_writer *w, mg_store_done_fn done,
                       void *arg);
    /** Forget a writer (after commit, publish or discard; before them it
     * removes what was written). No callback runs after this. */
    void (*msg_free)(struct mg_msg_writer *w);

    /** The visible messages of a mailbox in arrival order (a snapshot). */
    int (*msg_list)(const char *mailbox_id, struct mg_msg_entry **list_r,
                    size_t *n_r, const char **error_r);
    /** Delete messages in one durable transaction (POP3 UPDATE state);
     * works when new mail is refused for lack of space. */
    int (*msg_delete)(const char *mailbox_id, const uint64_t *ids, size_t n,
                      uint64_t conn_id, mg_store_done_fn done, void *arg);

    /** Unlock a mailbox key with its password on the worker pool; `done`
     * gets the key (MG_OK), MG_DECLINED for a wrong password or unknown
     * mailbox (the same delay either way), or MG_ERROR. */
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
    /** Next plaintext piece, valid until the next call; MG_AGAIN: the next
     * chunk is being prepared off the loop, `resume` follows (with the
     * conn id given to key_unlock; it never runs after msg_close); MG_DECLINED:
     * end of message; MG_ERROR: authentication failed or data missing. */
    int (*msg_read)(struct mg_msg_reader *r, const void **data, size_t *len,
                    mg_store_resume_fn resume, void *arg);
    void (*msg_close)(struct mg_msg_reader *r);

    /* -- added after the first release: check `size` before use -- */

    /** Id and UIDL of copy i of a message started with msg_begin (the
     * order of its mailbox ids), e.g. for "250 queued as" and
     * message.stored. MG_DECLINED past the last copy. */
    int (*msg_id)(const struct mg_msg_writer *w, size_t i, uint64_t *id_r,
                  char uidl_r[40]);

    /** The proxy's de-duplication index: the message already recorded
     * for (mailbox, upstream "host:port", remote user, upstream UIDL).
     * A short read transaction. MG_OK with *msg_id_r; MG_DECLINED: none
     * (the message may since have been deleted from the mailbox: it was
     * recorded all the same). */
    int (*dedup_get)(const char *mailbox_id, const char *upstream,
                     const char *user, const char *uidl, uint64_t *msg_id_r,
                     const char **error_r);
    /** Add an entry in one durable transaction (after the message's own
     * commit: a crash in between records the message again next time,
     * never loses it; msg_dedup avoids that); `done` on the loop once it
     * is on disk. */
    int (*dedup_put)(const char *mailbox_id, const char *upstream,
                     const char *user, const char *uidl, uint64_t msg_id,
                     uint64_t conn_id, mg_store_done_fn done, void *arg);

    /** The de-duplication entry for a message being written (to copy 0's
     * mailbox, before msg_commit): written in the message's own commit
     * transaction, so a crash can never leave the copy without its entry
     * (with dedup_put after the commit, it could: recorded again). Two
     * sessions recording the same upstream message at once both commit
     * a copy; the entry names the later one. MG_ERROR when the writer is
     * committing or has one already, or an argument is empty. */
    int (*msg_dedup)(struct mg_msg_writer *w, const char *upstream,
                     const char *user, const char *uidl);

    /** msg_publish (publish true) or msg_discard of a committed held
     * message, *lazily*: it starts no disk commit of its own but rides
     * with the next commit of the store (any message's), or is committed
     * alone at most 100 ms after it was queued, and always before the
     * store closes at shutdown; it is never dropped while the process
     * lives. Only a crash (kill -9, power loss) before then can undo it,
     * and then the message is still held, which the next start publishes
     * flagged unconfirmed: a lazy publish is never lost, a lazy discard
     * may end as an unconfirmed copy. `done` (may be NULL) runs once it is
     * durable, unless msg_free came first; the caller may msg_free right
     * after the call (the store then logs a failure itself). */
    int (*msg_settle_lazy)(struct mg_msg_writer *w, bool publish,
                           mg_store_done_fn done, void *arg);
};

#endif /* MG_STORE_H */
