/*
 * store/vault.c -- mailbox key pairs, password wraps and message streams
 * (libsodium only).
 *
 * The vault performs operations and never hands key bytes out: unlocked
 * private keys, derived keys and the cached scheme 2 stream keys live in
 * sodium_malloc'd memory, per-message keys on the stack, and all of them
 * are wiped after use. Error texts are string literals because
 * derivations run on worker threads (mg_error's rotating buffers belong
 * to the loop thread).
 *
 * Messages are written with scheme 3 or 2 (store.h): the public-key
 * step, two X25519 operations, is done once per mailbox and sender-key
 * lifetime instead of once per message (crypto_box_seal in scheme 1,
 * which is still read); scheme 3 encrypts the chunks with AES-256-GCM
 * (vault_aes.c) where the CPU has AES instructions, scheme 2 with
 * libsodium's secretstream. doc/security.md says what the cached key
 * exposes and why scheme 3 is built as it is.
 */
#include "config.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "store.h"
#include "vault_aes.h"

/* the header's sizes are libsodium's */
_Static_assert(MG_VAULT_PK_BYTES == crypto_box_PUBLICKEYBYTES, "pk size");
_Static_assert(crypto_box_SECRETKEYBYTES == 32, "sk size");
_Static_assert(MG_VAULT_SEALED_KEY ==
                   crypto_box_SEALBYTES +
                       crypto_secretstream_xchacha20poly1305_KEYBYTES,
               "sealed key size");
_Static_assert(MG_VAULT_HEADER ==
                   crypto_secretstream_xchacha20poly1305_HEADERBYTES,
               "stream header size");
_Static_assert(MG_VAULT_ABYTES == crypto_secretstream_xchacha20poly1305_ABYTES,
               "chunk overhead");
_Static_assert(MG_VAULT_SALT == crypto_pwhash_SALTBYTES, "salt size");
_Static_assert(MG_VAULT_NONCE == crypto_secretbox_NONCEBYTES, "nonce size");
_Static_assert(MG_VAULT_WRAPPED ==
                   crypto_secretbox_MACBYTES + crypto_box_SECRETKEYBYTES,
               "wrapped key size");
_Static_assert(crypto_secretbox_KEYBYTES == 32, "wrap key size");

/* Limits beyond these are not parameters anybody chose: a corrupt record
 * must not make us spin for hours or allocate the machine away. */
#define VAULT_OPSLIMIT_MAX 64
#define VAULT_MEMLIMIT_MAX (UINT64_C(4) << 30)

/* associated data: mailbox id, NUL, message id (8 bytes big-endian) */
#define VAULT_AD_MAX (MG_MAILBOX_ID_MAX + 1 + 8)

/* Scheme 2 stream keys a reader derived, by sender public key E: a POP3
 * session reading the messages of one minute derives once. Sender keys
 * change in arrival order, so replacing the oldest entry is enough. */
#define VAULT_RCACHE 16

struct vault_rcache {
    pthread_mutex_t lock;
    unsigned n, next; /* entries in use, the one replaced next */
    uint8_t epk[VAULT_RCACHE][MG_VAULT_PK_BYTES];
    uint8_t key[VAULT_RCACHE][crypto_secretstream_xchacha20poly1305_KEYBYTES];
};

/* Read-only once unlocked; the cache (read-write) is its own allocation. */
struct mg_vault_key {
    uint8_t sk[crypto_box_SECRETKEYBYTES];
    uint8_t pk[MG_VAULT_PK_BYTES];
    struct vault_rcache *rc;
};

/* Scheme 3 keeps its key schedule in `gcm` (OpenSSL's memory, cleansed
 * when freed) and the message key only while the context is made; the
 * AD has room for its flags byte. */
struct mg_vault_enc {
    crypto_secretstream_xchacha20poly1305_state st; /* schemes 1, 2 */
    EVP_CIPHER_CTX *gcm;                            /* scheme 3 */
    uint64_t chunk;                                 /* scheme 3: next */
    uint8_t mkey[MG_VAULT_AES_KEYBYTES];            /* scheme 3, at begin */
    uint8_t ad[VAULT_AD_MAX + 1];
    size_t adlen;
};

struct mg_vault_dec {
    crypto_secretstream_xchacha20poly1305_state st;
    EVP_CIPHER_CTX *gcm;
    uint64_t chunk;
    uint8_t mkey[MG_VAULT_AES_KEYBYTES];
    uint8_t ad[VAULT_AD_MAX + 1];
    size_t adlen;
    bool finished; /* the FINAL chunk was pulled */
    bool failed;   /* a chunk failed: the stream is dead */
};

/* The derivation cap: a counting semaphore. Each Argon2id run takes
 * memlimit bytes and a core; a burst of logins must queue, not swap. */
static pthread_mutex_t vault_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t vault_cond = PTHREAD_COND_INITIALIZER;
static unsigned vault_max = 1;
static unsigned vault_running;

int
mg_vault_init(unsigned max_derivations, const char **error_r)
{
    if (sodium_init() < 0) {
        *error_r = "libsodium cannot be initialised";
        return MG_ERROR;
    }
    pthread_mutex_lock(&vault_lock);
    vault_max = max_derivations > 0 ? max_derivations : 1;
    pthread_cond_broadcast(&vault_cond);
    pthread_mutex_unlock(&vault_lock);
    return MG_OK;
}

void
mg_vault_default_limits(uint64_t *opslimit, uint64_t *memlimit)
{
#ifdef MG_FUZZ_KDF_MIN
    /* only in tests/fuzz/fuzz_session, which compiles the store itself:
     * a failed login (the dummy key) must not cost 64 MiB of Argon2id
     * per fuzz input */
    *opslimit = crypto_pwhash_OPSLIMIT_MIN;
    *memlimit = crypto_pwhash_MEMLIMIT_MIN;
#else
    *opslimit = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    *memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
#endif
}

/*
 * 31 characters: a-z and 2-9 without 0/o, 1/l/i. 7 groups of 4 = 28
 * characters, log2(31) * 28 = 138.7 bits of entropy (≥ 128, so Argon2id
 * INTERACTIVE limits suffice); 34 characters with the dashes.
 */
static const char vault_alphabet[] = "23456789abcdefghjkmnpqrstuvwxyz";
#define VAULT_PW_GROUPS 7
#define VAULT_PW_GROUP  4
_Static_assert(VAULT_PW_GROUPS *(VAULT_PW_GROUP + 1) <= MG_VAULT_PASSWORD_MAX,
               "password buffer");

void
mg_vault_password_new(char out[MG_VAULT_PASSWORD_MAX])
{
    size_t n = 0;

    for (unsigned g = 0; g < VAULT_PW_GROUPS; g++) {
        if (g > 0)
            out[n++] = '-';
        for (unsigned i = 0; i < VAULT_PW_GROUP; i++)
            out[n++] = vault_alphabet[randombytes_uniform(
                (uint32_t)(sizeof(vault_alphabet) - 1))];
    }
    out[n] = '\0';
}

static bool
vault_limits_sane(uint64_t opslimit, uint64_t memlimit)
{
    return opslimit >= crypto_pwhash_OPSLIMIT_MIN &&
           opslimit <= VAULT_OPSLIMIT_MAX &&
           memlimit >= crypto_pwhash_MEMLIMIT_MIN &&
           memlimit <= VAULT_MEMLIMIT_MAX && memlimit <= SIZE_MAX;
}

/* Argon2id under the derivation cap; 0 or -1 (out of memory) */
static int
vault_derive(uint8_t key[crypto_secretbox_KEYBYTES], const char *password,
             const uint8_t salt[MG_VAULT_SALT], uint64_t opslimit,
             uint64_t memlimit)
{
    int rc;

    pthread_mutex_lock(&vault_lock);
    while (vault_running >= vault_max)
        pthread_cond_wait(&vault_cond, &vault_lock);
    vault_running++;
    pthread_mutex_unlock(&vault_lock);

    rc = crypto_pwhash(key, crypto_secretbox_KEYBYTES, password,
                       strlen(password), salt, opslimit, (size_t)memlimit,
                       crypto_pwhash_ALG_ARGON2ID13);

    pthread_mutex_lock(&vault_lock);
    vault_running--;
    pthread_cond_signal(&vault_cond);
    pthread_mutex_unlock(&vault_lock);
    return rc;
}

int
mg_vault_keys_new(const char *password, uint64_t opslimit, uint64_t memlimit,
                  uint8_t pk[MG_VAULT_PK_BYTES], struct mg_vault_wrap *wrap,
                  const char **error_r)
{
    uint8_t *sk, *key;
    int rc = MG_ERROR;

    memset(wrap, 0, sizeof(*wrap));
    if (!vault_limits_sane(opslimit, memlimit)) {
        *error_r = "invalid Argon2id limits";
        return MG_ERROR;
    }
    sk = sodium_malloc(crypto_box_SECRETKEYBYTES);
    key = sodium_malloc(crypto_secretbox_KEYBYTES);
    if (sk == NULL || key == NULL) {
        *error_r = "out of secure memory";
        goto out;
    }
    crypto_box_keypair(pk, sk);
    wrap->kind = MG_WRAP_PASSWORD;
    wrap->alg = MG_WRAP_ALG_ARGON2ID_SECRETBOX;
    wrap->opslimit = opslimit;
    wrap->memlimit = memlimit;
    randombytes_buf(wrap->salt, sizeof(wrap->salt));
    randombytes_buf(wrap->nonce, sizeof(wrap->nonce));
    if (vault_derive(key, password, wrap->salt, opslimit, memlimit) != 0) {
        *error_r = "Argon2id key derivation failed (out of memory?)";
        memset(wrap, 0, sizeof(*wrap));
        goto out;
    }
    crypto_secretbox_easy(wrap->wrapped, sk, crypto_box_SECRETKEYBYTES,
                          wrap->nonce, key);
    rc = MG_OK;
out:
    /* sodium_free wipes before unmapping; NULL is accepted */
    sodium_free(key);
    sodium_free(sk);
    return rc;
}

int
mg_vault_unlock(const struct mg_vault_wrap *wrap,
                const uint8_t pk[MG_VAULT_PK_BYTES], const char *password,
                struct mg_vault_key **key_r, const char **error_r)
{
    uint8_t check[MG_VAULT_PK_BYTES];
    struct mg_vault_key *k;
    uint8_t *key;
    int rc = MG_ERROR;

    *key_r = NULL;
    /* a recovery wrap (later) is a passphrase through the same algorithm */
    if ((wrap->kind != MG_WRAP_PASSWORD && wrap->kind != MG_WRAP_RECOVERY) ||
        wrap->alg != MG_WRAP_ALG_ARGON2ID_SECRETBOX) {
        *error_r = "corrupt wrap: unknown kind or algorithm";
        return MG_ERROR;
    }
    if (!vault_limits_sane(wrap->opslimit, wrap->memlimit)) {
        *error_r = "corrupt wrap: absurd Argon2id limits";
        return MG_ERROR;
    }
    key = sodium_malloc(crypto_secretbox_KEYBYTES);
    k = sodium_malloc(sizeof(*k));
    if (key == NULL || k == NULL) {
        *error_r = "out of secure memory";
        goto out;
    }
    if (vault_derive(key, password, wrap->salt, wrap->opslimit,
                     wrap->memlimit) != 0) {
        *error_r = "Argon2id key derivation failed (out of memory?)";
        goto out;
    }
    if (crypto_secretbox_open_easy(k->sk, wrap->wrapped, MG_VAULT_WRAPPED,
                                   wrap->nonce, key) != 0) {
        *error_r = "wrong password";
        rc = MG_DECLINED;
        goto out;
    }
    /* a wrap copied from another mailbox opens but is not this key */
    if (crypto_scalarmult_base(check, k->sk) != 0 ||
        sodium_memcmp(check, pk, MG_VAULT_PK_BYTES) != 0) {
        *error_r = "wrong password (the key does not belong to this mailbox)";
        rc = MG_DECLINED;
        goto out;
    }
    memcpy(k->pk, pk, MG_VAULT_PK_BYTES);
    k->rc = mg_vault_secure_alloc(sizeof(*k->rc));
    k->rc->n = k->rc->next = 0;
    pthread_mutex_init(&k->rc->lock, NULL);
    sodium_mprotect_readonly(k);
    *key_r = k;
    k = NULL;
    rc = MG_OK;
out:
    sodium_free(k);
    sodium_free(key);
    return rc;
}

void
mg_vault_key_free(struct mg_vault_key *key)
{
    if (key == NULL)
        return;
    if (key->rc != NULL) {
        pthread_mutex_destroy(&key->rc->lock);
        sodium_free(key->rc); /* wipes the cached stream keys */
    }
    sodium_free(key);
}

/* The chunk AD. Mailbox ids are validated long before they get here, so
 * an overlong one is a programming error. */
static size_t
vault_ad(uint8_t ad[VAULT_AD_MAX], const char *mailbox_id, uint64_t msg_id)
{
    size_t n = strlen(mailbox_id);

    if (n > MG_MAILBOX_ID_MAX)
        mg_fatalx("vault: mailbox id of %zu characters", n);
    memcpy(ad, mailbox_id, n);
    ad[n++] = 0;
    for (int i = 7; i >= 0; i--)
        ad[n++] = (uint8_t)(msg_id >> (i * 8));
    return n;
}

/*
 * Stream states hold key material, so they live in sodium_malloc memory
 * (guard pages, locked). Mapping and unmapping that for every message
 * costs mprotect/munmap calls and TLB shootdowns across threads, which
 * dominated the store's throughput: states are wiped and kept in a pool.
 */
#define VAULT_POOL_MAX 256
#define VAULT_STATE_SIZE                                       \
    (sizeof(struct mg_vault_enc) > sizeof(struct mg_vault_dec) \
         ? sizeof(struct mg_vault_enc)                         \
         : sizeof(struct mg_vault_dec))

static pthread_mutex_t vault_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static void *vault_pool[VAULT_POOL_MAX];
static size_t vault_pool_n;

static void *
vault_state_get(void)
{
    void *p = NULL;

    pthread_mutex_lock(&vault_pool_lock);
    if (vault_pool_n > 0)
        p = vault_pool[--vault_pool_n];
    pthread_mutex_unlock(&vault_pool_lock);
    return p != NULL ? p : mg_vault_secure_alloc(VAULT_STATE_SIZE);
}

static void
vault_state_put(void *p)
{
    if (p == NULL)
        return;
    sodium_memzero(p, VAULT_STATE_SIZE);
    pthread_mutex_lock(&vault_pool_lock);
    if (vault_pool_n < VAULT_POOL_MAX) {
        vault_pool[vault_pool_n++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&vault_pool_lock);
    sodium_free(p); /* NULL when pooled */
}

void *
mg_vault_secure_alloc(size_t n)
{
    void *p = sodium_malloc(n);

    if (p == NULL)
        mg_fatalx("vault: out of secure memory (%zu bytes)", n);
    return p;
}

/* ------------------------------------------------------- scheme 2 keys */

/*
 * The stream key of scheme 2, from either side of the exchange: the
 * writer passes (e, pk), the reader (sk, E). Never the raw X25519 output:
 * BLAKE2b over a label, the shared point and both public keys (as
 * crypto_kx does), so the key is bound to the pair of keys it was made
 * for. Fails on a low-order point (an all-zero shared secret).
 */
static const char vault_v2_label[] = "mailgate vault v2 stream key";

static int
vault_v2_key(uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES],
             const uint8_t secret[crypto_box_SECRETKEYBYTES],
             const uint8_t point[MG_VAULT_PK_BYTES],
             const uint8_t epk[MG_VAULT_PK_BYTES],
             const uint8_t pk[MG_VAULT_PK_BYTES])
{
    uint8_t shared[crypto_scalarmult_BYTES];
    crypto_generichash_state h;

    if (crypto_scalarmult(shared, secret, point) != 0) {
        sodium_memzero(shared, sizeof(shared));
        return -1;
    }
    crypto_generichash_init(&h, NULL, 0,
                            crypto_secretstream_xchacha20poly1305_KEYBYTES);
    crypto_generichash_update(&h, (const uint8_t *)vault_v2_label,
                              sizeof(vault_v2_label) - 1);
    crypto_generichash_update(&h, shared, sizeof(shared));
    crypto_generichash_update(&h, epk, MG_VAULT_PK_BYTES);
    crypto_generichash_update(&h, pk, MG_VAULT_PK_BYTES);
    crypto_generichash_final(&h, key,
                             crypto_secretstream_xchacha20poly1305_KEYBYTES);
    sodium_memzero(shared, sizeof(shared));
    sodium_memzero(&h, sizeof(h));
    return 0;
}

/* A new sender key pair for pk: E and the stream key; e never outlives
 * this call. -1 when pk is unusable. */
static int
vault_sender_make(const uint8_t pk[MG_VAULT_PK_BYTES],
                  uint8_t epk[MG_VAULT_PK_BYTES],
                  uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES])
{
    uint8_t e[crypto_box_SECRETKEYBYTES];
    int rc;

    crypto_box_keypair(epk, e);
    rc = vault_v2_key(key, e, pk, epk, pk);
    sodium_memzero(e, sizeof(e));
    return rc;
}

/*
 * The writer's cache: one sender key per mailbox public key, found by a
 * hash of pk (public keys are uniformly random), least recently used
 * evicted when full. What it caches is the derived stream key (the
 * secret e is wiped as soon as that is made): in sodium_malloc memory,
 * wiped when replaced, evicted and at free. E, pk, ages and the links
 * are not secret and live in ordinary memory.
 */
struct vault_slot {
    uint8_t pk[MG_VAULT_PK_BYTES];  /* the mailbox */
    uint8_t epk[MG_VAULT_PK_BYTES]; /* its sender public key E */
    uint64_t born_ms;               /* monotonic */
    uint32_t uses;                  /* messages encrypted with it */
    int32_t hnext;                  /* hash chain */
    int32_t prev, next;             /* LRU list, head = most recent */
};

struct mg_vault_senders {
    pthread_mutex_t lock;
    uint64_t lifetime_ms; /* 0: nothing cached */
    uint32_t max_uses;
    uint32_t cap, n;
    struct vault_slot *slot;
    uint8_t (*key)[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    int32_t *bucket;
    uint32_t nbucket; /* a power of two */
    int32_t head, tail;
};

static uint64_t
vault_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct mg_vault_senders *
mg_vault_senders_new(unsigned lifetime, uint32_t max_messages,
                     unsigned max_mailboxes)
{
    struct mg_vault_senders *s = mg_xcalloc(1, sizeof(*s));

    pthread_mutex_init(&s->lock, NULL);
    s->lifetime_ms = (uint64_t)lifetime * 1000;
    s->max_uses = max_messages > 0 ? max_messages : 1;
    s->cap = max_mailboxes > 0 ? max_mailboxes : 1;
    s->head = s->tail = -1;
    if (s->lifetime_ms == 0)
        return s;
    s->slot = mg_xcalloc(s->cap, sizeof(*s->slot));
    s->key = mg_vault_secure_alloc(s->cap * sizeof(*s->key));
    for (s->nbucket = 1; s->nbucket < 2 * s->cap; s->nbucket *= 2)
        ;
    s->bucket = mg_xcalloc(s->nbucket, sizeof(*s->bucket));
    for (uint32_t i = 0; i < s->nbucket; i++)
        s->bucket[i] = -1;
    return s;
}

void
mg_vault_senders_free(struct mg_vault_senders *s)
{
    if (s == NULL)
        return;
    sodium_free(s->key); /* wipes every cached key; NULL is accepted */
    free(s->slot);
    free(s->bucket);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static uint32_t
vault_bucket(const struct mg_vault_senders *s,
             const uint8_t pk[MG_VAULT_PK_BYTES])
{
    uint32_t h;

    memcpy(&h, pk, sizeof(h));
    return h & (s->nbucket - 1);
}

static int32_t
vault_slot_find(const struct mg_vault_senders *s,
                const uint8_t pk[MG_VAULT_PK_BYTES])
{
    int32_t i;

    for (i = s->bucket[vault_bucket(s, pk)]; i >= 0; i = s->slot[i].hnext)
        if (memcmp(s->slot[i].pk, pk, MG_VAULT_PK_BYTES) == 0)
            return i;
    return -1;
}

static void
vault_lru_unlink(struct mg_vault_senders *s, int32_t i)
{
    struct vault_slot *v = &s->slot[i];

    if (v->prev >= 0)
        s->slot[v->prev].next = v->next;
    else
        s->head = v->next;
    if (v->next >= 0)
        s->slot[v->next].prev = v->prev;
    else
        s->tail = v->prev;
}

static void
vault_lru_front(struct mg_vault_senders *s, int32_t i)
{
    s->slot[i].prev = -1;
    s->slot[i].next = s->head;
    if (s->head >= 0)
        s->slot[s->head].prev = i;
    s->head = i;
    if (s->tail < 0)
        s->tail = i;
}

static void
vault_hash_unlink(struct mg_vault_senders *s, int32_t i)
{
    int32_t *p = &s->bucket[vault_bucket(s, s->slot[i].pk)];

    while (*p != i)
        p = &s->slot[*p].hnext;
    *p = s->slot[i].hnext;
}

static bool
vault_slot_fresh(const struct mg_vault_senders *s, int32_t i, uint64_t now)
{
    return now - s->slot[i].born_ms < s->lifetime_ms &&
           s->slot[i].uses < s->max_uses;
}

/* Use slot i for one message: its E and stream key out, counted. */
static void
vault_slot_use(struct mg_vault_senders *s, int32_t i,
               uint8_t epk[MG_VAULT_PK_BYTES],
               uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES])
{
    memcpy(epk, s->slot[i].epk, MG_VAULT_PK_BYTES);
    memcpy(key, s->key[i], sizeof(s->key[i]));
    s->slot[i].uses++;
    if (s->head != i) {
        vault_lru_unlink(s, i);
        vault_lru_front(s, i);
    }
}

/* A new sender key for pk replaces its old one, or takes a free slot, or
 * the least recently used mailbox's. */
static int32_t
vault_slot_install(
    struct mg_vault_senders *s, const uint8_t pk[MG_VAULT_PK_BYTES],
    const uint8_t epk[MG_VAULT_PK_BYTES],
    const uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES],
    uint64_t now)
{
    int32_t i = vault_slot_find(s, pk);

    if (i < 0) {
        if (s->n < s->cap) {
            i = (int32_t)s->n++;
        } else {
            i = s->tail;
            vault_hash_unlink(s, i);
            vault_lru_unlink(s, i);
        }
        memcpy(s->slot[i].pk, pk, MG_VAULT_PK_BYTES);
        s->slot[i].hnext = s->bucket[vault_bucket(s, pk)];
        s->bucket[vault_bucket(s, pk)] = i;
        vault_lru_front(s, i);
    }
    sodium_memzero(s->key[i], sizeof(s->key[i]));
    memcpy(s->key[i], key, sizeof(s->key[i]));
    memcpy(s->slot[i].epk, epk, MG_VAULT_PK_BYTES);
    s->slot[i].born_ms = now;
    s->slot[i].uses = 0;
    return i;
}

/*
 * The sender key for one message to pk. A cache hit is a lookup under
 * the lock; a miss makes the key pair outside it (two X25519 operations:
 * other mailboxes' writers need not wait), then installs it unless
 * another thread installed a fresh one meanwhile (then that one is used
 * and ours wiped).
 */
static int
vault_sender_get(struct mg_vault_senders *s,
                 const uint8_t pk[MG_VAULT_PK_BYTES],
                 uint8_t epk[MG_VAULT_PK_BYTES],
                 uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES])
{
    uint8_t nepk[MG_VAULT_PK_BYTES];
    uint8_t nkey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    uint64_t now;
    int32_t i;

    if (s == NULL || s->lifetime_ms == 0)
        return vault_sender_make(pk, epk, key);
    now = vault_now_ms();
    pthread_mutex_lock(&s->lock);
    i = vault_slot_find(s, pk);
    if (i >= 0 && vault_slot_fresh(s, i, now)) {
        vault_slot_use(s, i, epk, key);
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    pthread_mutex_unlock(&s->lock);

    if (vault_sender_make(pk, nepk, nkey) != 0)
        return -1;
    now = vault_now_ms();
    pthread_mutex_lock(&s->lock);
    i = vault_slot_find(s, pk);
    if (i < 0 || !vault_slot_fresh(s, i, now))
        i = vault_slot_install(s, pk, nepk, nkey, now);
    vault_slot_use(s, i, epk, key);
    pthread_mutex_unlock(&s->lock);
    sodium_memzero(nkey, sizeof(nkey));
    return 0;
}

/* The reader's side: the stream key of sender key E, derived once per E
 * and unlocked key. -1 when E is not a usable point. */
static int
vault_reader_key(const struct mg_vault_key *k,
                 const uint8_t epk[MG_VAULT_PK_BYTES],
                 uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES])
{
    struct vault_rcache *rc = k->rc;
    unsigned i;

    pthread_mutex_lock(&rc->lock);
    for (i = 0; i < rc->n; i++) {
        if (memcmp(rc->epk[i], epk, MG_VAULT_PK_BYTES) == 0) {
            memcpy(key, rc->key[i], sizeof(rc->key[i]));
            pthread_mutex_unlock(&rc->lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&rc->lock);

    if (vault_v2_key(key, k->sk, epk, epk, k->pk) != 0)
        return -1;
    pthread_mutex_lock(&rc->lock);
    i = rc->next;
    rc->next = (rc->next + 1) % VAULT_RCACHE;
    if (rc->n < VAULT_RCACHE)
        rc->n++;
    /* overwriting wipes the oldest entry's key */
    memcpy(rc->epk[i], epk, MG_VAULT_PK_BYTES);
    memcpy(rc->key[i], key, sizeof(rc->key[i]));
    pthread_mutex_unlock(&rc->lock);
    return 0;
}

/* ------------------------------------------------------- message streams */

/*
 * Scheme 3's message key: BLAKE2b-256 keyed with the stream key over a
 * label and the 24 random bytes stored as the message's header. One key
 * per message lets the chunk nonce be the chunk number; the label keeps
 * it apart from anything else made from the stream key.
 */
static const char vault_v3_label[] = "mailgate vault v3 message key";

static void
vault_v3_key(uint8_t mkey[MG_VAULT_AES_KEYBYTES],
             const uint8_t skey[crypto_secretstream_xchacha20poly1305_KEYBYTES],
             const uint8_t header[MG_VAULT_HEADER])
{
    crypto_generichash_state h;

    crypto_generichash_init(&h, skey,
                            crypto_secretstream_xchacha20poly1305_KEYBYTES,
                            MG_VAULT_AES_KEYBYTES);
    crypto_generichash_update(&h, (const uint8_t *)vault_v3_label,
                              sizeof(vault_v3_label) - 1);
    crypto_generichash_update(&h, header, MG_VAULT_HEADER);
    crypto_generichash_final(&h, mkey, MG_VAULT_AES_KEYBYTES);
    sodium_memzero(&h, sizeof(h));
}

uint8_t
mg_vault_alg_auto(void)
{
    return mg_vault_aes_usable() && mg_vault_aes_hardware() ? MG_VAULT_ALG_V3
                                                            : MG_VAULT_ALG_V2;
}

bool
mg_vault_alg_writable(uint8_t alg)
{
    return alg == MG_VAULT_ALG_V2 ||
           (alg == MG_VAULT_ALG_V3 && mg_vault_aes_usable());
}

const char *
mg_vault_alg_cipher(uint8_t alg)
{
    switch (alg) {
    case MG_VAULT_ALG_V1:
    case MG_VAULT_ALG_V2:
        return "xchacha20poly1305";
    case MG_VAULT_ALG_V3:
        return "aes256gcm";
    default:
        return "unknown";
    }
}

/*
 * Schemes 2 and 3 per message: the stream key of the mailbox's current
 * sender key. Scheme 2 makes the message a secretstream under it (the
 * stream's init derives a per-message key itself: HChaCha20 of the key
 * and 128 random bits of the header; the state keeps only that). Scheme
 * 3 derives the message key from random header bytes (vault_v3_key) and
 * keys an AES-256-GCM context with it. Either way each message has a key
 * of its own and a small message pays no public-key operation. Returns
 * NULL only when pk is unusable.
 */
struct mg_vault_enc *
mg_vault_enc_begin(struct mg_vault_senders *s,
                   const uint8_t pk[MG_VAULT_PK_BYTES], uint8_t alg,
                   const char *mailbox_id, uint64_t msg_id,
                   uint8_t epk[MG_VAULT_PK_BYTES],
                   uint8_t header[MG_VAULT_HEADER])
{
    uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    struct mg_vault_enc *e;

    if (alg != MG_VAULT_ALG_V2 && alg != MG_VAULT_ALG_V3)
        mg_fatalx("vault: writing scheme %u", alg);
    if (vault_sender_get(s, pk, epk, key) != 0) {
        sodium_memzero(key, sizeof(key));
        return NULL;
    }
    e = vault_state_get();
    e->adlen = vault_ad(e->ad, mailbox_id, msg_id);
    e->gcm = NULL;
    e->chunk = 0;
    if (alg == MG_VAULT_ALG_V2) {
        crypto_secretstream_xchacha20poly1305_init_push(&e->st, header, key);
    } else {
        randombytes_buf(header, MG_VAULT_HEADER);
        vault_v3_key(e->mkey, key, header);
        e->gcm = mg_vault_aes_new(e->mkey, true);
        sodium_memzero(e->mkey, sizeof(e->mkey));
        /* the store checks mg_vault_alg_writable() at open */
        if (e->gcm == NULL)
            mg_fatalx("vault: AES-256-GCM is not available");
    }
    sodium_memzero(key, sizeof(key));
    return e;
}

/* Scheme 1. Returns NULL only when pk is not a usable public key
 * (crypto_box_seal refuses low-order points), i.e. a corrupt record. */
struct mg_vault_enc *
mg_vault_enc_begin_v1(const uint8_t pk[MG_VAULT_PK_BYTES],
                      const char *mailbox_id, uint64_t msg_id,
                      uint8_t sealed_key[MG_VAULT_SEALED_KEY],
                      uint8_t header[MG_VAULT_HEADER])
{
    uint8_t key[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    struct mg_vault_enc *e;

    e = vault_state_get();
    e->adlen = vault_ad(e->ad, mailbox_id, msg_id);
    e->gcm = NULL;
    e->chunk = 0;
    crypto_secretstream_xchacha20poly1305_keygen(key);
    if (crypto_box_seal(sealed_key, key, sizeof(key), pk) != 0) {
        sodium_memzero(key, sizeof(key));
        vault_state_put(e);
        return NULL;
    }
    crypto_secretstream_xchacha20poly1305_init_push(&e->st, header, key);
    sodium_memzero(key, sizeof(key));
    return e;
}

void
mg_vault_enc_push(struct mg_vault_enc *e, const void *in, size_t len,
                  bool final, uint8_t *out)
{
    if (len > MG_VAULT_CHUNK)
        mg_fatalx("vault: chunk of %zu bytes (max %d)", len, MG_VAULT_CHUNK);
    if (e->gcm != NULL) {
        mg_vault_aes_seal(e->gcm, e->chunk++, final ? MG_VAULT_AES_FINAL : 0,
                          e->ad, e->adlen, in, len, out);
        return;
    }
    crypto_secretstream_xchacha20poly1305_push(
        &e->st, out, NULL, in, len, e->ad, e->adlen,
        final ? crypto_secretstream_xchacha20poly1305_TAG_FINAL
              : crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
}

void
mg_vault_enc_free(struct mg_vault_enc *e)
{
    if (e == NULL)
        return;
    EVP_CIPHER_CTX_free(e->gcm); /* cleanses the key schedule */
    e->gcm = NULL;
    vault_state_put(e);
}

static void
vault_dec_put(struct mg_vault_dec *d)
{
    EVP_CIPHER_CTX_free(d->gcm);
    d->gcm = NULL;
    vault_state_put(d);
}

int
mg_vault_dec_begin(const struct mg_vault_key *key, const char *mailbox_id,
                   uint64_t msg_id, uint8_t alg,
                   const uint8_t sealed_key[MG_VAULT_SEALED_KEY],
                   const uint8_t epk[MG_VAULT_PK_BYTES],
                   const uint8_t header[MG_VAULT_HEADER],
                   struct mg_vault_dec **dec_r, const char **error_r)
{
    uint8_t mkey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    struct mg_vault_dec *d;

    *dec_r = NULL;
    if (strlen(mailbox_id) > MG_MAILBOX_ID_MAX) {
        *error_r = "invalid mailbox id";
        return MG_ERROR;
    }
    if (alg == MG_VAULT_ALG_V1 && sealed_key != NULL) {
        if (crypto_box_seal_open(mkey, sealed_key, MG_VAULT_SEALED_KEY, key->pk,
                                 key->sk) != 0) {
            sodium_memzero(mkey, sizeof(mkey));
            *error_r = "cannot open the message key";
            return MG_ERROR;
        }
    } else if ((alg == MG_VAULT_ALG_V2 || alg == MG_VAULT_ALG_V3) &&
               epk != NULL) {
        if (alg == MG_VAULT_ALG_V3 && !mg_vault_aes_usable()) {
            *error_r = "AES-256-GCM is not available in this OpenSSL";
            return MG_ERROR;
        }
        /* a wrong E gives a wrong key: the first chunk fails */
        if (vault_reader_key(key, epk, mkey) != 0) {
            sodium_memzero(mkey, sizeof(mkey));
            *error_r = "invalid sender key";
            return MG_ERROR;
        }
    } else {
        *error_r = "unknown encryption scheme";
        return MG_ERROR;
    }
    d = vault_state_get();
    d->adlen = vault_ad(d->ad, mailbox_id, msg_id);
    d->finished = false;
    d->failed = false;
    d->gcm = NULL;
    d->chunk = 0;
    if (alg == MG_VAULT_ALG_V3) {
        vault_v3_key(d->mkey, mkey, header);
        d->gcm = mg_vault_aes_new(d->mkey, false);
        sodium_memzero(d->mkey, sizeof(d->mkey));
        sodium_memzero(mkey, sizeof(mkey));
        if (d->gcm == NULL) {
            vault_dec_put(d);
            *error_r = "cannot set up AES-256-GCM";
            return MG_ERROR;
        }
        *dec_r = d;
        return MG_OK;
    }
    if (crypto_secretstream_xchacha20poly1305_init_pull(&d->st, header, mkey) !=
        0) {
        sodium_memzero(mkey, sizeof(mkey));
        vault_dec_put(d);
        *error_r = "invalid message stream header";
        return MG_ERROR;
    }
    sodium_memzero(mkey, sizeof(mkey));
    *dec_r = d;
    return MG_OK;
}

/* Scheme 3's chunk: its number is the nonce, so a chunk from another
 * position fails its tag, and one of another message its key. */
static int
vault_dec_pull_gcm(struct mg_vault_dec *d, const uint8_t *in, size_t len,
                   uint8_t *out, bool *final)
{
    uint8_t flags;

    if (mg_vault_aes_open(d->gcm, d->chunk, d->ad, d->adlen, in, len, out,
                          &flags) != 0)
        return -1;
    d->chunk++;
    *final = (flags & MG_VAULT_AES_FINAL) != 0;
    return 0;
}

/*
 * One chunk. Authentication covers the chunk, its position in the stream
 * and the AD (mailbox, message id), so flipped bits, swapped or reordered
 * chunks, and a message moved to another id or mailbox fail here. What
 * the stream cannot see by itself is its end: data after the FINAL chunk
 * and a stream cut before it. The caller (message.c) must treat *final as
 * the only valid end: a chunk after FINAL is refused here, and running
 * out of chunks without having seen *final is truncation.
 */
int
mg_vault_dec_pull(struct mg_vault_dec *d, const uint8_t *in, size_t len,
                  uint8_t *out, size_t *outlen, bool *final)
{
    unsigned long long n = 0;
    unsigned char tag = 0;
    bool last = false;

    *outlen = 0;
    *final = false;
    if (d->finished || d->failed || len < MG_VAULT_ABYTES ||
        len - MG_VAULT_ABYTES > MG_VAULT_CHUNK) {
        d->failed = true;
        return MG_ERROR;
    }
    if (d->gcm != NULL) {
        if (vault_dec_pull_gcm(d, in, len, out, &last) != 0)
            goto fail;
        n = len - MG_VAULT_ABYTES;
    } else {
        if (crypto_secretstream_xchacha20poly1305_pull(
                &d->st, out, &n, &tag, in, len, d->ad, d->adlen) != 0 ||
            (tag != crypto_secretstream_xchacha20poly1305_TAG_MESSAGE &&
             tag != crypto_secretstream_xchacha20poly1305_TAG_FINAL))
            goto fail;
        last = tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL;
    }
    *outlen = (size_t)n;
    if (last) {
        d->finished = true;
        *final = true;
    }
    return MG_OK;
fail:
    /* nothing unauthenticated may leave: wipe what pull may have written */
    sodium_memzero(out, len - MG_VAULT_ABYTES);
    d->failed = true;
    return MG_ERROR;
}

void
mg_vault_dec_free(struct mg_vault_dec *d)
{
    if (d != NULL)
        vault_dec_put(d);
}
