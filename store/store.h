/*
 * store/store.h -- the store and the crypto vault behind mg_store_api.
 *
 * Used by the daemon (store/module_api.c builds the mg_store_api table),
 * by mailgatectl (administration, backup) and by tests and benchmarks.
 * Layers, bottom up, one file each:
 *
 *   vault.c    libsodium: mailbox key pairs, password wraps, message
 *              encryption streams bound to (mailbox, message id); its
 *              vault_aes.c the AES-256-GCM chunks (OpenSSL EVP)
 *   codec.c    pure (de)serialisation of the records below
 *   store.c    the LMDB environment, the writer thread with group commit,
 *              short read transactions, fault handling
 *   records.c  record operations inside a transaction
 *   message.c  streaming writer and reader of one message (vault + records)
 *   pagedrop.c the page-cache pages of written chunks, dropped after commit
 *
 * Nothing here runs on the libev loop except what store/module_api.c
 * wraps: writes complete on the writer thread and are posted to the loop.
 */
#ifndef MG_STORE_INTERNAL_H
#define MG_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "mg.h"

/* ================================================================ vault.c */

/* Plaintext bytes per chunk: with the 17-byte MAC and LMDB's 16-byte
 * page header a chunk fills 16 pages of 4 KiB (or one of 64 KiB) exactly;
 * a 64 KiB chunk needed a 17th page for its last 33 bytes. */
#define MG_VAULT_CHUNK (64 * 1024 - 33)
#define MG_VAULT_ABYTES                                                   \
    17                           /* per chunk: secretstream tag + MAC, or \
                                     scheme 3's flags byte + GCM tag */
#define MG_VAULT_PK_BYTES     32 /* X25519 public key */
#define MG_VAULT_SEALED_KEY   80 /* crypto_box_seal(32-byte key) */
#define MG_VAULT_HEADER       24 /* secretstream header */
#define MG_VAULT_SALT         16
#define MG_VAULT_NONCE        24
#define MG_VAULT_WRAPPED      48 /* secretbox(32-byte private key) */
#define MG_VAULT_PASSWORD_MAX 64

/** Message encryption scheme 1: X25519 sealed box for the message key,
 * XChaCha20-Poly1305 secretstream for envelope and body, every chunk's
 * associated data = mailbox id, NUL, message id (8 bytes big-endian).
 * Read, no longer written. */
#define MG_VAULT_ALG_V1 1
/** Message encryption scheme 2: a sender key pair (e, E) cached per
 * mailbox public key pk for a while; the stream key is
 * BLAKE2b-256("mailgate vault v2 stream key" || X25519(e, pk) || E || pk)
 * and the message a secretstream under it (its random header makes the
 * per-message key), chunk AD as in scheme 1. The header stores E. */
#define MG_VAULT_ALG_V2 2
/** Message encryption scheme 3: scheme 2's stream key; the message key
 * K = BLAKE2b-256(key = stream key, "mailgate vault v3 message key" ||
 * header), the header being 24 random bytes; chunk i is
 * flags || AES-256-GCM(K, nonce = 0^32 || i as 64 bits big-endian,
 * AD = scheme 1's AD || flags) || 16-byte tag, flags 0x01 on the last
 * chunk and no other bit. Written where the CPU has AES instructions. */
#define MG_VAULT_ALG_V3 3

/* The sender-key cache's defaults: seconds a sender key lives, messages
 * it serves at most, mailboxes cached at most (least recently used go). */
#define MG_VAULT_SENDER_LIFETIME  60
#define MG_VAULT_SENDER_MESSAGES  100000
#define MG_VAULT_SENDER_MAILBOXES 1024

/** Kinds of private-key wrap: the mailbox password today; a recovery key
 * wrap can be added later without changing records. */
enum mg_wrap_kind {
    MG_WRAP_PASSWORD = 1,
    MG_WRAP_RECOVERY = 2,
};

/** Wrap algorithm 1: Argon2id v1.3 (crypto_pwhash) → XSalsa20-Poly1305
 * secretbox of the 32-byte private key. */
#define MG_WRAP_ALG_ARGON2ID_SECRETBOX 1

/** One sealed copy of a mailbox private key, with its KDF parameters. */
struct mg_vault_wrap {
    uint8_t kind; /* enum mg_wrap_kind */
    uint8_t alg;  /* MG_WRAP_ALG_* */
    uint64_t opslimit;
    uint64_t memlimit;
    uint8_t salt[MG_VAULT_SALT];
    uint8_t nonce[MG_VAULT_NONCE];
    uint8_t wrapped[MG_VAULT_WRAPPED];
};

/** An unlocked mailbox private key (sodium_malloc'd, never copied out). */
struct mg_vault_key;
/** The encryption state of one message copy (sodium_malloc'd). */
struct mg_vault_enc;
/** The decryption state of one message copy (sodium_malloc'd). */
struct mg_vault_dec;
/** Scheme 2 sender keys, one per mailbox public key (thread-safe). */
struct mg_vault_senders;

/** Guarded, locked memory (sodium_malloc) for secrets; aborts when there
 * is none. Free with sodium_free (it wipes). */
void *mg_vault_secure_alloc(size_t n);
/** sodium_init() and the derivation cap; call once per process. */
int mg_vault_init(unsigned max_derivations, const char **error_r);
/** Argon2id parameters for new wraps (INTERACTIVE: ≥128-bit passwords). */
void mg_vault_default_limits(uint64_t *opslimit, uint64_t *memlimit);
/** A new password: ≥128 random bits, groups of an unambiguous alphabet
 * separated by '-', e.g. "k7mq-x2pd-…"; NUL-terminated. */
void mg_vault_password_new(char out[MG_VAULT_PASSWORD_MAX]);

/** A fresh key pair; the private key wrapped with `password` (slow:
 * Argon2id; run it off the loop). */
int mg_vault_keys_new(const char *password, uint64_t opslimit,
                      uint64_t memlimit, uint8_t pk[MG_VAULT_PK_BYTES],
                      struct mg_vault_wrap *wrap, const char **error_r);
/** Unlock a wrap with a password (slow; blocks while the number of running
 * derivations is at its cap). MG_DECLINED: wrong password (or a wrap that
 * does not belong to pk). */
int mg_vault_unlock(const struct mg_vault_wrap *wrap,
                    const uint8_t pk[MG_VAULT_PK_BYTES], const char *password,
                    struct mg_vault_key **key_r, const char **error_r);
void mg_vault_key_free(struct mg_vault_key *key);

/** A sender-key cache: a key lives `lifetime` seconds (0: one key pair
 * per message, nothing cached) and serves `max_messages` at most; at most
 * `max_mailboxes` are kept. Aborts when out of secure memory. */
struct mg_vault_senders *mg_vault_senders_new(unsigned lifetime,
                                              uint32_t max_messages,
                                              unsigned max_mailboxes);
/** Wipe every cached key and free (NULL is accepted). */
void mg_vault_senders_free(struct mg_vault_senders *s);

/** The scheme new messages get on this machine: 3 when OpenSSL has
 * AES-256-GCM and the CPU AES instructions, else 2. */
uint8_t mg_vault_alg_auto(void);
/** Whether this process can write scheme `alg` (2 always, 3 when
 * OpenSSL provides AES-256-GCM). */
bool mg_vault_alg_writable(uint8_t alg);
/** The chunk cipher of a scheme: "xchacha20poly1305" or "aes256gcm". */
const char *mg_vault_alg_cipher(uint8_t alg);

/** Start a message copy with scheme `alg` (2 or 3, writable): the sender
 * key of pk from the cache (NULL: a key pair for this message alone); its
 * public half goes to epk. NULL only when pk is unusable (a corrupt
 * mailbox record). */
struct mg_vault_enc *mg_vault_enc_begin(struct mg_vault_senders *s,
                                        const uint8_t pk[MG_VAULT_PK_BYTES],
                                        uint8_t alg, const char *mailbox_id,
                                        uint64_t msg_id,
                                        uint8_t epk[MG_VAULT_PK_BYTES],
                                        uint8_t header[MG_VAULT_HEADER]);
/** Start a message copy with scheme 1: a fresh message key sealed to pk
 * (kept so that tests can write what older versions stored). */
struct mg_vault_enc *
mg_vault_enc_begin_v1(const uint8_t pk[MG_VAULT_PK_BYTES],
                      const char *mailbox_id, uint64_t msg_id,
                      uint8_t sealed_key[MG_VAULT_SEALED_KEY],
                      uint8_t header[MG_VAULT_HEADER]);
/** Encrypt one chunk (len ≤ MG_VAULT_CHUNK) into out (len + ABYTES). The
 * last chunk of the message is pushed with final = true. */
void mg_vault_enc_push(struct mg_vault_enc *e, const void *in, size_t len,
                       bool final, uint8_t *out);
void mg_vault_enc_free(struct mg_vault_enc *e);

/** Open a message copy of scheme `alg`: scheme 1 reads sealed_key,
 * schemes 2 and 3 epk (the other may be NULL). Stream keys are cached in the
 * unlocked key per sender key, so reading many messages of one sender
 * key costs one X25519. */
int mg_vault_dec_begin(const struct mg_vault_key *key, const char *mailbox_id,
                       uint64_t msg_id, uint8_t alg,
                       const uint8_t sealed_key[MG_VAULT_SEALED_KEY],
                       const uint8_t epk[MG_VAULT_PK_BYTES],
                       const uint8_t header[MG_VAULT_HEADER],
                       struct mg_vault_dec **dec_r, const char **error_r);
/** Decrypt one chunk into out (len - ABYTES bytes). MG_ERROR when it
 * fails authentication (out is then wiped); *final at the last chunk. */
int mg_vault_dec_pull(struct mg_vault_dec *d, const uint8_t *in, size_t len,
                      uint8_t *out, size_t *outlen, bool *final);
void mg_vault_dec_free(struct mg_vault_dec *d);

/* ================================================================ codec.c */

#define MG_MAILBOX_ID_MAX 32
#define MG_MAILBOX_WRAPS  2

/** A mailbox record. Strings are owned (mg_mailbox_clear frees them). */
struct mg_mailbox {
    char id[MG_MAILBOX_ID_MAX + 1];
    char *name;
    char *description;
    bool active;      /* false = suspended */
    uint64_t created; /* unix seconds */
    uint8_t pk[MG_VAULT_PK_BYTES];
    struct mg_vault_wrap wraps[MG_MAILBOX_WRAPS];
    unsigned nwraps;
    /* policy */
    bool accept_journal;
    bool accept_proxy;
    bool require_tls;
    char **targets; /* proxy targets allowed; none = the global policy */
    size_t ntargets;
    char **networks; /* sender networks (CIDR); none = any */
    size_t nnetworks;
    /* counters, kept by the message operations in their own record (the
     * counter database); mg_rec_mailbox_put never writes them */
    uint64_t messages;
    uint64_t bytes;
};

/** States of a message record. */
enum mg_msg_state {
    MG_MSG_WRITING = 1, /* data arriving; removed at start if left over */
    MG_MSG_HELD = 2,    /* committed, waiting for publish or discard */
    MG_MSG_VISIBLE = 3, /* delivered: POP3 sees it */
};

/** The clear part of a message record (the rest is encrypted). */
struct mg_msg_header {
    uint8_t state;     /* enum mg_msg_state */
    uint8_t alg;       /* MG_VAULT_ALG_V1, _V2 or _V3 */
    uint8_t flags;     /* MG_MSG_F_* */
    uint64_t received; /* unix seconds */
    uint64_t size;     /* plaintext body bytes */
    uint32_t nchunks;  /* ciphertext chunks, the envelope chunk 0 included */
    uint8_t sealed_key[MG_VAULT_SEALED_KEY]; /* scheme 1 only */
    uint8_t epk[MG_VAULT_PK_BYTES];          /* schemes 2, 3: E */
    uint8_t header[MG_VAULT_HEADER];
};
/** Published at start after a crash between commit and publish. */
#define MG_MSG_F_UNCONFIRMED 0x01

/** The envelope, stored encrypted as chunk 0 of the message. */
struct mg_envelope {
    char *source; /* "smtp", "proxy-smtp", "proxy-pop3", "test" */
    char *sender; /* reverse-path, "" for <> */
    char **rcpts; /* forward-paths */
    size_t nrcpts;
    char *client; /* peer address, or NULL */
    char *tls;    /* "TLSv1.3 TLS_AES_256_GCM_SHA384", or NULL */
};

void mg_codec_mailbox_encode(const struct mg_mailbox *m, struct mg_buf *out);
int mg_codec_mailbox_decode(const void *data, size_t len, struct mg_mailbox *m,
                            const char **error_r);
void mg_mailbox_clear(struct mg_mailbox *m);
/** Deep copy (dst is overwritten). */
void mg_mailbox_copy(struct mg_mailbox *dst, const struct mg_mailbox *src);

void mg_codec_msg_encode(const struct mg_msg_header *h, struct mg_buf *out);
int mg_codec_msg_decode(const void *data, size_t len, struct mg_msg_header *h,
                        const char **error_r);

void mg_codec_envelope_encode(const struct mg_envelope *e, struct mg_buf *out);
int mg_codec_envelope_decode(const void *data, size_t len,
                             struct mg_envelope *e, const char **error_r);
void mg_envelope_clear(struct mg_envelope *e);

/** A new mailbox id: 16 characters of [a-z0-9] (≥ 80 random bits). */
void mg_mailbox_id_new(char id[MG_MAILBOX_ID_MAX + 1]);
/** 8–32 characters of [a-z0-9]. */
bool mg_mailbox_id_valid(const char *id);

/* ================================================================ store.c */

/** How to open the store. */
struct mg_store_config {
    const char *dir;         /* <data_dir>/store, created 0700 */
    uint64_t map_size;       /* bytes; sparse; default 64 GiB */
    uint64_t reserve;        /* bytes kept free for deletions; default 64 MiB */
    bool read_only;          /* tools that only read */
    bool recover;            /* clean up after a crash: only the process that
                                holds the data directory lock (the daemon) */
    unsigned batch_ops;      /* ops per commit at most; 0: 256 (1: no group
                                commit, for the benchmark's baseline) */
    int sender_key_lifetime; /* seconds a scheme 2 sender key is used; 0:
                                MG_VAULT_SENDER_LIFETIME; < 0: a new key
                                pair for every message */
    uint8_t alg;             /* scheme new messages get (MG_VAULT_ALG_V2 or
                                _V3); 0: mg_vault_alg_auto() */
    bool drop_written_pages; /* drop the page-cache pages of the message
                                chunks each commit wrote, once durable */
};

struct mg_store;

/**
 * Open (or create) the store: the environment with durable default flags
 * (no NOSYNC, NOMETASYNC or WRITEMAP; MDB_NOTLS), the named databases, the
 * format version (refuses a newer one) and the epoch (new at creation).
 * Clears stale reader slots; with `recover` removes orphaned WRITING
 * messages and publishes HELD ones (flagged MG_MSG_F_UNCONFIRMED); then
 * starts the writer thread (not for read_only).
 */
int mg_store_open(const struct mg_store_config *cfg, struct mg_store **st_r,
                  const char **error_r);
/** Finish queued writes, stop the writer, close the environment. */
void mg_store_close(struct mg_store *st);
/** 16 hex digits, new at creation and at every restore. */
const char *mg_store_epoch(const struct mg_store *st);
/** Set a new epoch (restore). */
int mg_store_new_epoch(struct mg_store *st, const char **error_r);

struct mg_store_op;
/** Runs on the writer thread inside the batch's transaction (a nested
 * transaction of its own: a failure undoes only this op). Returns an LMDB
 * code or MG_ERROR with op->error set; MDB_MAP_FULL, ENOSPC, EIO and the
 * like make the failure temporary. */
typedef int (*mg_store_apply_fn)(struct mg_store *st, MDB_txn *txn,
                                 struct mg_store_op *op);
/** Runs on the writer thread once the batch is durable (fsync'd) or has
 * failed; status says which. Must not block (post to the loop). */
typedef void (*mg_store_complete_fn)(struct mg_store_op *op);

/** One unit of work for the writer. Callers embed it in their own struct
 * and keep it alive until `complete` ran. */
struct mg_store_op {
    mg_store_apply_fn apply;
    mg_store_complete_fn complete;
    void *arg;
    bool new_data;  /* refused within the reserve (new mail, not deletes) */
    size_t bytes;   /* payload size, for queue accounting */
    int status;     /* out: MG_OK or MG_ERROR */
    bool temporary; /* out: a 4xx kind of failure */
    char error[200];
    struct mg_store_op *next; /* the writer's queue */
};

/** Queue an op (any thread). */
void mg_store_submit(struct mg_store *st, struct mg_store_op *op);
/** Queue an op that starts no commit of its own: it goes with the next
 * batch, or alone at most STORE_LAZY_DELAY_MS (100 ms) after the oldest
 * lazy op was queued, and always before mg_store_close returns. For ops
 * whose loss in a crash the next start repairs (publishing a held
 * message). `complete` runs once it is durable, as for any op. Lazy ops
 * go first in their batch: one must not depend on an op still queued. */
void mg_store_submit_lazy(struct mg_store *st, struct mg_store_op *op);
/** Queue an op and wait until it completed (tools, tests; never the
 * loop). Returns op->status. `complete` is not used. */
int mg_store_run(struct mg_store *st, struct mg_store_op *op);
/** Bytes queued and not yet committed (back-pressure). */
size_t mg_store_queued_bytes(struct mg_store *st);

/** A short read transaction (any thread; never across network waits). */
int mg_store_read_begin(struct mg_store *st, MDB_txn **txn_r,
                        const char **error_r);
void mg_store_read_end(struct mg_store *st, MDB_txn *txn);

/** The database handles records.c uses. */
struct mg_store_dbs {
    MDB_dbi meta, mailbox, message, chunk, dedup, kv;
    MDB_dbi counter; /* per mailbox: messages, bytes (16 bytes BE) */
};
const struct mg_store_dbs *mg_store_dbs(const struct mg_store *st);
MDB_env *mg_store_env(struct mg_store *st);
/** True when the map is within the reserve: new mail must be refused. */
bool mg_store_low_space(struct mg_store *st);
/** The store's sender-key cache for message encryption (NULL when read
 * only: a key pair per message). Wiped at close. */
struct mg_vault_senders *mg_store_senders(struct mg_store *st);
/** The encryption scheme new messages get (MG_VAULT_ALG_V2 or _V3). */
uint8_t mg_store_alg(const struct mg_store *st);
/** A consistent compacting copy of the store into dir (mdb_env_copy2). */
int mg_store_backup(struct mg_store *st, const char *dir, const char **error_r);

/* ============================================================== records.c */

/* Keys: message = mailbox id NUL-padded to 32 bytes + msg id (8 bytes BE);
 * chunk = message key + chunk number (4 bytes BE). */
#define MG_MSG_KEY   40
#define MG_CHUNK_KEY 44

void mg_rec_msg_key(uint8_t key[MG_MSG_KEY], const char *mailbox_id,
                    uint64_t msg_id);

/** Every mg_rec_* function returns MG_OK, MG_DECLINED or MG_ERROR; behind
 * an MG_ERROR caused by LMDB or the system (map full, disk full, I/O) this
 * returns that code once (0 otherwise) and clears it. Thread-local: the
 * writer calls it after a failed apply to classify the failure. */
int mg_rec_take_rc(void);

/** MG_DECLINED: no such mailbox. */
int mg_rec_mailbox_get(struct mg_store *st, MDB_txn *txn, const char *id,
                       struct mg_mailbox *m, const char **error_r);
int mg_rec_mailbox_put(struct mg_store *st, MDB_txn *txn,
                       const struct mg_mailbox *m, const char **error_r);
/** Delete a mailbox record (the caller checked it is empty). */
int mg_rec_mailbox_del(struct mg_store *st, MDB_txn *txn, const char *id,
                       const char **error_r);
/** Every mailbox, sorted by id; free with mg_mailbox_clear each + free. */
int mg_rec_mailbox_list(struct mg_store *st, MDB_txn *txn,
                        struct mg_mailbox **v_r, size_t *n_r,
                        const char **error_r);

/** Reserve `n` message ids (persisted: never handed out twice, even across
 * processes and crashes). */
int mg_rec_msg_ids(struct mg_store *st, MDB_txn *txn, uint64_t n,
                   uint64_t *first_r, const char **error_r);
int mg_rec_msg_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                   uint64_t msg_id, const struct mg_msg_header *h,
                   const char **error_r);
/** MG_DECLINED: no such message. */
int mg_rec_msg_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                   uint64_t msg_id, struct mg_msg_header *h,
                   const char **error_r);
int mg_rec_chunk_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                     uint64_t msg_id, uint32_t n, const void *data, size_t len,
                     const char **error_r);
/** The chunk's bytes, valid until the transaction ends. */
int mg_rec_chunk_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                     uint64_t msg_id, uint32_t n, const void **data_r,
                     size_t *len_r, const char **error_r);
/** Write the header of a WRITING message as committed: HELD, or (publish)
 * VISIBLE and counted in its mailbox. */
int mg_rec_msg_commit(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                      uint64_t msg_id, const struct mg_msg_header *h,
                      bool publish, const char **error_r);
/** Make a WRITING or HELD message VISIBLE and count it in its mailbox. */
int mg_rec_msg_publish(struct mg_store *st, MDB_txn *txn,
                       const char *mailbox_id, uint64_t msg_id,
                       const char **error_r);
/** Before deleting many messages: start reading what the deletions will
 * read that store.drop_written_pages may have dropped from the cache
 * (nothing when it is off). */
void mg_rec_msg_prefetch(struct mg_store *st, MDB_txn *txn,
                         const char *mailbox_id, uint64_t msg_id);
/** Remove a message (any state) with its chunks; a VISIBLE one leaves the
 * mailbox counters. Deleted pages are reused by LMDB. */
int mg_rec_msg_delete(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                      uint64_t msg_id, const char **error_r);

/** One message as a listing shows it. */
struct mg_msg_ref {
    uint64_t id;
    uint64_t size;
    uint64_t received;
    uint8_t state;
};
/** The messages of a mailbox in id order (= arrival order); visible_only
 * leaves out WRITING and HELD ones. Free *v_r with free(). */
int mg_rec_msg_list(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                    bool visible_only, struct mg_msg_ref **v_r, size_t *n_r,
                    const char **error_r);
/** Received time of the oldest visible message; MG_DECLINED: none. */
int mg_rec_msg_oldest(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                      uint64_t *received_r, const char **error_r);

/** Proxy de-duplication: (mailbox, upstream, remote user, UIDL) → msg. */
int mg_rec_dedup_get(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                     const char *upstream, const char *user, const char *uidl,
                     uint64_t *msg_id_r, const char **error_r);
int mg_rec_dedup_put(struct mg_store *st, MDB_txn *txn, const char *mailbox_id,
                     const char *upstream, const char *user, const char *uidl,
                     uint64_t msg_id, const char **error_r);

/** Settings, console accounts and sessions, certificates, ACME state: a
 * key-value table with namespaced keys ("setting/…", "account/…"). */
int mg_rec_kv_get(struct mg_store *st, MDB_txn *txn, const char *key,
                  struct mg_buf *value, const char **error_r);
int mg_rec_kv_put(struct mg_store *st, MDB_txn *txn, const char *key,
                  const void *value, size_t len, const char **error_r);
int mg_rec_kv_del(struct mg_store *st, MDB_txn *txn, const char *key,
                  const char **error_r);

/* ============================================================= pagedrop.c */

/** The chunk keys a batch wrote, to drop their page-cache pages once the
 * batch is durable (writer thread only). */
struct mg_pagedrop;

struct mg_pagedrop *mg_pagedrop_new(void);
void mg_pagedrop_free(struct mg_pagedrop *d);
/** Remember a chunk key the open batch wrote, with its value's length
 * (only whole chunks are kept: smaller ones stay cached). */
void mg_pagedrop_note(struct mg_pagedrop *d, const uint8_t key[MG_CHUNK_KEY],
                      size_t len);
/** Forget the noted keys (the batch failed). */
void mg_pagedrop_clear(struct mg_pagedrop *d);
/** The environment was reopened: forget the keys and its mapping. */
void mg_pagedrop_env_changed(struct mg_pagedrop *d);
/** After a durable commit: drop the cached pages of the noted chunks
 * that are whole (their overflow pages, nothing else) and forget the
 * keys. Returns the bytes advised away. */
size_t mg_pagedrop_run(struct mg_pagedrop *d, MDB_env *env, MDB_dbi chunk);

/** Before deleting a chunk value whose pages may have been dropped: start
 * reading the first page of its overflow run, which LMDB reads to free
 * the run (asynchronous, so that a deletion of many messages waits for
 * their reads side by side, not one after the other). */
void mg_pagedrop_prefetch(struct mg_pagedrop *d, MDB_env *env,
                          const void *value, size_t len);

/** records.c: a chunk was put in the writer's batch (nothing when the
 * setting is off or the caller is not the writer thread). */
void mg_store_chunk_written(struct mg_store *st,
                            const uint8_t key[MG_CHUNK_KEY], size_t len);
/** Whether store.drop_written_pages is on (for the writer). */
bool mg_store_drops_pages(const struct mg_store *st);
/** records.c: a chunk value is about to be deleted by the writer
 * (mg_pagedrop_prefetch when the setting is on). */
void mg_store_chunk_deleting(struct mg_store *st, const void *value,
                             size_t len);

/* ============================================================== message.c */

/** The UIDL of a message: epoch and id, 1–70 printable characters. */
void mg_msg_uidl(const struct mg_store *st, uint64_t msg_id, char out[40]);

struct mg_store_writer;

/** Completion of a writer step, on the writer thread (see op.complete). */
typedef void (*mg_store_writer_fn)(struct mg_store_writer *w, int status,
                                   bool temporary, const char *error,
                                   void *arg);

/**
 * Start one message to `n` mailboxes (checked to exist and be active by
 * the caller). Reserves the ids (one write op: blocks the calling thread
 * briefly — call it off the loop, or use the async form below).
 */
struct mg_store_writer *mg_store_writer_begin(struct mg_store *st,
                                              const char *const *mailbox_ids,
                                              size_t n,
                                              const struct mg_envelope *env,
                                              const char **error_r);
/** The same with ids the caller reserved ahead (mg_rec_msg_ids), so
 * that starting a message never waits for the disk (the daemon). */
struct mg_store_writer *
mg_store_writer_begin_ids(struct mg_store *st, const char *const *mailbox_ids,
                          size_t n, const uint64_t *ids,
                          const struct mg_envelope *env, const char **error_r);
/** Ids of the copies (valid for the writer's life). */
const uint64_t *mg_store_writer_ids(const struct mg_store_writer *w);
/**
 * Add message bytes: buffered to whole chunks, encrypted here (the
 * caller's thread), queued to the writer thread as WRITING data. Returns
 * MG_AGAIN when more than the queue limit is outstanding: call again after
 * `drained` ran (writer thread). MG_ERROR: the message failed (a chunk
 * could not be stored); commit will fail.
 */
int mg_store_writer_write(struct mg_store_writer *w, const void *data,
                          size_t len);
void mg_store_writer_on_drained(struct mg_store_writer *w,
                                void (*drained)(void *arg), void *arg);
/** Before the commit: the proxy's de-duplication entry (mailbox of copy
 * 0, upstream, remote user, upstream UIDL -> copy 0's id) is written in
 * the commit's own transaction, so that a message is never committed
 * without it. MG_ERROR when already set, committed, or an argument is
 * missing. */
int mg_store_writer_dedup(struct mg_store_writer *w, const char *upstream,
                          const char *user, const char *uidl);
/** Push the last chunk and commit every copy in one transaction: VISIBLE
 * (publish) or HELD. `done` runs once it is durable or failed. */
void mg_store_writer_commit(struct mg_store_writer *w, bool publish,
                            mg_store_writer_fn done, void *arg);
/** For a HELD message: make it VISIBLE, or remove it. */
void mg_store_writer_publish(struct mg_store_writer *w, mg_store_writer_fn done,
                             void *arg);
void mg_store_writer_discard(struct mg_store_writer *w, mg_store_writer_fn done,
                             void *arg);
/** The same as a lazy op (mg_store_submit_lazy): no commit of its own.
 * A crash before it is durable leaves the message HELD, which the next
 * start publishes flagged unconfirmed. */
void mg_store_writer_settle_lazy(struct mg_store_writer *w, bool publish,
                                 mg_store_writer_fn done, void *arg);
/** Forget the writer; a message neither committed nor discarded is
 * removed (asynchronously). */
void mg_store_writer_free(struct mg_store_writer *w);

struct mg_store_reader;

/** Open a message for reading with an unlocked key; reads and checks the
 * envelope chunk. MG_DECLINED: no such message; MG_ERROR: it fails
 * authentication. */
int mg_store_reader_open(struct mg_store *st, const struct mg_vault_key *key,
                         const char *mailbox_id, uint64_t msg_id,
                         struct mg_store_reader **r_r, const char **error_r);
const struct mg_envelope *
mg_store_reader_envelope(const struct mg_store_reader *r);
uint64_t mg_store_reader_size(const struct mg_store_reader *r);
/** The next plaintext piece (one chunk, read in its own short read
 * transaction). MG_DECLINED at the end; MG_ERROR: authentication failed
 * or the data is truncated — nothing unauthenticated is returned. */
int mg_store_reader_next(struct mg_store_reader *r, const void **data_r,
                         size_t *len_r, const char **error_r);
void mg_store_reader_close(struct mg_store_reader *r);

/* ============================================================ module_api.c */

struct mg_store_api;

/** Open the store of the daemon (<data_dir>/store) and the vault. */
int mg_store_api_open(const struct mg_settings *s, const char **error_r);
/** The store behind the table (tests: tests/fuzz/fuzz_session.c seeds
 * and resets its mailbox); NULL before mg_store_api_open. */
struct mg_store *mg_store_api_store(void);
/** The table for modules; NULL before mg_store_api_open. */
const struct mg_store_api *mg_store_api_get(void);
/** Finish queued writes and close (completions are posted to the loop). */
void mg_store_api_close(void);

#endif /* MG_STORE_INTERNAL_H */
