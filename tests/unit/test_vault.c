/* tests/unit/test_vault.c -- key wraps, passwords, message streams */
#include "config.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "store.h"

/* Fast Argon2id limits for tests that do not test the limits themselves */
#define T_OPS crypto_pwhash_OPSLIMIT_MIN
#define T_MEM crypto_pwhash_MEMLIMIT_MIN

#define T_PASSWORD "correct-horse-battery"
#define T_MAILBOX  "testbox01"

/* two mailboxes, the first unlocked */
static uint8_t t_pk[MG_VAULT_PK_BYTES], t_pk2[MG_VAULT_PK_BYTES];
static struct mg_vault_wrap t_wrap, t_wrap2;
static struct mg_vault_key *t_key, *t_key2;

static int
t_setup(void **state)
{
    const char *error = NULL;

    (void)state;
    if (mg_vault_init(1, &error) != MG_OK ||
        mg_vault_keys_new(T_PASSWORD, T_OPS, T_MEM, t_pk, &t_wrap, &error) !=
            MG_OK ||
        mg_vault_keys_new("other-password", T_OPS, T_MEM, t_pk2, &t_wrap2,
                          &error) != MG_OK ||
        mg_vault_unlock(&t_wrap, t_pk, T_PASSWORD, &t_key, &error) != MG_OK ||
        mg_vault_unlock(&t_wrap2, t_pk2, "other-password", &t_key2, &error) !=
            MG_OK)
        return -1;
    return 0;
}

static int
t_teardown(void **state)
{
    (void)state;
    mg_vault_key_free(t_key);
    mg_vault_key_free(t_key2);
    return 0;
}

static bool
t_all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* ------------------------------------------------------------ messages */

/* An encrypted message held in memory: chunk 0 is the envelope. */
struct t_msg {
    uint8_t sealed[MG_VAULT_SEALED_KEY];
    uint8_t header[MG_VAULT_HEADER];
    uint8_t **c;
    size_t *len;
    size_t n;
    uint8_t *plain; /* the body */
    size_t size;
};

static void
t_msg_add(struct t_msg *m, struct mg_vault_enc *e, const uint8_t *p, size_t len,
          bool final)
{
    m->c = realloc(m->c, (m->n + 1) * sizeof(*m->c));
    m->len = realloc(m->len, (m->n + 1) * sizeof(*m->len));
    assert_non_null(m->c);
    assert_non_null(m->len);
    m->c[m->n] = malloc(len + MG_VAULT_ABYTES);
    assert_non_null(m->c[m->n]);
    mg_vault_enc_push(e, p, len, final, m->c[m->n]);
    m->len[m->n++] = len + MG_VAULT_ABYTES;
}

/* Envelope chunk, then the body in whole chunks, FINAL on the last (an
 * empty body gets an empty FINAL chunk). */
static void
t_msg_make(struct t_msg *m, const uint8_t pk[MG_VAULT_PK_BYTES],
           const char *mailbox, uint64_t msg_id, size_t size)
{
    static const char env[] = "envelope: from <a@example.org> to <b@x.y>";
    struct mg_vault_enc *e;
    size_t off = 0;

    memset(m, 0, sizeof(*m));
    m->size = size;
    m->plain = malloc(size ? size : 1);
    assert_non_null(m->plain);
    randombytes_buf(m->plain, size);
    e = mg_vault_enc_begin(pk, mailbox, msg_id, m->sealed, m->header);
    assert_non_null(e);
    t_msg_add(m, e, (const uint8_t *)env, sizeof(env), false);
    do {
        size_t n = size - off < MG_VAULT_CHUNK ? size - off : MG_VAULT_CHUNK;

        t_msg_add(m, e, m->plain + off, n, off + n == size);
        off += n;
    } while (off < size);
    mg_vault_enc_free(e);
}

static void
t_msg_free(struct t_msg *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->c[i]);
    free(m->c);
    free(m->len);
    free(m->plain);
}

/* Decrypt chunks order[0..n) (or all in order when order is NULL); the
 * reassembled body must equal the original. Returns MG_OK when every
 * chunk authenticated and the last one was FINAL; MG_DECLINED when all
 * authenticated but FINAL never came (truncation as the caller sees it);
 * MG_ERROR at the first failing chunk, whose output must be wiped. */
static int
t_msg_read(const struct t_msg *m, const struct mg_vault_key *key,
           const char *mailbox, uint64_t msg_id, const size_t *order, size_t n)
{
    static uint8_t out[MG_VAULT_CHUNK];
    struct mg_vault_dec *d;
    const char *error = NULL;
    uint8_t *body = malloc(m->size + 1);
    size_t got = 0, outlen;
    bool final = false;
    int rc = MG_DECLINED;

    assert_non_null(body);
    if (mg_vault_dec_begin(key, mailbox, msg_id, m->sealed, m->header, &d,
                           &error) != MG_OK) {
        assert_non_null(error);
        free(body);
        return MG_ERROR;
    }
    if (order == NULL)
        n = m->n;
    for (size_t i = 0; i < n; i++) {
        size_t k = order != NULL ? order[i] : i;

        memset(out, 0xaa, sizeof(out));
        if (mg_vault_dec_pull(d, m->c[k], m->len[k], out, &outlen, &final) !=
            MG_OK) {
            /* never plaintext on failure (a chunk too short to hold a
             * tag is refused before anything is written) */
            if (m->len[k] >= MG_VAULT_ABYTES)
                assert_true(t_all_zero(out, m->len[k] - MG_VAULT_ABYTES));
            assert_false(final);
            rc = MG_ERROR;
            break;
        }
        assert_int_equal(outlen, m->len[k] - MG_VAULT_ABYTES);
        if (i == 0) {
            assert_memory_equal(out, "envelope: ", 10);
        } else {
            assert_true(got + outlen <= m->size);
            memcpy(body + got, out, outlen);
            got += outlen;
        }
        if (final) {
            assert_int_equal(i, n - 1);
            assert_int_equal(got, m->size);
            assert_memory_equal(body, m->plain, m->size);
            rc = MG_OK;
        }
    }
    mg_vault_dec_free(d);
    free(body);
    return rc;
}

static void
test_roundtrip_sizes(void **state)
{
    static const size_t sizes[] = {
        0,
        1,
        MG_VAULT_CHUNK - 1,
        MG_VAULT_CHUNK,
        MG_VAULT_CHUNK + 1,
        3 * MG_VAULT_CHUNK + 5,
    };

    (void)state;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct t_msg m;

        t_msg_make(&m, t_pk, T_MAILBOX, 1000 + i, sizes[i]);
        /* envelope + ceil(size / CHUNK) body chunks, at least one */
        assert_int_equal(
            m.n, 1 + (sizes[i] == 0
                          ? 1
                          : (sizes[i] + MG_VAULT_CHUNK - 1) / MG_VAULT_CHUNK));
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 1000 + i, NULL, 0),
                         MG_OK);
        t_msg_free(&m);
    }
}

static void
test_tamper(void **state)
{
    struct t_msg m, other;
    size_t order[8];
    uint8_t out[MG_VAULT_CHUNK];
    struct mg_vault_dec *d;
    const char *error = NULL;
    size_t outlen;
    bool final;

    (void)state;
    /* envelope + 3 body chunks */
    t_msg_make(&m, t_pk, T_MAILBOX, 42, 2 * MG_VAULT_CHUNK + 100);
    assert_int_equal(m.n, 4);
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_OK);

    /* a bit flip in a body chunk, in the envelope, in the tag */
    for (size_t k = 0; k < m.n; k++) {
        m.c[k][m.len[k] / 2] ^= 0x10;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.c[k][m.len[k] / 2] ^= 0x10;
        m.c[k][0] ^= 0x01;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.c[k][0] ^= 0x01;
    }
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_OK);

    /* the final chunk dropped: every chunk authenticates, no FINAL */
    for (size_t i = 0; i < 3; i++)
        order[i] = i;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, order, 3),
                     MG_DECLINED);

    /* bytes dropped from the end of a chunk, or all but a few */
    m.len[2] -= 1;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_ERROR);
    m.len[2] = MG_VAULT_ABYTES;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_ERROR);
    m.len[2] = 3;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_ERROR);
    m.len[2] = MG_VAULT_CHUNK + MG_VAULT_ABYTES;

    /* swapped body chunks; a chunk skipped; a chunk repeated */
    order[0] = 0, order[1] = 2, order[2] = 1, order[3] = 3;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, order, 4), MG_ERROR);
    order[0] = 0, order[1] = 1, order[2] = 3;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, order, 3), MG_ERROR);
    order[0] = 0, order[1] = 1, order[2] = 1, order[3] = 2;
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, order, 4), MG_ERROR);

    /* the message moved to another id or mailbox: the AD differs */
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 43, NULL, 0), MG_ERROR);
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42ull << 32, NULL, 0),
                     MG_ERROR);
    assert_int_equal(t_msg_read(&m, t_key, "testbox02", 42, NULL, 0), MG_ERROR);
    assert_int_equal(t_msg_read(&m, t_key, "testbox0", 42, NULL, 0), MG_ERROR);

    /* a chunk of another message (same mailbox, same position) */
    t_msg_make(&other, t_pk, T_MAILBOX, 43, 2 * MG_VAULT_CHUNK + 100);
    {
        uint8_t *c = m.c[2];

        m.c[2] = other.c[2];
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.c[2] = c;
    }

    /* the sealed key of another message opens, but not this stream */
    {
        uint8_t sealed[MG_VAULT_SEALED_KEY];

        memcpy(sealed, m.sealed, sizeof(sealed));
        memcpy(m.sealed, other.sealed, sizeof(sealed));
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        /* a corrupt sealed key does not open at all */
        memcpy(m.sealed, sealed, sizeof(sealed));
        m.sealed[5] ^= 0x80;
        assert_int_equal(mg_vault_dec_begin(t_key, T_MAILBOX, 42, m.sealed,
                                            m.header, &d, &error),
                         MG_ERROR);
        assert_null(d);
        assert_string_equal(error, "cannot open the message key");
        memcpy(m.sealed, sealed, sizeof(sealed));
    }

    /* another mailbox's key cannot open the message key */
    assert_int_equal(mg_vault_dec_begin(t_key2, T_MAILBOX, 42, m.sealed,
                                        m.header, &d, &error),
                     MG_ERROR);

    /* a chunk after FINAL is refused; so is anything after a failure */
    assert_int_equal(mg_vault_dec_begin(t_key, T_MAILBOX, 42, m.sealed,
                                        m.header, &d, &error),
                     MG_OK);
    for (size_t k = 0; k < m.n; k++)
        assert_int_equal(
            mg_vault_dec_pull(d, m.c[k], m.len[k], out, &outlen, &final),
            MG_OK);
    assert_true(final);
    memset(out, 0xaa, sizeof(out));
    assert_int_equal(
        mg_vault_dec_pull(d, m.c[3], m.len[3], out, &outlen, &final), MG_ERROR);
    assert_false(final);
    assert_int_equal(outlen, 0);
    mg_vault_dec_free(d);

    assert_int_equal(mg_vault_dec_begin(t_key, T_MAILBOX, 42, m.sealed,
                                        m.header, &d, &error),
                     MG_OK);
    assert_int_equal(
        mg_vault_dec_pull(d, m.c[1], m.len[1], out, &outlen, &final), MG_ERROR);
    assert_true(t_all_zero(out, m.len[1] - MG_VAULT_ABYTES));
    /* the right chunk does not revive a failed stream */
    assert_int_equal(
        mg_vault_dec_pull(d, m.c[0], m.len[0], out, &outlen, &final), MG_ERROR);
    mg_vault_dec_free(d);

    t_msg_free(&other);
    t_msg_free(&m);
}

/* The stored format, pinned with bare libsodium: the message key is a
 * sealed box to the mailbox pk, the chunks a secretstream whose AD is
 * mailbox id, NUL, message id as 8 bytes big-endian. */
static void
test_wire_format(void **state)
{
    static const uint8_t ad[] = {'b', 'o', 'x', 'f', 'o', 'r', 'm', 'a', 't',
                                 0,   1,   2,   3,   4,   5,   6,   7,   8};
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t sealed[MG_VAULT_SEALED_KEY], header[MG_VAULT_HEADER];
    uint8_t mkey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    uint8_t c[2][5 + MG_VAULT_ABYTES], out[5];
    crypto_secretstream_xchacha20poly1305_state st;
    struct mg_vault_enc *e;
    unsigned char tag;

    (void)state;
    crypto_box_keypair(pk, sk);
    e = mg_vault_enc_begin(pk, "boxformat", 0x0102030405060708ull, sealed,
                           header);
    assert_non_null(e);
    mg_vault_enc_push(e, "hello", 5, false, c[0]);
    mg_vault_enc_push(e, "world", 5, true, c[1]);
    mg_vault_enc_free(e);

    assert_int_equal(crypto_box_seal_open(mkey, sealed, sizeof(sealed), pk, sk),
                     0);
    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_init_pull(&st, header, mkey), 0);
    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_pull(
            &st, out, NULL, &tag, c[0], sizeof(c[0]), ad, sizeof(ad)),
        0);
    assert_memory_equal(out, "hello", 5);
    assert_int_equal(tag, crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_pull(
            &st, out, NULL, &tag, c[1], sizeof(c[1]), ad, sizeof(ad)),
        0);
    assert_memory_equal(out, "world", 5);
    assert_int_equal(tag, crypto_secretstream_xchacha20poly1305_TAG_FINAL);

    /* a low-order public key (a corrupt record) is refused, not used */
    memset(pk, 0, sizeof(pk));
    assert_null(mg_vault_enc_begin(pk, "boxformat", 1, sealed, header));
}

/* ------------------------------------------------------------ streaming */

#if defined(__SANITIZE_ADDRESS__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_SANITIZED 1
#endif
#endif

static long
t_maxrss_kib(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/*
 * 150 MB (not a multiple of the chunk size) through one stream in 64 KiB
 * pieces, decrypted as it goes: memory stays flat and both sides hash the
 * same. The crypto runs in libsodium (not instrumented), so this is fast
 * under ASan too; T_SANITIZED is only used to report the mode.
 */
static void
test_stream_150mb(void **state)
{
    const uint64_t total = 150000000;
    static uint8_t plain[MG_VAULT_CHUNK],
        cipher[MG_VAULT_CHUNK + MG_VAULT_ABYTES], out[MG_VAULT_CHUNK];
    uint8_t sealed[MG_VAULT_SEALED_KEY], header[MG_VAULT_HEADER];
    uint8_t seed[randombytes_SEEDBYTES] = {0};
    uint8_t h1[32], h2[32];
    crypto_generichash_state g1, g2;
    struct mg_vault_enc *e;
    struct mg_vault_dec *d;
    const char *error = NULL;
    long rss0 = t_maxrss_kib();
    uint64_t off = 0, got = 0;
    uint32_t n = 0;
    bool final = false;

    (void)state;
#ifdef T_SANITIZED
    print_message("(sanitized build: still 150 MB)\n");
#endif
    e = mg_vault_enc_begin(t_pk, T_MAILBOX, 7, sealed, header);
    assert_non_null(e);
    assert_int_equal(
        mg_vault_dec_begin(t_key, T_MAILBOX, 7, sealed, header, &d, &error),
        MG_OK);
    crypto_generichash_init(&g1, NULL, 0, sizeof(h1));
    crypto_generichash_init(&g2, NULL, 0, sizeof(h2));
    while (off < total) {
        size_t len = total - off < MG_VAULT_CHUNK ? (size_t)(total - off)
                                                  : MG_VAULT_CHUNK;
        size_t outlen;

        memcpy(seed, &n, sizeof(n));
        randombytes_buf_deterministic(plain, len, seed);
        crypto_generichash_update(&g1, plain, len);
        mg_vault_enc_push(e, plain, len, off + len == total, cipher);
        assert_int_equal(mg_vault_dec_pull(d, cipher, len + MG_VAULT_ABYTES,
                                           out, &outlen, &final),
                         MG_OK);
        assert_int_equal(outlen, len);
        crypto_generichash_update(&g2, out, outlen);
        off += len;
        got += outlen;
        n++;
        assert_true(final == (off == total));
    }
    mg_vault_enc_free(e);
    mg_vault_dec_free(d);
    crypto_generichash_final(&g1, h1, sizeof(h1));
    crypto_generichash_final(&g2, h2, sizeof(h2));
    assert_true(final);
    assert_int_equal(got, total);
    assert_memory_equal(h1, h2, sizeof(h1));
    /* flat memory: far below the message size */
    assert_true(t_maxrss_kib() - rss0 < 32 * 1024);
}

/* ------------------------------------------------------------ keys */

static void
test_unlock(void **state)
{
    struct mg_vault_key *key = NULL;
    struct mg_vault_wrap w;
    const char *error = NULL;
    uint8_t pk[MG_VAULT_PK_BYTES];
    struct t_msg m;

    (void)state;
    assert_int_equal(t_wrap.kind, MG_WRAP_PASSWORD);
    assert_int_equal(t_wrap.alg, MG_WRAP_ALG_ARGON2ID_SECRETBOX);
    assert_int_equal(t_wrap.opslimit, T_OPS);
    assert_int_equal(t_wrap.memlimit, T_MEM);
    /* fresh salt, nonce and key pair each time */
    assert_memory_not_equal(t_wrap.salt, t_wrap2.salt, MG_VAULT_SALT);
    assert_memory_not_equal(t_wrap.nonce, t_wrap2.nonce, MG_VAULT_NONCE);
    assert_memory_not_equal(t_pk, t_pk2, MG_VAULT_PK_BYTES);

    /* a second unlock gives a key that reads what the fixture key wrote */
    assert_int_equal(mg_vault_unlock(&t_wrap, t_pk, T_PASSWORD, &key, &error),
                     MG_OK);
    t_msg_make(&m, t_pk, T_MAILBOX, 5, 1000);
    assert_int_equal(t_msg_read(&m, key, T_MAILBOX, 5, NULL, 0), MG_OK);
    /* the other mailbox's key does not */
    assert_int_equal(t_msg_read(&m, t_key2, T_MAILBOX, 5, NULL, 0), MG_ERROR);
    t_msg_free(&m);
    mg_vault_key_free(key);

    /* wrong password */
    key = (struct mg_vault_key *)&w; /* must be reset to NULL */
    assert_int_equal(
        mg_vault_unlock(&t_wrap, t_pk, T_PASSWORD "x", &key, &error),
        MG_DECLINED);
    assert_null(key);
    assert_non_null(error);
    assert_int_equal(mg_vault_unlock(&t_wrap, t_pk, "", &key, &error),
                     MG_DECLINED);

    /* the other mailbox's wrap with its own password, against our pk */
    assert_int_equal(
        mg_vault_unlock(&t_wrap2, t_pk, "other-password", &key, &error),
        MG_DECLINED);
    assert_null(key);

    /* a tampered wrap */
    w = t_wrap;
    w.wrapped[3] ^= 1;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_DECLINED);
    w = t_wrap;
    w.salt[0] ^= 1;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_DECLINED);

    /* corrupt parameters are errors, not a wrong password */
    w = t_wrap;
    w.opslimit = 65;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    assert_non_null(strstr(error, "corrupt wrap"));
    w = t_wrap;
    w.opslimit = 0;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    w = t_wrap;
    w.memlimit = (UINT64_C(4) << 30) + 1;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    w = t_wrap;
    w.memlimit = UINT64_MAX;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    w = t_wrap;
    w.kind = 0;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    w = t_wrap;
    w.alg = 2;
    assert_int_equal(mg_vault_unlock(&w, t_pk, T_PASSWORD, &key, &error),
                     MG_ERROR);
    assert_null(key);

    /* keys_new refuses limits unlock would refuse */
    assert_int_equal(mg_vault_keys_new(T_PASSWORD, 100, T_MEM, pk, &w, &error),
                     MG_ERROR);
    assert_int_equal(mg_vault_keys_new(T_PASSWORD, T_OPS, 1024, pk, &w, &error),
                     MG_ERROR);
}

/* The default limits are INTERACTIVE and work end to end (one real-cost
 * derivation each way). */
static void
test_default_limits(void **state)
{
    uint8_t pk[MG_VAULT_PK_BYTES];
    struct mg_vault_wrap w;
    struct mg_vault_key *key = NULL;
    const char *error = NULL;
    char password[MG_VAULT_PASSWORD_MAX];
    uint64_t ops, mem;
    struct t_msg m;

    (void)state;
    mg_vault_default_limits(&ops, &mem);
    assert_int_equal(ops, crypto_pwhash_OPSLIMIT_INTERACTIVE);
    assert_int_equal(mem, crypto_pwhash_MEMLIMIT_INTERACTIVE);
    mg_vault_password_new(password);
    assert_int_equal(mg_vault_keys_new(password, ops, mem, pk, &w, &error),
                     MG_OK);
    assert_int_equal(w.opslimit, ops);
    assert_int_equal(w.memlimit, mem);
    assert_int_equal(mg_vault_unlock(&w, pk, password, &key, &error), MG_OK);
    t_msg_make(&m, pk, "defaultbox", 1, 10);
    assert_int_equal(t_msg_read(&m, key, "defaultbox", 1, NULL, 0), MG_OK);
    t_msg_free(&m);
    mg_vault_key_free(key);
}

/* ------------------------------------------------------------ passwords */

static int
t_strcmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void
test_password_new(void **state)
{
    static const char alphabet[] = "23456789abcdefghjkmnpqrstuvwxyz";
    enum {
        N = 1000,
        LEN = 34
    };
    static char pw[N][MG_VAULT_PASSWORD_MAX];
    unsigned seen[256] = {0};

    (void)state;
    for (int i = 0; i < N; i++) {
        size_t randoms = 0;

        memset(pw[i], 'X', MG_VAULT_PASSWORD_MAX);
        mg_vault_password_new(pw[i]);
        /* 7 groups of 4 joined by '-' */
        assert_int_equal(strlen(pw[i]), LEN);
        for (int k = 0; k < LEN; k++) {
            unsigned char c = (unsigned char)pw[i][k];

            if (k % 5 == 4) {
                assert_int_equal(c, '-');
                continue;
            }
            assert_non_null(memchr(alphabet, c, sizeof(alphabet) - 1));
            assert_null(strchr("0o1li", c));
            seen[c]++;
            randoms++;
        }
        /* ≥ 128 bits: 28 × log2(31) = 138.7; 26 characters would do */
        assert_true(randoms >= 26);
    }
    /* every character of the alphabet in use (28000 draws, ~900 each) */
    for (size_t k = 0; k < sizeof(alphabet) - 1; k++)
        assert_true(seen[(unsigned char)alphabet[k]] > 600);
    qsort(pw, N, sizeof(pw[0]), t_strcmp);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(pw[i - 1], pw[i]);
}

/* ------------------------------------------------------------ the cap */

struct t_unlock {
    const struct mg_vault_wrap *wrap;
    const uint8_t *pk;
    const char *password;
    int rc;
    struct timespec end;
};

static void *
t_unlock_thread(void *arg)
{
    struct t_unlock *u = arg;
    struct mg_vault_key *key = NULL;
    const char *error = NULL;

    u->rc = mg_vault_unlock(u->wrap, u->pk, u->password, &key, &error);
    clock_gettime(CLOCK_MONOTONIC, &u->end);
    mg_vault_key_free(key);
    return NULL;
}

static bool
t_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/*
 * A slow derivation (A) starts; 200 ms later a fast one (B, minimal
 * limits) is asked for. With a cap of 1, B must wait for A and so
 * finishes after it; with a cap of 2 it runs alongside and finishes long
 * before. Ordering, not durations, so a loaded machine cannot fake it.
 */
static void
t_cap_race(unsigned cap, bool b_waits)
{
    struct mg_vault_wrap slow = t_wrap;
    struct t_unlock a = {&slow, t_pk, "wrong password, slow", 0, {0, 0}};
    struct t_unlock b = {&t_wrap, t_pk, T_PASSWORD, 0, {0, 0}};
    const char *error = NULL;
    pthread_t ta, tb;

    /* ~0.5 s here (INTERACTIVE is ~0.06 s on this machine) */
    slow.opslimit = 16;
    slow.memlimit = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    assert_int_equal(mg_vault_init(cap, &error), MG_OK);
    assert_int_equal(pthread_create(&ta, NULL, t_unlock_thread, &a), 0);
    usleep(200 * 1000);
    assert_int_equal(pthread_create(&tb, NULL, t_unlock_thread, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.rc, MG_DECLINED);
    assert_int_equal(b.rc, MG_OK);
    if (b_waits)
        assert_true(t_before(&a.end, &b.end));
    else
        assert_true(t_before(&b.end, &a.end));
}

static void
test_derivation_cap(void **state)
{
    const char *error = NULL;

    (void)state;
    t_cap_race(1, true);
    t_cap_race(2, false);
    assert_int_equal(mg_vault_init(1, &error), MG_OK);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        /* first, so that the memory high-water mark is ours to measure */
        cmocka_unit_test(test_stream_150mb),
        cmocka_unit_test(test_unlock),
        cmocka_unit_test(test_default_limits),
        cmocka_unit_test(test_password_new),
        cmocka_unit_test(test_roundtrip_sizes),
        cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_wire_format),
        cmocka_unit_test(test_derivation_cap),
    };

    return cmocka_run_group_tests(tests, t_setup, t_teardown);
}
