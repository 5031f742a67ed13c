/* core/tls.c -- OpenSSL contexts: server profile, ALPN policy, client
 * verification */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mg.h"

int mg_tls_conn_index = -1;

/* Mozilla "intermediate" TLS 1.2 suites (ECDHE + AEAD only); TLS 1.3 keeps
 * OpenSSL's default suites, which are the same as Mozilla's. */
#define TLS_CIPHERS_12                                           \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS_GROUPS "X25519:prime256v1:secp384r1"

/* OpenSSL reads one record per read(), header and body apart, unless it
 * may read ahead: then one read() takes what the socket has, up to this,
 * and core/conn.c decrypts every record it brought (SSL_has_pending). */
#define TLS_READ_BUFFER (64 * 1024)

/* The I/O modes of both profiles: partial writes from a buffer that may
 * move (core/conn.c), buffers freed while idle, read-ahead. */
static void
tls_ctx_io(SSL_CTX *ctx)
{
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, TLS_READ_BUFFER);
}

/* The ex_data slot is process-wide; both constructors make sure it exists
 * before any SSL can be created from their contexts. Loop thread only. */
static void
tls_init(void)
{
    if (mg_tls_conn_index < 0) {
        mg_tls_conn_index =
            SSL_get_ex_new_index(0, (void *)"mg_conn", NULL, NULL, NULL);
        if (mg_tls_conn_index < 0)
            mg_fatalx("SSL_get_ex_new_index failed");
    }
}

/* Drain OpenSSL's error queue into one line ("lib: reason; ...") for an
 * error message. The text lives in a mg_error() buffer. */
static const char *
tls_errors(void)
{
    char text[512];
    size_t used = 0;
    unsigned long e;
    const char *data;
    int flags;

    text[0] = '\0';
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        const char *lib = ERR_lib_error_string(e);
        const char *reason = ERR_reason_error_string(e);
        char one[256];
        int n;

        if (ERR_SYSTEM_ERROR(e)) {
            lib = NULL;
            reason = strerror(ERR_GET_REASON(e));
        } else if (ERR_GET_REASON(e) == ERR_R_SYS_LIB) {
            continue; /* "system lib": the errno entry said it */
        } else if (reason == NULL) {
            (void)snprintf(one, sizeof(one), "error %#lx", e);
            reason = one;
        }
        if (!(flags & ERR_TXT_STRING))
            data = "";
        n = snprintf(text + used, sizeof(text) - used, "%s%s%s%s%s%s%s",
                     used ? "; " : "", lib ? lib : "", lib ? ": " : "", reason,
                     *data ? " (" : "", data, *data ? ")" : "");
        if (n < 0 || (size_t)n >= sizeof(text) - used)
            used = sizeof(text) - 1;
        else
            used += (size_t)n;
    }
    return mg_error("%s", used ? text : "no details from OpenSSL");
}

/* ALPACA defence: a client that names an application protocol must name
 * one this listener speaks, or the handshake fails (no_application_protocol)
 * instead of a cross-protocol session. Server preference order. */
static int
tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                const unsigned char *in, unsigned int inlen, void *arg)
{
    const struct mg_conn *c = SSL_get_ex_data(ssl, mg_tls_conn_index);
    const char *const *list = c != NULL ? mg_conn_alpn_list(c) : NULL;

    (void)arg;
    for (; list != NULL && *list != NULL; list++) {
        size_t want = strlen(*list);
        unsigned int i = 0;

        while (i < inlen) {
            unsigned int n = in[i];

            if (n == 0 || n > inlen - i - 1)
                break; /* malformed: OpenSSL checks this, be safe anyway */
            if (n == want && memcmp(in + i + 1, *list, n) == 0) {
                *out = in + i + 1;
                *outlen = (unsigned char)n;
                return SSL_TLSEXT_ERR_OK;
            }
            i += 1 + n;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

SSL_CTX *
mg_tls_server_ctx(const char *cert, const char *key, const char **error_r)
{
    SSL_CTX *ctx;

    tls_init();
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        *error_r =
            mg_error("cannot create a TLS server context: %s", tls_errors());
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, TLS_CIPHERS_12) != 1 ||
        SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1) {
        *error_r =
            mg_error("cannot set up the TLS server profile: %s", tls_errors());
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* "intermediate": the client picks the suite (it knows whether it has
     * AES hardware) */
    SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    tls_ctx_io(ctx);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        *error_r = mg_error("TLS certificate %s: cannot load it (%s); it must "
                            "be a readable PEM file with the server "
                            "certificate first, then its intermediates",
                            cert, tls_errors());
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        *error_r = mg_error("TLS key %s: cannot use it with certificate %s "
                            "(%s); it must be a readable, unencrypted PEM "
                            "private key that belongs to the certificate",
                            key, cert, tls_errors());
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        *error_r = mg_error("TLS key %s does not match certificate %s (%s); "
                            "configure the key the certificate was issued for",
                            key, cert, tls_errors());
        goto fail;
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *
mg_tls_client_ctx(const char *ca_file, const char **error_r)
{
    SSL_CTX *ctx;

    tls_init();
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        *error_r =
            mg_error("cannot create a TLS client context: %s", tls_errors());
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        *error_r =
            mg_error("cannot set up the TLS client profile: %s", tls_errors());
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    tls_ctx_io(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        *error_r =
            mg_error("cannot use the system trust store: %s", tls_errors());
        goto fail;
    }
    if (ca_file != NULL &&
        SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        *error_r = mg_error("TLS CA file %s: cannot load it (%s); it must be "
                            "a readable PEM file of trusted certificates",
                            ca_file, tls_errors());
        goto fail;
    }
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int
mg_tls_client_setup(SSL *ssl, const char *host, const char **error_r)
{
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    unsigned char addr[sizeof(struct in6_addr)];

    ERR_clear_error();
    if (host == NULL || *host == '\0') {
        *error_r = "TLS peer name is empty";
        return MG_ERROR;
    }
    if (inet_pton(AF_INET, host, addr) == 1 ||
        inet_pton(AF_INET6, host, addr) == 1) {
        /* RFC 6066: no SNI for address literals; check the IP SAN */
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
            *error_r = mg_error("TLS peer address %s: %s", host, tls_errors());
            return MG_ERROR;
        }
    } else {
        if (strchr(host, ':') != NULL || strchr(host, '%') != NULL) {
            *error_r = mg_error("TLS peer name %s is neither a host name nor "
                                "an IP address",
                                host);
            return MG_ERROR;
        }
        X509_VERIFY_PARAM_set_hostflags(vp,
                                        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(ssl, host) != 1 ||
            X509_VERIFY_PARAM_set1_host(vp, host, 0) != 1) {
            *error_r = mg_error("TLS peer name %s: %s", host, tls_errors());
            return MG_ERROR;
        }
    }
    SSL_set_connect_state(ssl);
    return MG_OK;
}

/* Copy s into buf with anything unprintable replaced: certificate text
 * goes into logs. */
static void
tls_printable(char *buf, size_t size, const char *s)
{
    size_t i;

    for (i = 0; i + 1 < size && s[i] != '\0'; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f)
            buf[i] = s[i];
        else
            buf[i] = '?';
    }
    buf[i] = '\0';
}

const char *
mg_tls_ctx_describe(SSL_CTX *ctx)
{
    X509 *x = ctx != NULL ? SSL_CTX_get0_certificate(ctx) : NULL;
    char raw[256], cn[256], when[64];
    const ASN1_TIME *na;
    struct tm tm;

    if (x == NULL)
        return "no certificate";
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, raw,
                                  sizeof(raw)) < 0)
        (void)snprintf(raw, sizeof(raw), "(none)");
    tls_printable(cn, sizeof(cn), raw);
    na = X509_get0_notAfter(x);
    if (na != NULL && ASN1_TIME_to_tm(na, &tm) == 1)
        (void)strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    else
        (void)snprintf(when, sizeof(when), "(unknown)");
    ERR_clear_error();
    return mg_error("subject CN=%s, not after %s", cn, when);
}
