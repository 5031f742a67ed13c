/* tests/unit/test_codec.c -- record encoding, hostile input, mailbox ids */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "store.h"

/* ------------------------------------------------------------ fixtures */

static char *t_targets[] = {"smtp.example.org:25", "", "[2001:db8::1]:587"};
static char *t_networks[] = {"192.0.2.0/24", "2001:db8::/32"};

static void
t_wrap_fill(struct mg_vault_wrap *w, uint8_t seed)
{
    w->kind = MG_WRAP_PASSWORD + (seed & 1);
    w->alg = MG_WRAP_ALG_ARGON2ID_SECRETBOX;
    w->opslimit = 2 + seed;
    w->memlimit = (UINT64_C(64) << 20) + seed;
    memset(w->salt, seed, sizeof(w->salt));
    memset(w->nonce, seed + 1, sizeof(w->nonce));
    memset(w->wrapped, seed + 2, sizeof(w->wrapped));
}

/* a mailbox using every field; strings point at static data */
static void
t_mailbox_fill(struct mg_mailbox *m)
{
    memset(m, 0, sizeof(*m));
    strcpy(m->id, "k3j9x0q2m4p5r6s7");
    m->name = "Journal — Ünïcode name";
    m->description = "";
    m->active = true;
    m->created = UINT64_C(1700000000);
    for (size_t i = 0; i < sizeof(m->pk); i++)
        m->pk[i] = (uint8_t)(i * 7 + 1);
    t_wrap_fill(&m->wraps[0], 10);
    t_wrap_fill(&m->wraps[1], 21);
    m->nwraps = 2;
    m->accept_journal = true;
    m->accept_proxy = false;
    m->require_tls = true;
    m->targets = t_targets;
    m->ntargets = 3;
    m->networks = t_networks;
    m->nnetworks = 2;
    m->messages = UINT64_C(0x0102030405060708);
    m->bytes = UINT64_MAX;
}

static void
t_str_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void
t_list_equal(char **a, size_t na, char **b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        t_str_equal(a[i], b[i]);
}

static void
t_mailbox_equal(const struct mg_mailbox *a, const struct mg_mailbox *b)
{
    assert_string_equal(a->id, b->id);
    t_str_equal(a->name, b->name);
    t_str_equal(a->description, b->description);
    assert_int_equal(a->active, b->active);
    assert_int_equal(a->created, b->created);
    assert_memory_equal(a->pk, b->pk, sizeof(a->pk));
    assert_int_equal(a->nwraps, b->nwraps);
    for (unsigned i = 0; i < a->nwraps; i++)
        assert_memory_equal(&a->wraps[i], &b->wraps[i], sizeof(a->wraps[i]));
    assert_int_equal(a->accept_journal, b->accept_journal);
    assert_int_equal(a->accept_proxy, b->accept_proxy);
    assert_int_equal(a->require_tls, b->require_tls);
    t_list_equal(a->targets, a->ntargets, b->targets, b->ntargets);
    t_list_equal(a->networks, a->nnetworks, b->networks, b->nnetworks);
    assert_int_equal(a->messages, b->messages);
    assert_int_equal(a->bytes, b->bytes);
}

static void
t_envelope_equal(const struct mg_envelope *a, const struct mg_envelope *b)
{
    t_str_equal(a->source, b->source);
    t_str_equal(a->sender, b->sender);
    t_list_equal(a->rcpts, a->nrcpts, b->rcpts, b->nrcpts);
    t_str_equal(a->client, b->client);
    t_str_equal(a->tls, b->tls);
}

static void
t_msg_fill(struct mg_msg_header *h)
{
    memset(h, 0, sizeof(*h));
    h->state = MG_MSG_HELD;
    h->alg = MG_VAULT_ALG_V1;
    h->flags = MG_MSG_F_UNCONFIRMED;
    h->received = UINT64_C(1712345678);
    h->size = UINT64_C(150000000);
    h->nchunks = 2290;
    for (size_t i = 0; i < sizeof(h->sealed_key); i++)
        h->sealed_key[i] = (uint8_t)(0xa0 ^ i);
    for (size_t i = 0; i < sizeof(h->header); i++)
        h->header[i] = (uint8_t)(0x5c + i);
}

/* an envelope with many recipients */
struct t_env {
    struct mg_envelope e;
    char *rcpts[500];
    char buf[500][40];
};

static void
t_env_fill(struct t_env *t, size_t nrcpts, const char *client, const char *tls)
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < nrcpts; i++) {
        snprintf(t->buf[i], sizeof(t->buf[i]), "rcpt%zu@example.org", i);
        t->rcpts[i] = t->buf[i];
    }
    t->e.source = "smtp";
    t->e.sender = "";
    t->e.rcpts = nrcpts ? t->rcpts : NULL;
    t->e.nrcpts = nrcpts;
    t->e.client = (char *)client;
    t->e.tls = (char *)tls;
}

static bool
t_zero(const void *p, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

/* ------------------------------------------------------------ decoders */

/* One decoder behind a common shape, for the hostile-input loops. */
enum t_kind {
    T_MAILBOX,
    T_MSG,
    T_ENVELOPE
};

static int
t_decode(enum t_kind kind, const void *data, size_t len, const char **error)
{
    int rc;

    *error = NULL;
    switch (kind) {
    case T_MAILBOX: {
        struct mg_mailbox m;

        memset(&m, 0x55, sizeof(m));
        rc = mg_codec_mailbox_decode(data, len, &m, error);
        if (rc != MG_OK)
            assert_true(t_zero(&m, sizeof(m)));
        mg_mailbox_clear(&m);
        break;
    }
    case T_MSG: {
        struct mg_msg_header h;

        memset(&h, 0x55, sizeof(h));
        rc = mg_codec_msg_decode(data, len, &h, error);
        if (rc != MG_OK)
            assert_true(t_zero(&h, sizeof(h)));
        break;
    }
    default: {
        struct mg_envelope e;

        memset(&e, 0x55, sizeof(e));
        rc = mg_codec_envelope_decode(data, len, &e, error);
        if (rc != MG_OK)
            assert_true(t_zero(&e, sizeof(e)));
        mg_envelope_clear(&e);
        break;
    }
    }
    if (rc != MG_OK) {
        assert_int_equal(rc, MG_ERROR);
        assert_non_null(*error);
    }
    return rc;
}

/*
 * Every prefix of a valid record fails; so do a changed version byte and
 * a trailing byte. Each attempt decodes from an exact-size heap copy so
 * that ASan sees any read past the end.
 */
static void
t_hostile(enum t_kind kind, const struct mg_buf *b)
{
    size_t len = mg_buf_len(b);
    const char *error;
    uint8_t *p;

    for (size_t n = 0; n < len; n++) {
        p = malloc(n ? n : 1);
        assert_non_null(p);
        memcpy(p, mg_buf_data(b), n);
        assert_int_equal(t_decode(kind, p, n, &error), MG_ERROR);
        free(p);
    }

    p = malloc(len + 1);
    assert_non_null(p);
    memcpy(p, mg_buf_data(b), len);
    assert_int_equal(t_decode(kind, p, len, &error), MG_OK);
    p[0] = 2;
    assert_int_equal(t_decode(kind, p, len, &error), MG_ERROR);
    assert_string_equal(error, "unknown record format version");
    p[0] = 0;
    assert_int_equal(t_decode(kind, p, len, &error), MG_ERROR);
    p[0] = 1;
    p[len] = 0;
    assert_int_equal(t_decode(kind, p, len + 1, &error), MG_ERROR);
    assert_string_equal(error, "corrupt record: trailing bytes");

    /* every single-byte change: no crash, any success is a full record */
    for (size_t i = 1; i < len; i++) {
        for (unsigned x = 1; x < 256; x <<= 1) {
            p[i] ^= (uint8_t)x;
            (void)t_decode(kind, p, len, &error);
            p[i] ^= (uint8_t)x;
        }
        uint8_t old = p[i];
        p[i] = 0xff;
        (void)t_decode(kind, p, len, &error);
        p[i] = old;
    }
    free(p);
}

/* ------------------------------------------------------------ tests */

static void
test_mailbox_roundtrip(void **state)
{
    struct mg_mailbox m, d, c;
    struct mg_buf b;
    const char *error = NULL;

    (void)state;
    t_mailbox_fill(&m);
    mg_buf_init(&b);
    mg_codec_mailbox_encode(&m, &b);
    assert_int_equal(((const uint8_t *)mg_buf_data(&b))[0], 1);
    assert_int_equal(
        mg_codec_mailbox_decode(mg_buf_data(&b), mg_buf_len(&b), &d, &error),
        MG_OK);
    t_mailbox_equal(&m, &d);

    /* a deep copy outlives its source */
    mg_mailbox_copy(&c, &d);
    assert_ptr_not_equal(c.name, d.name);
    assert_ptr_not_equal(c.targets, d.targets);
    assert_ptr_not_equal(c.targets[0], d.targets[0]);
    assert_ptr_not_equal(c.networks[1], d.networks[1]);
    mg_mailbox_clear(&d);
    assert_true(t_zero(&d, sizeof(d)));
    t_mailbox_equal(&m, &c);
    mg_mailbox_clear(&c);

    t_hostile(T_MAILBOX, &b);
    mg_buf_free(&b);

    /* the sparse shape: no strings, no wraps, no lists, all false */
    memset(&m, 0, sizeof(m));
    strcpy(m.id, "abcdefgh");
    mg_buf_init(&b);
    mg_codec_mailbox_encode(&m, &b);
    assert_int_equal(
        mg_codec_mailbox_decode(mg_buf_data(&b), mg_buf_len(&b), &d, &error),
        MG_OK);
    t_mailbox_equal(&m, &d);
    assert_null(d.name);
    assert_null(d.description);
    assert_null(d.targets);
    mg_mailbox_copy(&c, &d);
    t_mailbox_equal(&m, &c);
    mg_mailbox_clear(&c);
    mg_mailbox_clear(&d);
    t_hostile(T_MAILBOX, &b);
    mg_buf_free(&b);
}

static void
test_msg_roundtrip(void **state)
{
    struct mg_msg_header h, d;
    struct mg_buf b;
    const char *error = NULL;

    (void)state;
    t_msg_fill(&h);
    mg_buf_init(&b);
    mg_codec_msg_encode(&h, &b);
    assert_int_equal(
        mg_codec_msg_decode(mg_buf_data(&b), mg_buf_len(&b), &d, &error),
        MG_OK);
    assert_memory_equal(&h, &d, sizeof(h));
    t_hostile(T_MSG, &b);

    /* schemes 2 and 3 store E in place of the sealed key */
    for (uint8_t alg = MG_VAULT_ALG_V2; alg <= MG_VAULT_ALG_V3; alg++) {
        struct mg_msg_header h2 = h;

        memset(h2.sealed_key, 0, sizeof(h2.sealed_key));
        h2.alg = alg;
        for (size_t i = 0; i < sizeof(h2.epk); i++)
            h2.epk[i] = (uint8_t)(0x33 ^ i);
        mg_buf_clear(&b);
        mg_codec_msg_encode(&h2, &b);
        assert_int_equal(mg_buf_len(&b), 24 + sizeof(h2.epk) + MG_VAULT_HEADER);
        assert_int_equal(
            mg_codec_msg_decode(mg_buf_data(&b), mg_buf_len(&b), &d, &error),
            MG_OK);
        assert_memory_equal(&h2, &d, sizeof(h2));
        t_hostile(T_MSG, &b);
        /* read as scheme 1 (the alg byte flipped) it is too short */
        ((uint8_t *)mg_buf_data(&b))[2] = MG_VAULT_ALG_V1;
        assert_int_equal(
            t_decode(T_MSG, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    }
    mg_buf_clear(&b);
    mg_codec_msg_encode(&h, &b);
    /* a scheme 1 record read as scheme 2 has trailing bytes */
    ((uint8_t *)mg_buf_data(&b))[2] = MG_VAULT_ALG_V2;
    assert_int_equal(t_decode(T_MSG, mg_buf_data(&b), mg_buf_len(&b), &error),
                     MG_ERROR);

    /* an unknown state is refused */
    h.state = 4;
    mg_buf_clear(&b);
    mg_codec_msg_encode(&h, &b);
    assert_int_equal(t_decode(T_MSG, mg_buf_data(&b), mg_buf_len(&b), &error),
                     MG_ERROR);
    h.state = 0;
    mg_buf_clear(&b);
    mg_codec_msg_encode(&h, &b);
    assert_int_equal(t_decode(T_MSG, mg_buf_data(&b), mg_buf_len(&b), &error),
                     MG_ERROR);
    mg_buf_free(&b);
}

static void
test_envelope_roundtrip(void **state)
{
    static struct t_env t;
    struct {
        size_t n;
        const char *client, *tls;
    } cases[] = {
        {500, "192.0.2.7", "TLSv1.3 TLS_AES_256_GCM_SHA384"},
        {1, NULL, NULL},
        {0, "", NULL},
        {3, NULL, ""},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mg_envelope d;
        struct mg_buf b;
        const char *error = NULL;

        t_env_fill(&t, cases[i].n, cases[i].client, cases[i].tls);
        mg_buf_init(&b);
        mg_codec_envelope_encode(&t.e, &b);
        assert_int_equal(mg_codec_envelope_decode(mg_buf_data(&b),
                                                  mg_buf_len(&b), &d, &error),
                         MG_OK);
        t_envelope_equal(&t.e, &d);
        mg_envelope_clear(&d);
        assert_true(t_zero(&d, sizeof(d)));
        /* the big one takes long byte by byte: its prefixes only */
        if (cases[i].n < 100)
            t_hostile(T_ENVELOPE, &b);
        else
            for (size_t n = 0; n < mg_buf_len(&b); n += 7)
                assert_int_equal(
                    t_decode(T_ENVELOPE, mg_buf_data(&b), n, &error), MG_ERROR);
        mg_buf_free(&b);
    }
}

/* ------------------------------------------------------------ by hand */

static void
t_u8(struct mg_buf *b, uint8_t v)
{
    mg_buf_append(b, &v, 1);
}

static void
t_u32(struct mg_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
                    (uint8_t)(v >> 24)};

    mg_buf_append(b, x, 4);
}

static void
t_u64(struct mg_buf *b, uint64_t v)
{
    t_u32(b, (uint32_t)v);
    t_u32(b, (uint32_t)(v >> 32));
}

static void
t_str(struct mg_buf *b, const char *s)
{
    t_u32(b, (uint32_t)strlen(s));
    mg_buf_append(b, s, strlen(s));
}

/* An envelope record written by hand: pins the format, then hostile
 * variants of its counts and lengths. */
static void
test_envelope_format(void **state)
{
    struct mg_envelope e;
    struct mg_buf b;
    const char *error = NULL;

    (void)state;
    mg_buf_init(&b);
    t_u8(&b, 1);
    t_str(&b, "smtp");
    t_str(&b, "a@b.c");
    t_u32(&b, 2);
    t_str(&b, "x@y.z");
    t_str(&b, "");
    t_u32(&b, UINT32_MAX); /* client: absent */
    t_str(&b, "TLSv1.3");
    assert_int_equal(
        mg_codec_envelope_decode(mg_buf_data(&b), mg_buf_len(&b), &e, &error),
        MG_OK);
    assert_string_equal(e.source, "smtp");
    assert_string_equal(e.sender, "a@b.c");
    assert_int_equal(e.nrcpts, 2);
    assert_string_equal(e.rcpts[0], "x@y.z");
    assert_string_equal(e.rcpts[1], "");
    assert_null(e.client);
    assert_string_equal(e.tls, "TLSv1.3");
    mg_envelope_clear(&e);

    /* huge and impossible recipient counts */
    static const uint32_t counts[] = {10001, 0x7fffffff, UINT32_MAX, 3, 1000};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        mg_buf_clear(&b);
        t_u8(&b, 1);
        t_str(&b, "smtp");
        t_str(&b, "");
        t_u32(&b, counts[i]);
        t_str(&b, "x@y.z");
        t_str(&b, "x@y.z");
        t_u32(&b, UINT32_MAX);
        t_u32(&b, UINT32_MAX);
        assert_int_equal(
            t_decode(T_ENVELOPE, mg_buf_data(&b), mg_buf_len(&b), &error),
            MG_ERROR);
    }

    /* 10000 recipients are fine, 10001 are not */
    for (uint32_t n = 10000; n <= 10001; n++) {
        mg_buf_clear(&b);
        t_u8(&b, 1);
        t_str(&b, "smtp");
        t_str(&b, "");
        t_u32(&b, n);
        for (uint32_t i = 0; i < n; i++)
            t_str(&b, "r");
        t_u32(&b, UINT32_MAX);
        t_u32(&b, UINT32_MAX);
        assert_int_equal(
            t_decode(T_ENVELOPE, mg_buf_data(&b), mg_buf_len(&b), &error),
            n == 10000 ? MG_OK : MG_ERROR);
    }

    /* string lengths: 64 KiB is the most, beyond it (or absent where
     * required, or with a NUL inside) is an error */
    static const uint32_t lens[] = {65536, 65537, UINT32_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t have = lens[i] == UINT32_MAX ? 0 : lens[i];
        char *s = malloc(have + 1);

        assert_non_null(s);
        memset(s, 'a', have);
        mg_buf_clear(&b);
        t_u8(&b, 1);
        t_u32(&b, lens[i]);
        mg_buf_append(&b, s, have);
        t_str(&b, "");
        t_u32(&b, 0);
        t_u32(&b, UINT32_MAX);
        t_u32(&b, UINT32_MAX);
        assert_int_equal(
            t_decode(T_ENVELOPE, mg_buf_data(&b), mg_buf_len(&b), &error),
            lens[i] == 65536 ? MG_OK : MG_ERROR);
        free(s);
    }
    mg_buf_clear(&b);
    t_u8(&b, 1);
    t_u32(&b, 3);
    mg_buf_append(&b, "a\0b", 3);
    t_str(&b, "");
    t_u32(&b, 0);
    t_u32(&b, UINT32_MAX);
    t_u32(&b, UINT32_MAX);
    assert_int_equal(
        t_decode(T_ENVELOPE, mg_buf_data(&b), mg_buf_len(&b), &error),
        MG_ERROR);
    mg_buf_free(&b);
}

/* A mailbox record by hand: little-endian fields in the documented order;
 * then too many wraps, a bad boolean and a bad id. */
static void
t_mailbox_hand(struct mg_buf *b, const char *id, uint32_t nwraps,
               uint8_t active)
{
    uint8_t pk[MG_VAULT_PK_BYTES] = {9};
    uint8_t zeros[MG_VAULT_SALT + MG_VAULT_NONCE + MG_VAULT_WRAPPED] = {0};

    mg_buf_clear(b);
    t_u8(b, 1);
    t_str(b, id);
    t_str(b, "name");
    t_u32(b, UINT32_MAX);
    t_u8(b, active);
    t_u64(b, 1234567890123);
    mg_buf_append(b, pk, sizeof(pk));
    t_u32(b, nwraps);
    /* the count as given, at most 3 wraps actually written */
    for (uint32_t i = 0; i < nwraps && i < 3; i++) {
        t_u8(b, MG_WRAP_PASSWORD);
        t_u8(b, MG_WRAP_ALG_ARGON2ID_SECRETBOX);
        t_u64(b, 2);
        t_u64(b, 67108864);
        mg_buf_append(b, zeros, sizeof(zeros));
    }
    t_u8(b, 1);
    t_u8(b, 1);
    t_u8(b, 0);
    t_u32(b, 1);
    t_str(b, "upstream:995");
    t_u32(b, 0);
    t_u64(b, 5);
    t_u64(b, 500);
}

static void
test_mailbox_format(void **state)
{
    struct mg_mailbox m;
    struct mg_buf b;
    const char *error = NULL;

    (void)state;
    mg_buf_init(&b);
    t_mailbox_hand(&b, "abcdefgh12", 1, 1);
    assert_int_equal(
        mg_codec_mailbox_decode(mg_buf_data(&b), mg_buf_len(&b), &m, &error),
        MG_OK);
    assert_string_equal(m.id, "abcdefgh12");
    assert_string_equal(m.name, "name");
    assert_null(m.description);
    assert_true(m.active);
    assert_int_equal(m.created, 1234567890123);
    assert_int_equal(m.pk[0], 9);
    assert_int_equal(m.nwraps, 1);
    assert_int_equal(m.wraps[0].memlimit, 67108864);
    assert_true(m.accept_journal);
    assert_true(m.accept_proxy);
    assert_false(m.require_tls);
    assert_int_equal(m.ntargets, 1);
    assert_string_equal(m.targets[0], "upstream:995");
    assert_int_equal(m.nnetworks, 0);
    assert_int_equal(m.messages, 5);
    assert_int_equal(m.bytes, 500);
    mg_mailbox_clear(&m);

    t_mailbox_hand(&b, "abcdefgh12", 2, 1);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_OK);
    t_mailbox_hand(&b, "abcdefgh12", 3, 1);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    t_mailbox_hand(&b, "abcdefgh12", UINT32_MAX, 1);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    t_mailbox_hand(&b, "abcdefgh12", 1, 2);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    t_mailbox_hand(&b, "ABCDEFGH12", 1, 1);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    t_mailbox_hand(&b, "abcdefghijklmnopqrstuvwxyz0123456", 1, 1);
    assert_int_equal(
        t_decode(T_MAILBOX, mg_buf_data(&b), mg_buf_len(&b), &error), MG_ERROR);
    mg_buf_free(&b);
}

/* random bytes behind a valid version byte never crash a decoder */
static void
test_random_input(void **state)
{
    uint8_t seed[randombytes_SEEDBYTES] = {1};
    const char *error;

    (void)state;
    for (uint32_t i = 0; i < 3000; i++) {
        uint8_t buf[300], *p;
        size_t len = 1 + i % sizeof(buf);

        memcpy(seed, &i, sizeof(i));
        randombytes_buf_deterministic(buf, len, seed);
        buf[0] = 1;
        if (i % 3 == 0 && len > 5) /* plausible small lengths */
            buf[1] = buf[2] = buf[3] = buf[4] = 0;
        p = malloc(len);
        assert_non_null(p);
        memcpy(p, buf, len);
        (void)t_decode(T_MAILBOX, p, len, &error);
        (void)t_decode(T_MSG, p, len, &error);
        (void)t_decode(T_ENVELOPE, p, len, &error);
        free(p);
    }
}

/* ------------------------------------------------------------ ids */

static int
t_strcmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void
test_mailbox_id(void **state)
{
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    static char ids[1000][MG_MAILBOX_ID_MAX + 1];
    unsigned seen[256] = {0};

    (void)state;
    for (int i = 0; i < 1000; i++) {
        mg_mailbox_id_new(ids[i]);
        assert_int_equal(strlen(ids[i]), 16);
        assert_true(mg_mailbox_id_valid(ids[i]));
        for (int k = 0; k < 16; k++)
            seen[(unsigned char)ids[i][k]]++;
    }
    /* 16000 draws over 36 characters: each ~444 times */
    for (size_t k = 0; k < sizeof(chars) - 1; k++)
        assert_true(seen[(unsigned char)chars[k]] > 250);
    qsort(ids, 1000, sizeof(ids[0]), t_strcmp);
    for (int i = 1; i < 1000; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);

    assert_true(mg_mailbox_id_valid("abcdefgh"));
    assert_true(mg_mailbox_id_valid("0123456789"));
    assert_true(mg_mailbox_id_valid("abcdefghijklmnopqrstuvwxyz012345"));
    assert_false(mg_mailbox_id_valid("abcdefghijklmnopqrstuvwxyz0123456"));
    assert_false(mg_mailbox_id_valid("abcdefg"));
    assert_false(mg_mailbox_id_valid(""));
    assert_false(mg_mailbox_id_valid(NULL));
    assert_false(mg_mailbox_id_valid("Abcdefgh"));
    assert_false(mg_mailbox_id_valid("abcd-efgh"));
    assert_false(mg_mailbox_id_valid("abcdefgh "));
    assert_false(mg_mailbox_id_valid("abcdéfgh"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mailbox_roundtrip),
        cmocka_unit_test(test_msg_roundtrip),
        cmocka_unit_test(test_envelope_roundtrip),
        cmocka_unit_test(test_envelope_format),
        cmocka_unit_test(test_mailbox_format),
        cmocka_unit_test(test_random_input),
        cmocka_unit_test(test_mailbox_id),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
