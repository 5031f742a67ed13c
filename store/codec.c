/*
 * store/codec.c -- the binary records: mailbox, message header, envelope.
 *
 * Every record starts with its format version (1). Integers are
 * little-endian of fixed width; strings are a u32 length and the bytes
 * (no NUL inside; length 0xffffffff = NULL where a string is optional);
 * lists are a u32 count and the items. Decoders check every length
 * against what is left and refuse unknown versions, oversized counts and
 * trailing bytes: a record read from disk is untrusted input. Error texts
 * are literals (decoding runs on the writer and reader threads).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "store.h"

#define CODEC_VERSION  1
#define CODEC_STR_MAX  (64 * 1024)
#define CODEC_LIST_MAX 10000
#define CODEC_NULL     UINT32_MAX /* length of an absent optional string */

/* ------------------------------------------------------------ encoding */

static void
codec_put_u8(struct mg_buf *out, uint8_t v)
{
    mg_buf_append(out, &v, 1);
}

static void
codec_put_u32(struct mg_buf *out, uint32_t v)
{
    uint8_t b[4];

    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (i * 8));
    mg_buf_append(out, b, sizeof(b));
}

static void
codec_put_u64(struct mg_buf *out, uint64_t v)
{
    uint8_t b[8];

    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (i * 8));
    mg_buf_append(out, b, sizeof(b));
}

/* Strings longer than the decoder accepts are a caller bug (the callers
 * bound names, addresses and the like far below 64 KiB). */
static void
codec_put_str(struct mg_buf *out, const char *s, bool optional)
{
    size_t n;

    if (s == NULL) {
        if (!optional)
            mg_fatalx("codec: NULL for a required string");
        codec_put_u32(out, CODEC_NULL);
        return;
    }
    n = strlen(s);
    if (n > CODEC_STR_MAX)
        mg_fatalx("codec: string of %zu bytes", n);
    codec_put_u32(out, (uint32_t)n);
    mg_buf_append(out, s, n);
}

static void
codec_put_list(struct mg_buf *out, char *const *v, size_t n)
{
    if (n > CODEC_LIST_MAX)
        mg_fatalx("codec: list of %zu items", n);
    codec_put_u32(out, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        codec_put_str(out, v[i], false);
}

/* ------------------------------------------------------------ decoding */

/* A cursor over untrusted bytes; the first failure sticks. */
struct codec_in {
    const uint8_t *p;
    size_t left;
    const char *error;
};

static bool
codec_fail(struct codec_in *in, const char *error)
{
    if (in->error == NULL)
        in->error = error;
    return false;
}

static bool
codec_get_bytes(struct codec_in *in, void *dst, size_t n)
{
    if (in->error != NULL)
        return false;
    if (n > in->left)
        return codec_fail(in, "truncated record");
    memcpy(dst, in->p, n);
    in->p += n;
    in->left -= n;
    return true;
}

static bool
codec_get_u8(struct codec_in *in, uint8_t *v)
{
    return codec_get_bytes(in, v, 1);
}

static bool
codec_get_bool(struct codec_in *in, bool *v)
{
    uint8_t b;

    if (!codec_get_u8(in, &b))
        return false;
    if (b > 1)
        return codec_fail(in, "corrupt record: invalid boolean");
    *v = b == 1;
    return true;
}

static bool
codec_get_u32(struct codec_in *in, uint32_t *v)
{
    uint8_t b[4];

    if (!codec_get_bytes(in, b, sizeof(b)))
        return false;
    *v = 0;
    for (int i = 3; i >= 0; i--)
        *v = (*v << 8) | b[i];
    return true;
}

static bool
codec_get_u64(struct codec_in *in, uint64_t *v)
{
    uint8_t b[8];

    if (!codec_get_bytes(in, b, sizeof(b)))
        return false;
    *v = 0;
    for (int i = 7; i >= 0; i--)
        *v = (*v << 8) | b[i];
    return true;
}

/* A string into allocated memory (*s untouched on failure). */
static bool
codec_get_str(struct codec_in *in, char **s, bool optional)
{
    uint32_t n;

    if (!codec_get_u32(in, &n))
        return false;
    if (n == CODEC_NULL && optional) {
        *s = NULL;
        return true;
    }
    if (n > CODEC_STR_MAX)
        return codec_fail(in, "corrupt record: oversized string");
    if (n > in->left)
        return codec_fail(in, "truncated record");
    if (memchr(in->p, '\0', n) != NULL)
        return codec_fail(in, "corrupt record: NUL in a string");
    *s = mg_xstrndup((const char *)in->p, n);
    in->p += n;
    in->left -= n;
    return true;
}

/* A list of required strings; on failure the items read so far stay in
 * *v_r / *n_r for the caller's clear function. */
static bool
codec_get_list(struct codec_in *in, char ***v_r, size_t *n_r)
{
    uint32_t n;

    if (!codec_get_u32(in, &n))
        return false;
    if (n > CODEC_LIST_MAX)
        return codec_fail(in, "corrupt record: oversized list");
    /* each item takes at least its 4-byte length: refuse early rather
     * than allocate for a count the input cannot hold */
    if (n > in->left / 4)
        return codec_fail(in, "truncated record");
    *v_r = n > 0 ? mg_xcalloc(n, sizeof(char *)) : NULL;
    for (uint32_t i = 0; i < n; i++) {
        if (!codec_get_str(in, &(*v_r)[i], false))
            return false;
        (*n_r)++;
    }
    return true;
}

static bool
codec_get_version(struct codec_in *in)
{
    uint8_t v;

    if (!codec_get_u8(in, &v))
        return false;
    if (v != CODEC_VERSION)
        return codec_fail(in, "unknown record format version");
    return true;
}

/* The verdict: MG_OK only when everything was read and nothing is left. */
static int
codec_finish(struct codec_in *in, const char **error_r)
{
    if (in->error == NULL && in->left != 0)
        in->error = "corrupt record: trailing bytes";
    if (in->error != NULL) {
        *error_r = in->error;
        return MG_ERROR;
    }
    return MG_OK;
}

static void
codec_free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **
codec_copy_list(char *const *v, size_t n)
{
    char **c;

    if (n == 0)
        return NULL;
    c = mg_xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        c[i] = mg_xstrdup(v[i]);
    return c;
}

static char *
codec_strdup_opt(const char *s)
{
    return s != NULL ? mg_xstrdup(s) : NULL;
}

/* ------------------------------------------------------------ mailbox */

void
mg_codec_mailbox_encode(const struct mg_mailbox *m, struct mg_buf *out)
{
    if (m->nwraps > MG_MAILBOX_WRAPS)
        mg_fatalx("codec: %u wraps", m->nwraps);
    codec_put_u8(out, CODEC_VERSION);
    codec_put_str(out, m->id, false);
    codec_put_str(out, m->name, true);
    codec_put_str(out, m->description, true);
    codec_put_u8(out, m->active);
    codec_put_u64(out, m->created);
    mg_buf_append(out, m->pk, sizeof(m->pk));
    codec_put_u32(out, m->nwraps);
    for (unsigned i = 0; i < m->nwraps; i++) {
        const struct mg_vault_wrap *w = &m->wraps[i];

        codec_put_u8(out, w->kind);
        codec_put_u8(out, w->alg);
        codec_put_u64(out, w->opslimit);
        codec_put_u64(out, w->memlimit);
        mg_buf_append(out, w->salt, sizeof(w->salt));
        mg_buf_append(out, w->nonce, sizeof(w->nonce));
        mg_buf_append(out, w->wrapped, sizeof(w->wrapped));
    }
    codec_put_u8(out, m->accept_journal);
    codec_put_u8(out, m->accept_proxy);
    codec_put_u8(out, m->require_tls);
    codec_put_list(out, m->targets, m->ntargets);
    codec_put_list(out, m->networks, m->nnetworks);
    codec_put_u64(out, m->messages);
    codec_put_u64(out, m->bytes);
}

static bool
codec_get_wrap(struct codec_in *in, struct mg_vault_wrap *w)
{
    return codec_get_u8(in, &w->kind) && codec_get_u8(in, &w->alg) &&
           codec_get_u64(in, &w->opslimit) && codec_get_u64(in, &w->memlimit) &&
           codec_get_bytes(in, w->salt, sizeof(w->salt)) &&
           codec_get_bytes(in, w->nonce, sizeof(w->nonce)) &&
           codec_get_bytes(in, w->wrapped, sizeof(w->wrapped));
}

static bool
codec_get_mailbox(struct codec_in *in, struct mg_mailbox *m)
{
    char *id = NULL;
    uint32_t nwraps;
    bool ok;

    if (!codec_get_version(in) || !codec_get_str(in, &id, false))
        return false;
    ok = mg_mailbox_id_valid(id);
    if (ok)
        memcpy(m->id, id, strlen(id) + 1);
    free(id);
    if (!ok)
        return codec_fail(in, "corrupt record: invalid mailbox id");
    if (!codec_get_str(in, &m->name, true) ||
        !codec_get_str(in, &m->description, true) ||
        !codec_get_bool(in, &m->active) || !codec_get_u64(in, &m->created) ||
        !codec_get_bytes(in, m->pk, sizeof(m->pk)) ||
        !codec_get_u32(in, &nwraps))
        return false;
    if (nwraps > MG_MAILBOX_WRAPS)
        return codec_fail(in, "corrupt record: too many key wraps");
    m->nwraps = nwraps;
    for (unsigned i = 0; i < m->nwraps; i++)
        if (!codec_get_wrap(in, &m->wraps[i]))
            return false;
    return codec_get_bool(in, &m->accept_journal) &&
           codec_get_bool(in, &m->accept_proxy) &&
           codec_get_bool(in, &m->require_tls) &&
           codec_get_list(in, &m->targets, &m->ntargets) &&
           codec_get_list(in, &m->networks, &m->nnetworks) &&
           codec_get_u64(in, &m->messages) && codec_get_u64(in, &m->bytes);
}

int
mg_codec_mailbox_decode(const void *data, size_t len, struct mg_mailbox *m,
                        const char **error_r)
{
    struct codec_in in = {.p = data, .left = len};
    int rc;

    memset(m, 0, sizeof(*m));
    codec_get_mailbox(&in, m);
    rc = codec_finish(&in, error_r);
    if (rc != MG_OK)
        mg_mailbox_clear(m);
    return rc;
}

void
mg_mailbox_clear(struct mg_mailbox *m)
{
    free(m->name);
    free(m->description);
    codec_free_list(m->targets, m->ntargets);
    codec_free_list(m->networks, m->nnetworks);
    memset(m, 0, sizeof(*m));
}

void
mg_mailbox_copy(struct mg_mailbox *dst, const struct mg_mailbox *src)
{
    if (dst == src)
        return;
    *dst = *src;
    dst->name = codec_strdup_opt(src->name);
    dst->description = codec_strdup_opt(src->description);
    dst->targets = codec_copy_list(src->targets, src->ntargets);
    dst->networks = codec_copy_list(src->networks, src->nnetworks);
}

/* ------------------------------------------------------------ message */

void
mg_codec_msg_encode(const struct mg_msg_header *h, struct mg_buf *out)
{
    codec_put_u8(out, CODEC_VERSION);
    codec_put_u8(out, h->state);
    codec_put_u8(out, h->alg);
    codec_put_u8(out, h->flags);
    codec_put_u64(out, h->received);
    codec_put_u64(out, h->size);
    codec_put_u32(out, h->nchunks);
    /* the message key's part: E for schemes 2 and 3, the sealed key
     * otherwise (scheme 1; readers refuse other schemes) */
    if (h->alg == MG_VAULT_ALG_V2 || h->alg == MG_VAULT_ALG_V3)
        mg_buf_append(out, h->epk, sizeof(h->epk));
    else
        mg_buf_append(out, h->sealed_key, sizeof(h->sealed_key));
    mg_buf_append(out, h->header, sizeof(h->header));
}

int
mg_codec_msg_decode(const void *data, size_t len, struct mg_msg_header *h,
                    const char **error_r)
{
    struct codec_in in = {.p = data, .left = len};
    int rc;

    memset(h, 0, sizeof(*h));
    if (codec_get_version(&in) && codec_get_u8(&in, &h->state) &&
        codec_get_u8(&in, &h->alg) && codec_get_u8(&in, &h->flags) &&
        codec_get_u64(&in, &h->received) && codec_get_u64(&in, &h->size) &&
        codec_get_u32(&in, &h->nchunks) &&
        (h->alg == MG_VAULT_ALG_V2 || h->alg == MG_VAULT_ALG_V3
             ? codec_get_bytes(&in, h->epk, sizeof(h->epk))
             : codec_get_bytes(&in, h->sealed_key, sizeof(h->sealed_key))) &&
        codec_get_bytes(&in, h->header, sizeof(h->header)) &&
        (h->state < MG_MSG_WRITING || h->state > MG_MSG_VISIBLE))
        codec_fail(&in, "corrupt record: unknown message state");
    rc = codec_finish(&in, error_r);
    if (rc != MG_OK)
        memset(h, 0, sizeof(*h));
    return rc;
}

/* ------------------------------------------------------------ envelope */

void
mg_codec_envelope_encode(const struct mg_envelope *e, struct mg_buf *out)
{
    codec_put_u8(out, CODEC_VERSION);
    codec_put_str(out, e->source, false);
    codec_put_str(out, e->sender, false);
    codec_put_list(out, e->rcpts, e->nrcpts);
    codec_put_str(out, e->client, true);
    codec_put_str(out, e->tls, true);
}

int
mg_codec_envelope_decode(const void *data, size_t len, struct mg_envelope *e,
                         const char **error_r)
{
    struct codec_in in = {.p = data, .left = len};
    int rc;

    memset(e, 0, sizeof(*e));
    if (codec_get_version(&in) && codec_get_str(&in, &e->source, false) &&
        codec_get_str(&in, &e->sender, false) &&
        codec_get_list(&in, &e->rcpts, &e->nrcpts) &&
        codec_get_str(&in, &e->client, true))
        codec_get_str(&in, &e->tls, true);
    rc = codec_finish(&in, error_r);
    if (rc != MG_OK)
        mg_envelope_clear(e);
    return rc;
}

void
mg_envelope_clear(struct mg_envelope *e)
{
    free(e->source);
    free(e->sender);
    codec_free_list(e->rcpts, e->nrcpts);
    free(e->client);
    free(e->tls);
    memset(e, 0, sizeof(*e));
}

/* ------------------------------------------------------------ ids */

static const char codec_id_chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";

void
mg_mailbox_id_new(char id[MG_MAILBOX_ID_MAX + 1])
{
    /* 16 × log2(36) = 82.7 bits; randombytes_uniform has no modulo bias */
    for (int i = 0; i < 16; i++)
        id[i] = codec_id_chars[randombytes_uniform(
            (uint32_t)(sizeof(codec_id_chars) - 1))];
    id[16] = '\0';
}

bool
mg_mailbox_id_valid(const char *id)
{
    size_t n;

    if (id == NULL)
        return false;
    for (n = 0; id[n] != '\0'; n++) {
        if (n >= MG_MAILBOX_ID_MAX)
            return false;
        if (!((id[n] >= 'a' && id[n] <= 'z') || (id[n] >= '0' && id[n] <= '9')))
            return false;
    }
    return n >= 8;
}
