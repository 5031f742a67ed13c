/* core/tls_resume.c -- client-side TLS session cache for outbound
 * connections: a later connection to the same upstream, under the same
 * name and trust configuration, resumes instead of decoding and verifying
 * the certificate chain again. Memory only, bounded, LRU. Loop thread. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "mg.h"

#define RESUME_MAX_ENTRIES  1024
#define RESUME_MAX_LIFETIME 3600 /* seconds, caps the session's timeout */
#define RESUME_BUCKETS      256  /* power of two */
/* TLS 1.3 tickets kept per upstream: each is used once, and sessions that
 * start together (a client sending with several connections) each need
 * one; servers send one or two per handshake */
#define RESUME_PER_KEY 8

/** The sessions of one upstream. The key names everything that decided
 * the verification, so a session is only offered where it was verified. */
struct resume_entry {
    struct resume_entry *hnext;         /* bucket chain */
    struct resume_entry *newer, *older; /* LRU list */
    char *key;
    uint32_t hash;
    SSL_SESSION *sess[RESUME_PER_KEY]; /* oldest first; references ours */
    unsigned n;
};

/** Attached to an SSL: where its new sessions go. */
struct resume_tag {
    char *key;
    uint32_t hash;
    uint64_t epoch;
};

static struct resume_entry *resume_buckets[RESUME_BUCKETS];
static struct resume_entry *resume_newest, *resume_oldest;
static size_t resume_count;
/* bumped by a flush: a session from a connection begun under the old
 * trust configuration never enters the new cache */
static uint64_t resume_epoch = 1;
static int resume_index = -1;

static uint32_t
resume_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void
resume_tag_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                void *argp)
{
    struct resume_tag *t = ptr;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (t != NULL) {
        free(t->key);
        free(t);
    }
}

static void
resume_unlink(struct resume_entry *e)
{
    struct resume_entry **pp = &resume_buckets[e->hash & (RESUME_BUCKETS - 1)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        resume_newest = e->older;
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        resume_oldest = e->newer;
    resume_count--;
}

static void
resume_entry_free(struct resume_entry *e)
{
    resume_unlink(e);
    while (e->n > 0)
        SSL_SESSION_free(e->sess[--e->n]);
    free(e->key);
    free(e);
}

static struct resume_entry *
resume_find(const char *key, uint32_t hash)
{
    struct resume_entry *e;

    for (e = resume_buckets[hash & (RESUME_BUCKETS - 1)]; e != NULL;
         e = e->hnext)
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void
resume_link(struct resume_entry *e)
{
    e->hnext = resume_buckets[e->hash & (RESUME_BUCKETS - 1)];
    resume_buckets[e->hash & (RESUME_BUCKETS - 1)] = e;
    resume_count++;
    e->older = resume_newest;
    e->newer = NULL;
    if (resume_newest != NULL)
        resume_newest->newer = e;
    else
        resume_oldest = e;
    resume_newest = e;
}

static bool
resume_expired(SSL_SESSION *sess)
{
    long timeout = SSL_SESSION_get_timeout(sess);
    long born = SSL_SESSION_get_time(sess);

    if (timeout > RESUME_MAX_LIFETIME)
        timeout = RESUME_MAX_LIFETIME;
    return (long)time(NULL) - born >= timeout;
}

/* OpenSSL hands over each new session: after a full handshake (TLS 1.2)
 * or with each ticket after it (TLS 1.3, possibly several: kept up to
 * RESUME_PER_KEY, the oldest dropped first). 1: we keep the reference. */
static int
resume_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct resume_tag *t = SSL_get_ex_data(ssl, resume_index);
    struct resume_entry *e;

    if (t == NULL || t->epoch != resume_epoch)
        return 0;
    /* only a session whose certificate was verified for this name */
    if (SSL_get_verify_result(ssl) != X509_V_OK ||
        SSL_SESSION_get0_peer(sess) == NULL || !SSL_SESSION_is_resumable(sess))
        return 0;
    e = resume_find(t->key, t->hash);
    if (e != NULL) {
        resume_unlink(e);
    } else {
        if (resume_count >= RESUME_MAX_ENTRIES)
            resume_entry_free(resume_oldest);
        e = mg_xcalloc(1, sizeof(*e));
        e->key = mg_xstrdup(t->key);
        e->hash = t->hash;
    }
    /* a TLS 1.2 session is reused as often as the server lets it: the
     * newest replaces all; TLS 1.3 tickets accumulate */
    if (SSL_SESSION_get_protocol_version(sess) < TLS1_3_VERSION ||
        e->n == RESUME_PER_KEY) {
        unsigned drop = e->n == RESUME_PER_KEY ? 1 : e->n;

        for (unsigned i = 0; i < drop; i++)
            SSL_SESSION_free(e->sess[i]);
        memmove(e->sess, e->sess + drop, (e->n - drop) * sizeof(e->sess[0]));
        e->n -= drop;
    }
    e->sess[e->n++] = sess;
    resume_link(e);
    return 1;
}

void
mg_tls_resume_enable(SSL_CTX *ctx)
{
    if (resume_index < 0) {
        resume_index = SSL_get_ex_new_index(0, (void *)"mg_resume", NULL, NULL,
                                            resume_tag_free);
        if (resume_index < 0)
            mg_fatalx("SSL_get_ex_new_index failed");
    }
    /* our cache only: OpenSSL's internal one is keyed by session id, not by
     * the name and trust the session was verified under */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                            SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, resume_new_session);
}

bool
mg_tls_resume_prepare(SSL *ssl, const char *host, int port,
                      const char *verify_name, const char *ca_file)
{
    struct resume_tag *t;
    struct resume_entry *e;
    bool offered = false;

    if (resume_index < 0)
        return false;
    t = mg_xcalloc(1, sizeof(*t));
    /* host and name hold no newline (checked by the caller): the CA path,
     * which may, comes last, so the key is unambiguous */
    t->key = mg_xasprintf("%s\n%d\n%s\n%s", host, port, verify_name,
                          ca_file != NULL ? ca_file : "");
    t->hash = resume_hash(t->key);
    t->epoch = resume_epoch;
    if (SSL_set_ex_data(ssl, resume_index, t) != 1) {
        resume_tag_free(NULL, t, NULL, 0, 0, NULL);
        return false;
    }
    e = resume_find(t->key, t->hash);
    if (e == NULL)
        return false;
    resume_unlink(e);
    /* the newest first; an expired or spoilt one is dropped */
    while (e->n > 0 && !offered) {
        SSL_SESSION *sess = e->sess[e->n - 1];

        if (resume_expired(sess) || !SSL_SESSION_is_resumable(sess)) {
            SSL_SESSION_free(sess);
            e->n--;
            continue;
        }
        offered = SSL_set_session(ssl, sess) == 1;
        if (SSL_SESSION_get_protocol_version(sess) >= TLS1_3_VERSION ||
            !offered) {
            /* RFC 8446 C.4: a TLS 1.3 ticket is used once; the resumed
             * handshake brings fresh ones (SSL_set_session took a
             * reference of its own) */
            SSL_SESSION_free(sess);
            e->n--;
        }
    }
    if (e->n == 0) {
        free(e->key);
        free(e);
    } else {
        resume_link(e);
    }
    return offered;
}

void
mg_tls_resume_flush(void)
{
    resume_epoch++;
    while (resume_oldest != NULL)
        resume_entry_free(resume_oldest);
}

size_t
mg_tls_resume_count(void)
{
    return resume_count;
}

size_t
mg_tls_resume_sessions(void)
{
    size_t n = 0;

    for (const struct resume_entry *e = resume_newest; e != NULL; e = e->older)
        n += e->n;
    return n;
}
