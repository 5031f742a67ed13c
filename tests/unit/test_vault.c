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
#include <openssl/evp.h>
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
/* scheme 2 sender keys with the store's defaults */
static struct mg_vault_senders *t_senders;

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
    t_senders =
        mg_vault_senders_new(MG_VAULT_SENDER_LIFETIME, MG_VAULT_SENDER_MESSAGES,
                             MG_VAULT_SENDER_MAILBOXES);
    return 0;
}

static int
t_teardown(void **state)
{
    (void)state;
    mg_vault_key_free(t_key);
    mg_vault_key_free(t_key2);
    mg_vault_senders_free(t_senders);
    return 0;
}

static double t_now(void);

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
    uint8_t alg;
    uint8_t sealed[MG_VAULT_SEALED_KEY]; /* scheme 1 */
    uint8_t epk[MG_VAULT_PK_BYTES];      /* scheme 2 */
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
 * empty body gets an empty FINAL chunk); schemes 2 and 3 with sender keys
 * from `senders`, or scheme 1. */
static void
t_msg_make_with(struct t_msg *m, uint8_t alg, struct mg_vault_senders *senders,
                const uint8_t pk[MG_VAULT_PK_BYTES], const char *mailbox,
                uint64_t msg_id, size_t size)
{
    static const char env[] = "envelope: from <a@example.org> to <b@x.y>";
    struct mg_vault_enc *e;
    size_t off = 0;

    memset(m, 0, sizeof(*m));
    m->size = size;
    m->plain = malloc(size ? size : 1);
    assert_non_null(m->plain);
    randombytes_buf(m->plain, size);
    m->alg = alg;
    if (alg == MG_VAULT_ALG_V1)
        e = mg_vault_enc_begin_v1(pk, mailbox, msg_id, m->sealed, m->header);
    else
        e = mg_vault_enc_begin(senders, pk, alg, mailbox, msg_id, m->epk,
                               m->header);
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
t_msg_make(struct t_msg *m, uint8_t alg, const uint8_t pk[MG_VAULT_PK_BYTES],
           const char *mailbox, uint64_t msg_id, size_t size)
{
    t_msg_make_with(m, alg, t_senders, pk, mailbox, msg_id, size);
}

static int
t_dec_begin(const struct t_msg *m, const struct mg_vault_key *key,
            const char *mailbox, uint64_t msg_id, struct mg_vault_dec **d,
            const char **error)
{
    return mg_vault_dec_begin(key, mailbox, msg_id, m->alg, m->sealed, m->epk,
                              m->header, d, error);
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
    if (t_dec_begin(m, key, mailbox, msg_id, &d, &error) != MG_OK) {
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
t_roundtrip_sizes(uint8_t alg)
{
    static const size_t sizes[] = {
        0,
        1,
        MG_VAULT_CHUNK - 1,
        MG_VAULT_CHUNK,
        MG_VAULT_CHUNK + 1,
        3 * MG_VAULT_CHUNK + 5,
    };

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct t_msg m;

        t_msg_make(&m, alg, t_pk, T_MAILBOX, 1000 + i, sizes[i]);
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
test_roundtrip_sizes(void **state)
{
    (void)state;
    t_roundtrip_sizes(MG_VAULT_ALG_V2);
}

static void
test_roundtrip_sizes_v3(void **state)
{
    (void)state;
    t_roundtrip_sizes(MG_VAULT_ALG_V3);
}

/* what older versions wrote stays readable */
static void
test_roundtrip_sizes_v1(void **state)
{
    (void)state;
    t_roundtrip_sizes(MG_VAULT_ALG_V1);
}

static void
t_tamper(uint8_t alg)
{
    struct t_msg m, other;
    size_t order[8];
    uint8_t out[MG_VAULT_CHUNK];
    struct mg_vault_dec *d;
    const char *error = NULL;
    size_t outlen;
    bool final;

    /* envelope + 3 body chunks */
    t_msg_make(&m, alg, t_pk, T_MAILBOX, 42, 2 * MG_VAULT_CHUNK + 100);
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

    /* a chunk of another message (same mailbox, same position); scheme 2:
     * of another sender key too */
    t_msg_make_with(&other, alg, NULL, t_pk, T_MAILBOX, 43,
                    2 * MG_VAULT_CHUNK + 100);
    {
        uint8_t *c = m.c[2];

        m.c[2] = other.c[2];
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.c[2] = c;
    }

    /* the stream header of another message, or flipped */
    {
        uint8_t header[MG_VAULT_HEADER];

        memcpy(header, m.header, sizeof(header));
        memcpy(m.header, other.header, sizeof(header));
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        for (size_t i = 0; i < sizeof(header); i += 7) {
            memcpy(m.header, header, sizeof(header));
            m.header[i] ^= 0x04;
            assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                             MG_ERROR);
        }
        memcpy(m.header, header, sizeof(header));
    }

    /* another mailbox's key does not read it */
    assert_int_equal(t_msg_read(&m, t_key2, T_MAILBOX, 42, NULL, 0), MG_ERROR);
    assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_OK);

    /* schemes 2 and 3: the sender key E of another message, or E flipped
     * (a wrong stream key: the first chunk fails), or a low-order point */
    if (alg != MG_VAULT_ALG_V1) {
        uint8_t epk[MG_VAULT_PK_BYTES];

        memcpy(epk, m.epk, sizeof(epk));
        assert_memory_not_equal(m.epk, other.epk, sizeof(epk));
        memcpy(m.epk, other.epk, sizeof(epk));
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        for (size_t i = 0; i < sizeof(epk); i += 5) {
            memcpy(m.epk, epk, sizeof(epk));
            m.epk[i] ^= 0x20;
            assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                             MG_ERROR);
        }
        memset(m.epk, 0, sizeof(epk));
        assert_int_equal(t_dec_begin(&m, t_key, T_MAILBOX, 42, &d, &error),
                         MG_ERROR);
        assert_null(d);
        assert_string_equal(error, "invalid sender key");
        memcpy(m.epk, epk, sizeof(epk));
        /* read as another scheme, or as an unknown one */
        m.alg = MG_VAULT_ALG_V1;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.alg = alg == MG_VAULT_ALG_V2 ? MG_VAULT_ALG_V3 : MG_VAULT_ALG_V2;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.alg = 4;
        assert_int_equal(t_dec_begin(&m, t_key, T_MAILBOX, 42, &d, &error),
                         MG_ERROR);
        assert_string_equal(error, "unknown encryption scheme");
        m.alg = alg;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_OK);
    }

    /* scheme 3: the flags byte in front of each chunk; FINAL set on a
     * body chunk or cleared on the last, an unknown bit set (each fails
     * its tag here; test_wire_format_v3 shows that an unknown bit with
     * a valid tag is refused too) */
    if (alg == MG_VAULT_ALG_V3) {
        for (size_t k = 0; k < m.n; k++) {
            for (unsigned bit = 0; bit < 8; bit++) {
                m.c[k][0] ^= (uint8_t)(1u << bit);
                assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                                 MG_ERROR);
                m.c[k][0] ^= (uint8_t)(1u << bit);
            }
            /* and the last byte of the tag */
            m.c[k][m.len[k] - 1] ^= 0x01;
            assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                             MG_ERROR);
            m.c[k][m.len[k] - 1] ^= 0x01;
        }
        assert_int_equal(m.c[3][0], 0x01); /* FINAL */
        for (size_t k = 0; k < 3; k++)
            assert_int_equal(m.c[k][0], 0);
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0), MG_OK);
    }

    /* scheme 1: the sealed key of another message opens, but not this
     * stream */
    if (alg == MG_VAULT_ALG_V1) {
        uint8_t sealed[MG_VAULT_SEALED_KEY];

        memcpy(sealed, m.sealed, sizeof(sealed));
        memcpy(m.sealed, other.sealed, sizeof(sealed));
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        /* a corrupt sealed key does not open at all */
        memcpy(m.sealed, sealed, sizeof(sealed));
        m.sealed[5] ^= 0x80;
        assert_int_equal(t_dec_begin(&m, t_key, T_MAILBOX, 42, &d, &error),
                         MG_ERROR);
        assert_null(d);
        assert_string_equal(error, "cannot open the message key");
        memcpy(m.sealed, sealed, sizeof(sealed));
        /* another mailbox's key cannot open the message key */
        assert_int_equal(t_dec_begin(&m, t_key2, T_MAILBOX, 42, &d, &error),
                         MG_ERROR);
        /* read as scheme 2 */
        m.alg = MG_VAULT_ALG_V2;
        assert_int_equal(t_msg_read(&m, t_key, T_MAILBOX, 42, NULL, 0),
                         MG_ERROR);
        m.alg = MG_VAULT_ALG_V1;
    }

    /* a chunk after FINAL is refused; so is anything after a failure */
    assert_int_equal(t_dec_begin(&m, t_key, T_MAILBOX, 42, &d, &error), MG_OK);
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

    assert_int_equal(t_dec_begin(&m, t_key, T_MAILBOX, 42, &d, &error), MG_OK);
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

static void
test_tamper(void **state)
{
    (void)state;
    t_tamper(MG_VAULT_ALG_V2);
}

static void
test_tamper_v1(void **state)
{
    (void)state;
    t_tamper(MG_VAULT_ALG_V1);
}

static void
test_tamper_v3(void **state)
{
    (void)state;
    t_tamper(MG_VAULT_ALG_V3);
}


/* Bare libsodium reads the two chunks "hello", "world" (FINAL) of a
 * stream under key with associated data ad. */
static void
pull_hello_world(const uint8_t header[MG_VAULT_HEADER], const uint8_t *key,
                 uint8_t c[2][5 + MG_VAULT_ABYTES], const uint8_t *ad,
                 size_t adlen)
{
    crypto_secretstream_xchacha20poly1305_state st;
    unsigned char tag;
    uint8_t out[5];

    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_init_pull(&st, header, key), 0);
    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_pull(
            &st, out, NULL, &tag, c[0], 5 + MG_VAULT_ABYTES, ad, adlen),
        0);
    assert_memory_equal(out, "hello", 5);
    assert_int_equal(tag, crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
    assert_int_equal(
        crypto_secretstream_xchacha20poly1305_pull(
            &st, out, NULL, &tag, c[1], 5 + MG_VAULT_ABYTES, ad, adlen),
        0);
    assert_memory_equal(out, "world", 5);
    assert_int_equal(tag, crypto_secretstream_xchacha20poly1305_TAG_FINAL);
}

/* The stored format, pinned with bare libsodium: the message key is a
 * sealed box to the mailbox pk, the chunks a secretstream whose AD is
 * mailbox id, NUL, message id as 8 bytes big-endian. */
static void
test_wire_format_v1(void **state)
{
    static const uint8_t ad[] = {'b', 'o', 'x', 'f', 'o', 'r', 'm', 'a', 't',
                                 0,   1,   2,   3,   4,   5,   6,   7,   8};
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t sealed[MG_VAULT_SEALED_KEY], header[MG_VAULT_HEADER];
    uint8_t mkey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    uint8_t c[2][5 + MG_VAULT_ABYTES];
    struct mg_vault_enc *e;

    (void)state;
    crypto_box_keypair(pk, sk);
    e = mg_vault_enc_begin_v1(pk, "boxformat", 0x0102030405060708ull, sealed,
                              header);
    assert_non_null(e);
    mg_vault_enc_push(e, "hello", 5, false, c[0]);
    mg_vault_enc_push(e, "world", 5, true, c[1]);
    mg_vault_enc_free(e);

    assert_int_equal(crypto_box_seal_open(mkey, sealed, sizeof(sealed), pk, sk),
                     0);
    pull_hello_world(header, mkey, c, ad, sizeof(ad));

    /* a low-order public key (a corrupt record) is refused, not used */
    memset(pk, 0, sizeof(pk));
    assert_null(mg_vault_enc_begin_v1(pk, "boxformat", 1, sealed, header));
}

/* Scheme 2 pinned with bare libsodium: the stream key is BLAKE2b-256 of
 * the label, X25519(sk, E), E and pk; the chunks a secretstream under it
 * with scheme 1's AD. */
static void
test_wire_format(void **state)
{
    static const char label[] = "mailgate vault v2 stream key";
    static const uint8_t ad[] = {'b', 'o', 'x', 'f', 'o', 'r', 'm', 'a', 't',
                                 0,   1,   2,   3,   4,   5,   6,   7,   8};
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t epk[MG_VAULT_PK_BYTES], header[MG_VAULT_HEADER];
    uint8_t shared[crypto_scalarmult_BYTES], check[MG_VAULT_PK_BYTES];
    uint8_t skey[crypto_secretstream_xchacha20poly1305_KEYBYTES];
    uint8_t c[2][5 + MG_VAULT_ABYTES];
    crypto_generichash_state h;
    struct mg_vault_enc *e;

    (void)state;
    crypto_box_keypair(pk, sk);
    e = mg_vault_enc_begin(t_senders, pk, MG_VAULT_ALG_V2, "boxformat",
                           0x0102030405060708ull, epk, header);
    assert_non_null(e);
    mg_vault_enc_push(e, "hello", 5, false, c[0]);
    mg_vault_enc_push(e, "world", 5, true, c[1]);
    mg_vault_enc_free(e);

    /* E is a fresh point, not the mailbox's own */
    assert_memory_not_equal(epk, pk, sizeof(pk));
    assert_int_equal(crypto_scalarmult_base(check, sk), 0);
    assert_memory_equal(check, pk, sizeof(pk));
    assert_int_equal(crypto_scalarmult(shared, sk, epk), 0);
    crypto_generichash_init(&h, NULL, 0, sizeof(skey));
    crypto_generichash_update(&h, (const uint8_t *)label, sizeof(label) - 1);
    crypto_generichash_update(&h, shared, sizeof(shared));
    crypto_generichash_update(&h, epk, sizeof(epk));
    crypto_generichash_update(&h, pk, sizeof(pk));
    crypto_generichash_final(&h, skey, sizeof(skey));
    /* never the raw X25519 output */
    assert_memory_not_equal(skey, shared, sizeof(skey));
    pull_hello_world(header, skey, c, ad, sizeof(ad));

    /* a low-order public key (a corrupt record) is refused, not used */
    memset(pk, 0, sizeof(pk));
    assert_null(mg_vault_enc_begin(t_senders, pk, MG_VAULT_ALG_V2, "boxformat",
                                   1, epk, header));
    assert_null(mg_vault_enc_begin(NULL, pk, MG_VAULT_ALG_V2, "boxformat", 1,
                                   epk, header));
}

/* Scheme 3 with bare OpenSSL EVP (AES-256-GCM) and libsodium for the
 * keys: chunk i of a message under key K is flags || ciphertext || tag,
 * nonce 0^32 || i (64 bits big-endian), AD = scheme 1's AD || flags. */
static void
t_gcm(bool enc, const uint8_t key[32], uint64_t i, uint8_t flags,
      const uint8_t *ad, size_t adlen, const uint8_t *in, size_t len,
      uint8_t *out, uint8_t tag[16], bool *ok)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t iv[12] = {0}, fad[64];
    int n = 0, m = 0;

    assert_non_null(c);
    assert_true(adlen < sizeof(fad));
    memcpy(fad, ad, adlen);
    fad[adlen] = flags;
    for (int k = 0; k < 8; k++)
        iv[4 + k] = (uint8_t)(i >> (56 - 8 * k));
    assert_int_equal(
        EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv, enc ? 1 : 0), 1);
    assert_int_equal(EVP_CipherUpdate(c, NULL, &n, fad, (int)adlen + 1), 1);
    n = 0;
    if (len > 0)
        assert_int_equal(EVP_CipherUpdate(c, out, &n, in, (int)len), 1);
    if (enc) {
        assert_int_equal(EVP_CipherFinal_ex(c, out + n, &m), 1);
        assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag),
                         1);
        *ok = true;
    } else {
        assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag),
                         1);
        *ok = EVP_CipherFinal_ex(c, out + n, &m) == 1;
    }
    EVP_CIPHER_CTX_free(c);
}

/* Scheme 2's stream key and scheme 3's message key, from the exchange's
 * shared point, by hand. */
static void
t_v3_key(uint8_t mkey[32], const uint8_t shared[32], const uint8_t epk[32],
         const uint8_t pk[32], const uint8_t header[MG_VAULT_HEADER])
{
    static const char label2[] = "mailgate vault v2 stream key";
    static const char label3[] = "mailgate vault v3 message key";
    crypto_generichash_state h;
    uint8_t skey[32];

    crypto_generichash_init(&h, NULL, 0, sizeof(skey));
    crypto_generichash_update(&h, (const uint8_t *)label2, sizeof(label2) - 1);
    crypto_generichash_update(&h, shared, 32);
    crypto_generichash_update(&h, epk, 32);
    crypto_generichash_update(&h, pk, 32);
    crypto_generichash_final(&h, skey, sizeof(skey));
    crypto_generichash_init(&h, skey, sizeof(skey), 32);
    crypto_generichash_update(&h, (const uint8_t *)label3, sizeof(label3) - 1);
    crypto_generichash_update(&h, header, MG_VAULT_HEADER);
    crypto_generichash_final(&h, mkey, 32);
    /* neither key is the other nor the shared point */
    assert_memory_not_equal(mkey, skey, 32);
    assert_memory_not_equal(mkey, shared, 32);
}

static void
test_wire_format_v3(void **state)
{
    static const uint8_t ad[] = {'b', 'o', 'x', 'f', 'o', 'r', 'm', 'a', 't',
                                 0,   1,   2,   3,   4,   5,   6,   7,   8};
    static const char *const words[3] = {"hello", "", "world"};
    uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t e[crypto_box_SECRETKEYBYTES], epk[MG_VAULT_PK_BYTES];
    uint8_t header[MG_VAULT_HEADER], shared[32], mkey[32];
    uint8_t c[3][5 + MG_VAULT_ABYTES], out[MG_VAULT_CHUNK];
    struct mg_vault_enc *enc;
    struct mg_vault_dec *d;
    const char *error = NULL;
    size_t outlen;
    bool final, ok;

    (void)state;
    /* what the vault writes, read by hand */
    crypto_box_keypair(pk, sk);
    enc = mg_vault_enc_begin(t_senders, pk, MG_VAULT_ALG_V3, "boxformat",
                             0x0102030405060708ull, epk, header);
    assert_non_null(enc);
    for (size_t i = 0; i < 3; i++)
        mg_vault_enc_push(enc, words[i], strlen(words[i]), i == 2, c[i]);
    mg_vault_enc_free(enc);
    assert_int_equal(crypto_scalarmult(shared, sk, epk), 0);
    t_v3_key(mkey, shared, epk, pk, header);
    for (size_t i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);

        assert_int_equal(c[i][0], i == 2 ? 0x01 : 0x00);
        t_gcm(false, mkey, i, c[i][0], ad, sizeof(ad), c[i] + 1, len, out,
              c[i] + 1 + len, &ok);
        assert_true(ok);
        assert_memory_equal(out, words[i], len);
    }
    /* the header is random per message, and so is the key */
    {
        uint8_t h2[MG_VAULT_HEADER], e2[MG_VAULT_PK_BYTES];

        enc = mg_vault_enc_begin(t_senders, pk, MG_VAULT_ALG_V3, "boxformat", 1,
                                 e2, h2);
        mg_vault_enc_free(enc);
        assert_memory_equal(e2, epk, sizeof(e2)); /* the cached sender key */
        assert_memory_not_equal(h2, header, sizeof(h2));
    }

    /* what a writer by hand makes for t_pk (a sender key of its own), read
     * by the vault */
    crypto_box_keypair(epk, e);
    assert_int_equal(crypto_scalarmult(shared, e, t_pk), 0);
    randombytes_buf(header, sizeof(header));
    t_v3_key(mkey, shared, epk, t_pk, header);
    for (size_t i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);

        c[i][0] = i == 2 ? 0x01 : 0x00;
        t_gcm(true, mkey, i, c[i][0], ad, sizeof(ad), (const uint8_t *)words[i],
              len, c[i] + 1, c[i] + 1 + len, &ok);
    }
    assert_int_equal(mg_vault_dec_begin(t_key, "boxformat",
                                        0x0102030405060708ull, MG_VAULT_ALG_V3,
                                        NULL, epk, header, &d, &error),
                     MG_OK);
    for (size_t i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);

        assert_int_equal(mg_vault_dec_pull(d, c[i], len + MG_VAULT_ABYTES, out,
                                           &outlen, &final),
                         MG_OK);
        assert_int_equal(outlen, len);
        assert_memory_equal(out, words[i], len);
        assert_true(final == (i == 2));
    }
    /* a chunk after FINAL, though its tag is right for its position */
    t_gcm(true, mkey, 3, 0, ad, sizeof(ad), (const uint8_t *)"extra", 5,
          c[0] + 1, c[0] + 6, &ok);
    c[0][0] = 0;
    assert_int_equal(
        mg_vault_dec_pull(d, c[0], 5 + MG_VAULT_ABYTES, out, &outlen, &final),
        MG_ERROR);
    mg_vault_dec_free(d);

    /* a flag this version does not know, with a valid tag: refused, and
     * nothing decrypted leaves */
    for (unsigned bit = 1; bit < 8; bit++) {
        uint8_t flags = (uint8_t)(1u << bit);

        c[0][0] = flags;
        t_gcm(true, mkey, 0, flags, ad, sizeof(ad), (const uint8_t *)"hello", 5,
              c[0] + 1, c[0] + 6, &ok);
        assert_int_equal(
            mg_vault_dec_begin(t_key, "boxformat", 0x0102030405060708ull,
                               MG_VAULT_ALG_V3, NULL, epk, header, &d, &error),
            MG_OK);
        memset(out, 0xaa, 5);
        assert_int_equal(mg_vault_dec_pull(d, c[0], 5 + MG_VAULT_ABYTES, out,
                                           &outlen, &final),
                         MG_ERROR);
        assert_true(t_all_zero(out, 5));
        assert_false(final);
        mg_vault_dec_free(d);
    }
    sodium_memzero(e, sizeof(e));
    sodium_memzero(mkey, sizeof(mkey));

    /* a low-order public key (a corrupt record) is refused, not used */
    memset(pk, 0, sizeof(pk));
    assert_null(mg_vault_enc_begin(t_senders, pk, MG_VAULT_ALG_V3, "boxformat",
                                   1, epk, header));
}

/* Scheme 3 where the CPU has AES instructions (libsodium's check, which
 * looks for AES-NI and PCLMUL), scheme 2 elsewhere; both always
 * writable with OpenSSL 3's default provider. */
static void
test_alg_choice(void **state)
{
    (void)state;
    assert_int_equal(mg_vault_alg_auto(), crypto_aead_aes256gcm_is_available()
                                              ? MG_VAULT_ALG_V3
                                              : MG_VAULT_ALG_V2);
    assert_true(mg_vault_alg_writable(MG_VAULT_ALG_V2));
    assert_true(mg_vault_alg_writable(MG_VAULT_ALG_V3));
    assert_false(mg_vault_alg_writable(MG_VAULT_ALG_V1));
    assert_false(mg_vault_alg_writable(4));
    assert_string_equal(mg_vault_alg_cipher(MG_VAULT_ALG_V2),
                        "xchacha20poly1305");
    assert_string_equal(mg_vault_alg_cipher(MG_VAULT_ALG_V3), "aes256gcm");
}

/* The sender key (E) one message to pk gets from `s`; the message is
 * read back with `key` to show every rotation still decrypts. */
static void
t_sender_of(struct mg_vault_senders *s, const uint8_t *pk,
            const struct mg_vault_key *key, uint8_t epk[MG_VAULT_PK_BYTES])
{
    static uint64_t id = 5000;
    struct t_msg m;

    t_msg_make_with(&m, MG_VAULT_ALG_V2, s, pk, T_MAILBOX, ++id, 100);
    memcpy(epk, m.epk, MG_VAULT_PK_BYTES);
    if (key != NULL)
        assert_int_equal(t_msg_read(&m, key, T_MAILBOX, id, NULL, 0), MG_OK);
    t_msg_free(&m);
}

static void
test_sender_rotation(void **state)
{
    uint8_t a[MG_VAULT_PK_BYTES], b[MG_VAULT_PK_BYTES], c[MG_VAULT_PK_BYTES];
    struct mg_vault_senders *s;

    (void)state;
    /* a cache hit: the same E for every message to one mailbox; another
     * mailbox has its own */
    t_sender_of(t_senders, t_pk, t_key, a);
    t_sender_of(t_senders, t_pk, t_key, b);
    assert_memory_equal(a, b, sizeof(a));
    t_sender_of(t_senders, t_pk2, t_key2, c);
    assert_memory_not_equal(a, c, sizeof(a));
    t_sender_of(t_senders, t_pk, t_key, c);
    assert_memory_equal(a, c, sizeof(a));

    /* lifetime 0, or no cache: a new E for every message */
    s = mg_vault_senders_new(0, MG_VAULT_SENDER_MESSAGES, 16);
    t_sender_of(s, t_pk, t_key, a);
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_not_equal(a, b, sizeof(a));
    mg_vault_senders_free(s);
    t_sender_of(NULL, t_pk, t_key, a);
    t_sender_of(NULL, t_pk, t_key, b);
    assert_memory_not_equal(a, b, sizeof(a));

    /* at most 3 messages per sender key */
    s = mg_vault_senders_new(60, 3, 16);
    t_sender_of(s, t_pk, t_key, a);
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_equal(a, b, sizeof(a));
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_equal(a, b, sizeof(a));
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_not_equal(a, b, sizeof(a));
    t_sender_of(s, t_pk, t_key, c);
    assert_memory_equal(b, c, sizeof(b));
    mg_vault_senders_free(s);

    /* a lifetime of 1 s: the same E within it, a new one after it */
    s = mg_vault_senders_new(1, MG_VAULT_SENDER_MESSAGES, 16);
    t_sender_of(s, t_pk, t_key, a);
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_equal(a, b, sizeof(a));
    usleep(1100 * 1000);
    t_sender_of(s, t_pk, t_key, b);
    assert_memory_not_equal(a, b, sizeof(a));
    t_sender_of(s, t_pk, t_key, c);
    assert_memory_equal(b, c, sizeof(b));
    mg_vault_senders_free(s);
}

/* A cache of two mailboxes: the least recently used one goes. */
static void
test_sender_eviction(void **state)
{
    uint8_t pk[4][MG_VAULT_PK_BYTES], sk[crypto_box_SECRETKEYBYTES];
    uint8_t e[4][MG_VAULT_PK_BYTES], x[MG_VAULT_PK_BYTES];
    struct mg_vault_senders *s = mg_vault_senders_new(60, 1000, 2);

    (void)state;
    for (int i = 0; i < 4; i++)
        crypto_box_keypair(pk[i], sk);
    sodium_memzero(sk, sizeof(sk));
    t_sender_of(s, pk[0], NULL, e[0]);
    t_sender_of(s, pk[1], NULL, e[1]);
    t_sender_of(s, pk[0], NULL, x); /* 0 used last */
    assert_memory_equal(x, e[0], sizeof(x));
    t_sender_of(s, pk[2], NULL, e[2]); /* evicts 1 */
    t_sender_of(s, pk[0], NULL, x);
    assert_memory_equal(x, e[0], sizeof(x));
    t_sender_of(s, pk[2], NULL, x);
    assert_memory_equal(x, e[2], sizeof(x));
    t_sender_of(s, pk[1], NULL, x); /* a new key; evicts 0 */
    assert_memory_not_equal(x, e[1], sizeof(x));
    memcpy(e[1], x, sizeof(x));
    t_sender_of(s, pk[2], NULL, x);
    assert_memory_equal(x, e[2], sizeof(x));
    t_sender_of(s, pk[0], NULL, x);
    assert_memory_not_equal(x, e[0], sizeof(x));
    /* many mailboxes through a small cache, each still consistent */
    for (int r = 0; r < 50; r++) {
        t_sender_of(s, pk[r % 4], NULL, e[3]);
        t_sender_of(s, pk[r % 4], NULL, x);
        assert_memory_equal(x, e[3], sizeof(x));
    }
    mg_vault_senders_free(s);
}

/* Writers on several threads share one cache (the bench and, in the
 * daemon, sessions on the loop and on workers): every message decrypts,
 * under rotation by count and eviction. */
struct t_enc_thread {
    struct mg_vault_senders *s;
    int errors;
};

static void *
t_enc_thread(void *arg)
{
    struct t_enc_thread *t = arg;

    for (int i = 0; i < 300; i++) {
        const uint8_t *pk = i % 3 == 2 ? t_pk2 : t_pk;
        const struct mg_vault_key *key = i % 3 == 2 ? t_key2 : t_key;
        uint8_t epk[MG_VAULT_PK_BYTES], header[MG_VAULT_HEADER];
        uint8_t c[40 + MG_VAULT_ABYTES], out[40];
        struct mg_vault_enc *e;
        struct mg_vault_dec *d;
        const char *error = NULL;
        size_t outlen;
        uint8_t alg;
        bool final;

        /* both schemes share the sender keys */
        alg = i % 2 == 0 ? MG_VAULT_ALG_V2 : MG_VAULT_ALG_V3;
        e = mg_vault_enc_begin(t->s, pk, alg, T_MAILBOX, (uint64_t)i, epk,
                               header);
        if (e == NULL) {
            t->errors++;
            continue;
        }
        mg_vault_enc_push(e, "0123456789012345678901234567890123456789", 40,
                          true, c);
        mg_vault_enc_free(e);
        if (mg_vault_dec_begin(key, T_MAILBOX, (uint64_t)i, alg, NULL, epk,
                               header, &d, &error) != MG_OK) {
            t->errors++;
            continue;
        }
        if (mg_vault_dec_pull(d, c, sizeof(c), out, &outlen, &final) != MG_OK ||
            !final || memcmp(out, "0123456789", 10) != 0)
            t->errors++;
        mg_vault_dec_free(d);
    }
    return NULL;
}

static void
test_sender_threads(void **state)
{
    struct t_enc_thread t[4];
    pthread_t th[4];
    struct mg_vault_senders *s = mg_vault_senders_new(60, 7, 1);

    (void)state;
    for (int i = 0; i < 4; i++) {
        t[i].s = s;
        t[i].errors = 0;
        assert_int_equal(pthread_create(&th[i], NULL, t_enc_thread, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].errors, 0);
    }
    mg_vault_senders_free(s);
}

/* The best of three timings of `n` dec_begin calls on one message each
 * from msgs (seconds). */
static double
t_time_dec(const struct t_msg *msgs, size_t n, const struct mg_vault_key *key)
{
    double best = 1e9;

    for (int r = 0; r < 3; r++) {
        double t0 = t_now();

        for (size_t i = 0; i < n; i++) {
            struct mg_vault_dec *d;
            const char *error = NULL;

            assert_int_equal(
                t_dec_begin(&msgs[i], key, T_MAILBOX, 9000 + i, &d, &error),
                MG_OK);
            mg_vault_dec_free(d);
        }
        if (t_now() - t0 < best)
            best = t_now() - t0;
    }
    return best;
}

/*
 * The reader derives a sender key's stream key once: opening 100
 * messages of one sender key costs far less than opening 100 of 100
 * sender keys (one X25519 each, about 30 µs). A fresh unlocked key has
 * an empty cache; the cache holds 16 sender keys, so 17 in turn miss
 * every time, and every one still decrypts.
 */
static void
test_reader_cache(void **state)
{
    enum {
        N = 100
    };
    static struct t_msg same[N], each[N];
    struct mg_vault_senders *one = mg_vault_senders_new(60, 1000, 4);
    struct mg_vault_key *key = NULL;
    const char *error = NULL;
    double t_same, t_each;

    (void)state;
    for (size_t i = 0; i < N; i++) {
        t_msg_make_with(&same[i], MG_VAULT_ALG_V2, one, t_pk, T_MAILBOX,
                        9000 + i, 10);
        t_msg_make_with(&each[i], MG_VAULT_ALG_V2, NULL, t_pk, T_MAILBOX,
                        9000 + i, 10);
        assert_memory_equal(same[i].epk, same[0].epk, MG_VAULT_PK_BYTES);
    }
    assert_int_equal(mg_vault_unlock(&t_wrap, t_pk, T_PASSWORD, &key, &error),
                     MG_OK);
    t_same = t_time_dec(same, N, key);
    t_each = t_time_dec(each, N, key);
    print_message("100 opens: one sender key %.2f ms, 100 sender keys "
                  "%.2f ms\n",
                  t_same * 1e3, t_each * 1e3);
    assert_true(t_same * 5 < t_each);
    /* 17 sender keys in turn, twice: misses, all correct */
    for (int r = 0; r < 2; r++)
        for (size_t i = 0; i < 17; i++)
            assert_int_equal(
                t_msg_read(&each[i], key, T_MAILBOX, 9000 + i, NULL, 0), MG_OK);
    /* a moved message still fails with a cached key */
    assert_int_equal(t_msg_read(&same[1], key, T_MAILBOX, 9000, NULL, 0),
                     MG_ERROR);
    assert_int_equal(t_msg_read(&same[1], key, T_MAILBOX, 9001, NULL, 0),
                     MG_OK);
    mg_vault_key_free(key);
    for (size_t i = 0; i < N; i++) {
        t_msg_free(&same[i]);
        t_msg_free(&each[i]);
    }
    mg_vault_senders_free(one);
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
 * same. The crypto runs in libsodium or OpenSSL (not instrumented), so
 * this is fast under ASan too; T_SANITIZED is only used to report the
 * mode.
 */
static void
t_stream_150mb(uint8_t alg)
{
    const uint64_t total = 150000000;
    static uint8_t plain[MG_VAULT_CHUNK],
        cipher[MG_VAULT_CHUNK + MG_VAULT_ABYTES], out[MG_VAULT_CHUNK];
    uint8_t epk[MG_VAULT_PK_BYTES], header[MG_VAULT_HEADER];
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

#ifdef T_SANITIZED
    print_message("(sanitized build: still 150 MB)\n");
#endif
    e = mg_vault_enc_begin(t_senders, t_pk, alg, T_MAILBOX, 7, epk, header);
    assert_non_null(e);
    assert_int_equal(mg_vault_dec_begin(t_key, T_MAILBOX, 7, alg, NULL, epk,
                                        header, &d, &error),
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

static void
test_stream_150mb(void **state)
{
    (void)state;
    t_stream_150mb(MG_VAULT_ALG_V2);
}

static void
test_stream_150mb_v3(void **state)
{
    (void)state;
    t_stream_150mb(MG_VAULT_ALG_V3);
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
    t_msg_make(&m, MG_VAULT_ALG_V2, t_pk, T_MAILBOX, 5, 1000);
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
    t_msg_make(&m, MG_VAULT_ALG_V2, pk, "defaultbox", 1, 10);
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
    double start, end; /* seconds, monotonic */
};

static double
t_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *
t_unlock_thread(void *arg)
{
    struct t_unlock *u = arg;
    struct mg_vault_key *key = NULL;
    const char *error = NULL;

    u->start = t_now();
    u->rc = mg_vault_unlock(u->wrap, u->pk, u->password, &key, &error);
    u->end = t_now();
    mg_vault_key_free(key);
    return NULL;
}

/*
 * A slow derivation (A, ~0.5 s) starts; 200 ms later a fast one (B,
 * minimal limits, well under 1 ms) is asked for. With a cap of 1, B must
 * wait for A's derivation and so ends at about A's end; with a cap of 2
 * it runs alongside and ends right after it started. The verdict is
 * which half of A's remaining time B ends in: robust against a loaded
 * machine, where the exact order of two nearly simultaneous ends (A's
 * release, B's quick run) is up to the scheduler.
 */
static void
t_cap_race(unsigned cap, bool b_waits)
{
    struct mg_vault_wrap slow = t_wrap;
    struct t_unlock a = {&slow, t_pk, "wrong password, slow", 0, 0, 0};
    struct t_unlock b = {&t_wrap, t_pk, T_PASSWORD, 0, 0, 0};
    const char *error = NULL;
    pthread_t ta, tb;
    double half;

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
    half = b.start + (a.end - b.start) / 2;
    if (b_waits)
        assert_true(b.end > half);
    else
        assert_true(b.end < half);
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
        cmocka_unit_test(test_stream_150mb_v3),
        cmocka_unit_test(test_unlock),
        cmocka_unit_test(test_default_limits),
        cmocka_unit_test(test_password_new),
        cmocka_unit_test(test_roundtrip_sizes),
        cmocka_unit_test(test_roundtrip_sizes_v1),
        cmocka_unit_test(test_roundtrip_sizes_v3),
        cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_tamper_v1),
        cmocka_unit_test(test_tamper_v3),
        cmocka_unit_test(test_wire_format),
        cmocka_unit_test(test_wire_format_v1),
        cmocka_unit_test(test_wire_format_v3),
        cmocka_unit_test(test_alg_choice),
        cmocka_unit_test(test_sender_rotation),
        cmocka_unit_test(test_sender_eviction),
        cmocka_unit_test(test_sender_threads),
        cmocka_unit_test(test_reader_cache),
        cmocka_unit_test(test_derivation_cap),
    };

    return cmocka_run_group_tests(tests, t_setup, t_teardown);
}
