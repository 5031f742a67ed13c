/* tests/unit/test_tls.c -- core/tls.c and core/outbound.c: the server
 * profile, key checks, peer verification by name and IP, ALPN policy, and
 * outbound connects on a real libev loop over loopback. */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "mg.h"

/* ------------------------------------------------ test-local core parts */

/* conn.c is not under test: a stand-in conn carrying what tls.c and
 * outbound.c hand over or ask for. */
struct mg_conn {
    const char *const *alpn;
    int fd;
    SSL *ssl;
    bool tls_done;
};

struct ev_loop *mg_loop;

const char *const *
mg_conn_alpn_list(const struct mg_conn *c)
{
    return c->alpn;
}

struct mg_conn *
mg_conn_outbound(int fd, struct mg_modctx *mod, SSL *ssl, bool tls_done)
{
    struct mg_conn *c = mg_xcalloc(1, sizeof(*c));

    (void)mod;
    c->fd = fd;
    c->ssl = ssl;
    c->tls_done = tls_done;
    return c;
}

/* workers.c stand-in: the job runs at once, its completion comes from the
 * loop after `stub_done_delay` seconds, as a real pool's would. */
static double stub_done_delay;
static bool stub_submit_fails;

struct stub_job {
    ev_timer t;
    mg_work_done_fn done;
    void *arg;
};

static void
stub_job_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct stub_job *j = w->data;

    (void)revents;
    ev_timer_stop(loop, w);
    j->done(j->arg);
    free(j);
}

int
mg_workers_submit(mg_work_fn work, mg_work_done_fn done, void *arg)
{
    struct stub_job *j;

    if (stub_submit_fails)
        return MG_ERROR;
    work(arg);
    j = mg_xcalloc(1, sizeof(*j));
    j->done = done;
    j->arg = arg;
    ev_timer_init(&j->t, stub_job_cb, stub_done_delay, 0.);
    j->t.data = j;
    ev_timer_start(mg_loop, &j->t);
    return MG_OK;
}

/* getaddrinfo() with one made-up name, "two.test", resolving to
 * 127.0.0.2 (where nobody listens) and then 127.0.0.1, to see outbound.c
 * walk the address list. glibc's freeaddrinfo() frees a chain node by
 * node, so two real results can be joined. */
typedef int (*getaddrinfo_fn)(const char *, const char *,
                              const struct addrinfo *, struct addrinfo **);

static getaddrinfo_fn
real_getaddrinfo(void)
{
    static getaddrinfo_fn fn;

    if (fn == NULL)
        *(void **)&fn = dlsym(RTLD_NEXT, "getaddrinfo");
    return fn;
}

int
getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
            struct addrinfo **res)
{
    struct addrinfo *a, *b;
    int r;

    if (node == NULL || strcmp(node, "two.test") != 0)
        return real_getaddrinfo()(node, service, hints, res);
    r = real_getaddrinfo()("127.0.0.2", service, hints, &a);
    if (r != 0)
        return r;
    r = real_getaddrinfo()("127.0.0.1", service, hints, &b);
    if (r != 0) {
        freeaddrinfo(a);
        return r;
    }
    a->ai_next = b;
    *res = a;
    return 0;
}

/* ------------------------------------------------------- test material */

static char tmpdir[64];
static char ca_pem[128], cert_pem[128], key_pem[128], other_key_pem[128];
static SSL_CTX *srv_ctx, *cli_ctx;

static void
add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);

    assert_non_null(ext);
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

static X509 *
make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer, const char *cn,
          const char *san, long serial)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_get_subject_name(x);
    X509V3_CTX v3;

    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    if (san == NULL) {
        add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, &v3, NID_key_usage, "critical,digitalSignature");
        add_ext(x, &v3, NID_ext_key_usage, "serverAuth");
        add_ext(x, &v3, NID_subject_alt_name, san);
    }
    assert_true(X509_sign(x, signer, EVP_sha256()) > 0);
    return x;
}

static void
write_pem(const char *path, X509 *x, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    if (x != NULL)
        assert_int_equal(PEM_write_X509(f, x), 1);
    if (key != NULL)
        assert_int_equal(
            PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
}

/* A P-256 CA and a server certificate for localhost and 127.0.0.1, made
 * fresh in a temporary directory (no key material in the repository). */
static int
group_setup(void **state)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-256");
    EVP_PKEY *key = EVP_EC_gen("P-256");
    EVP_PKEY *other = EVP_EC_gen("P-256");
    const char *error = NULL;
    X509 *ca, *cert;

    (void)state;
    assert_non_null(ca_key);
    assert_non_null(key);
    assert_non_null(other);
    (void)snprintf(tmpdir, sizeof(tmpdir), "/tmp/mg-test-tls.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    (void)snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", tmpdir);
    (void)snprintf(cert_pem, sizeof(cert_pem), "%s/cert.pem", tmpdir);
    (void)snprintf(key_pem, sizeof(key_pem), "%s/key.pem", tmpdir);
    (void)snprintf(other_key_pem, sizeof(other_key_pem), "%s/other.pem",
                   tmpdir);

    ca = make_cert(ca_key, ca_key, NULL, "mailgate test CA", NULL, 1);
    cert = make_cert(key, ca_key, ca, "localhost", "DNS:localhost,IP:127.0.0.1",
                     2);
    write_pem(ca_pem, ca, NULL);
    write_pem(cert_pem, cert, NULL);
    write_pem(key_pem, NULL, key);
    write_pem(other_key_pem, NULL, other);
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);

    srv_ctx = mg_tls_server_ctx(cert_pem, key_pem, &error);
    if (srv_ctx == NULL)
        fail_msg("server ctx: %s", error);
    cli_ctx = mg_tls_client_ctx(ca_pem, &error);
    if (cli_ctx == NULL)
        fail_msg("client ctx: %s", error);
    mg_loop = ev_default_loop(0);
    return 0;
}

static int
group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(srv_ctx);
    SSL_CTX_free(cli_ctx);
    unlink(ca_pem);
    unlink(cert_pem);
    unlink(key_pem);
    unlink(other_key_pem);
    rmdir(tmpdir);
    return 0;
}

/* ------------------------------------------------- in-memory handshakes */

struct pair {
    int fds[2];
    SSL *s, *c;
    int s_rc, c_rc;         /* 1 done, -1 failed, 0 pending */
    int s_reason, c_reason; /* ERR_GET_REASON of the failure */
};

static void
pair_init(struct pair *p, SSL_CTX *cctx, struct mg_conn *conn)
{
    memset(p, 0, sizeof(*p));
    assert_int_equal(socketpair(AF_UNIX,
                                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                                p->fds),
                     0);
    p->s = SSL_new(srv_ctx);
    p->c = SSL_new(cctx);
    assert_non_null(p->s);
    assert_non_null(p->c);
    SSL_set_fd(p->s, p->fds[0]);
    SSL_set_fd(p->c, p->fds[1]);
    SSL_set_accept_state(p->s);
    SSL_set_ex_data(p->s, mg_tls_conn_index, conn);
}

static void
pair_step(SSL *ssl, int *rc, int *reason)
{
    int r, e;

    if (*rc != 0)
        return;
    ERR_clear_error();
    r = SSL_do_handshake(ssl);
    if (r == 1) {
        *rc = 1;
        return;
    }
    e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
    *rc = -1;
    *reason = ERR_GET_REASON(ERR_peek_last_error());
    ERR_clear_error();
}

/* Both ends in turn until each has finished or failed (or stalled). */
static void
pair_run(struct pair *p)
{
    int i;

    for (i = 0; i < 100 && (p->s_rc == 0 || p->c_rc == 0); i++) {
        pair_step(p->c, &p->c_rc, &p->c_reason);
        pair_step(p->s, &p->s_rc, &p->s_reason);
    }
}

static void
pair_free(struct pair *p)
{
    SSL_free(p->s);
    SSL_free(p->c);
    close(p->fds[0]);
    close(p->fds[1]);
}

static void
client_for(struct pair *p, const char *host)
{
    const char *error = NULL;

    if (mg_tls_client_setup(p->c, host, &error) != MG_OK)
        fail_msg("client setup %s: %s", host, error);
}

/* ------------------------------------------------------------ tls tests */

static void
test_server_ctx_profile(void **state)
{
    (void)state;
    assert_int_equal(SSL_CTX_get_min_proto_version(srv_ctx), TLS1_2_VERSION);
    assert_true(SSL_CTX_get_options(srv_ctx) & SSL_OP_NO_RENEGOTIATION);
    assert_true(SSL_CTX_get_options(srv_ctx) & SSL_OP_NO_COMPRESSION);
    assert_false(SSL_CTX_get_options(srv_ctx) &
                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    assert_true(SSL_CTX_get_mode(srv_ctx) & SSL_MODE_RELEASE_BUFFERS);
    assert_true(SSL_CTX_get_mode(srv_ctx) & SSL_MODE_ENABLE_PARTIAL_WRITE);
    assert_true(SSL_CTX_get_mode(srv_ctx) &
                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    assert_true(mg_tls_conn_index >= 0);
    assert_int_equal(SSL_CTX_get_min_proto_version(cli_ctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_verify_mode(cli_ctx), SSL_VERIFY_PEER);
}

static void
test_describe(void **state)
{
    const char *d = mg_tls_ctx_describe(srv_ctx);

    (void)state;
    assert_non_null(strstr(d, "subject CN=localhost, not after "));
    assert_non_null(strstr(d, "UTC"));
}

static void
test_bad_files(void **state)
{
    const char *error = NULL;
    char missing[160];

    (void)state;
    assert_null(mg_tls_server_ctx(cert_pem, other_key_pem, &error));
    assert_non_null(error);
    assert_non_null(strstr(error, other_key_pem));
    assert_non_null(strstr(error, "key values mismatch"));

    (void)snprintf(missing, sizeof(missing), "%s/nope.pem", tmpdir);
    error = NULL;
    assert_null(mg_tls_server_ctx(missing, key_pem, &error));
    assert_non_null(strstr(error, "TLS certificate"));
    assert_non_null(strstr(error, missing));

    error = NULL;
    assert_null(mg_tls_server_ctx(cert_pem, missing, &error));
    assert_non_null(strstr(error, "TLS key"));
    assert_non_null(strstr(error, missing));

    /* a key is not a certificate */
    error = NULL;
    assert_null(mg_tls_server_ctx(key_pem, key_pem, &error));
    assert_non_null(strstr(error, key_pem));

    error = NULL;
    assert_null(mg_tls_client_ctx(missing, &error));
    assert_non_null(strstr(error, "TLS CA file"));
    assert_non_null(strstr(error, missing));
}

static void
test_handshake_by_name(void **state)
{
    static const char *const none[] = {NULL};
    struct mg_conn conn = {.alpn = none};
    struct pair p;
    int v;

    (void)state;
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "localhost");
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(p.s_rc, 1);
    assert_int_equal(SSL_get_verify_result(p.c), X509_V_OK);
    v = SSL_version(p.c);
    assert_true(v == TLS1_2_VERSION || v == TLS1_3_VERSION);
    assert_string_equal(SSL_get_servername(p.s, TLSEXT_NAMETYPE_host_name),
                        "localhost");
    pair_free(&p);
}

static void
test_handshake_wrong_name(void **state)
{
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;

    (void)state;
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "wrong.example");
    pair_run(&p);
    assert_int_equal(p.c_rc, -1);
    assert_int_not_equal(p.s_rc, 1);
    assert_int_equal(SSL_get_verify_result(p.c), X509_V_ERR_HOSTNAME_MISMATCH);
    pair_free(&p);
}

static void
test_handshake_by_ip(void **state)
{
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;

    (void)state;
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "127.0.0.1");
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(p.s_rc, 1);
    /* no SNI for an address literal */
    assert_null(SSL_get_servername(p.s, TLSEXT_NAMETYPE_host_name));
    pair_free(&p);

    /* an address the certificate does not name */
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "127.0.0.2");
    pair_run(&p);
    assert_int_equal(p.c_rc, -1);
    assert_int_equal(SSL_get_verify_result(p.c),
                     X509_V_ERR_IP_ADDRESS_MISMATCH);
    pair_free(&p);
}

static void
test_client_setup_rejects(void **state)
{
    SSL *ssl = SSL_new(cli_ctx);
    const char *error = NULL;

    (void)state;
    assert_int_equal(mg_tls_client_setup(ssl, "", &error), MG_ERROR);
    assert_non_null(error);
    error = NULL;
    assert_int_equal(mg_tls_client_setup(ssl, "fe80::1%eth0", &error),
                     MG_ERROR);
    assert_non_null(error);
    assert_int_equal(mg_tls_client_setup(ssl, "::1", &error), MG_OK);
    SSL_free(ssl);
}

/* A client that insists on TLS 1.1 (at security level 0, so only the
 * server's minimum can refuse it). */
static void
test_tls11_refused(void **state)
{
    SSL_CTX *old = SSL_CTX_new(TLS_client_method());
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;

    (void)state;
    SSL_CTX_set_security_level(old, 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(old, TLS1_1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(old, TLS1_1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_cipher_list(old, "ALL:@SECLEVEL=0"), 1);
    pair_init(&p, old, &conn);
    SSL_set_connect_state(p.c);
    pair_run(&p);
    assert_int_equal(p.s_rc, -1);
    assert_int_equal(p.s_reason, SSL_R_UNSUPPORTED_PROTOCOL);
    assert_int_equal(p.c_rc, -1);
    pair_free(&p);
    SSL_CTX_free(old);
}

/* TLS 1.2 suites outside the profile (CBC) are refused; AEAD is fine. */
static void
test_tls12_ciphers(void **state)
{
    SSL_CTX *c12 = mg_tls_client_ctx(ca_pem, &(const char *){NULL});
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;

    (void)state;
    assert_non_null(c12);
    SSL_CTX_set_max_proto_version(c12, TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_set_cipher_list(c12, "ECDHE-ECDSA-AES128-SHA256"),
                     1);
    pair_init(&p, c12, &conn);
    client_for(&p, "localhost");
    pair_run(&p);
    assert_int_equal(p.s_rc, -1);
    assert_int_equal(p.s_reason, SSL_R_NO_SHARED_CIPHER);
    pair_free(&p);

    assert_int_equal(
        SSL_CTX_set_cipher_list(c12, "ECDHE-ECDSA-CHACHA20-POLY1305"), 1);
    pair_init(&p, c12, &conn);
    client_for(&p, "localhost");
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(SSL_version(p.c), TLS1_2_VERSION);
    assert_string_equal(SSL_get_cipher_name(p.c),
                        "ECDHE-ECDSA-CHACHA20-POLY1305");
    pair_free(&p);
    SSL_CTX_free(c12);
}

static void
alpn_offer(struct pair *p, const char *proto)
{
    unsigned char wire[64];
    size_t n = strlen(proto);

    wire[0] = (unsigned char)n;
    memcpy(wire + 1, proto, n + 1); /* the NUL is not sent */
    /* 0 is success for this one */
    assert_int_equal(SSL_set_alpn_protos(p->c, wire, (unsigned)n + 1), 0);
}

static void
test_alpn(void **state)
{
    static const char *const testline[] = {"testline", NULL};
    struct mg_conn conn = {.alpn = testline};
    struct mg_conn nolist = {.alpn = NULL};
    const unsigned char *sel;
    unsigned len;
    struct pair p;

    (void)state;
    /* an offer the listener does not speak: no_application_protocol */
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "localhost");
    alpn_offer(&p, "http/1.1");
    pair_run(&p);
    assert_int_equal(p.s_rc, -1);
    assert_int_equal(p.s_reason, SSL_R_NO_APPLICATION_PROTOCOL);
    assert_int_equal(p.c_rc, -1);
    assert_int_equal(p.c_reason, SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
    pair_free(&p);

    /* the listener's own protocol */
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "localhost");
    alpn_offer(&p, "testline");
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(p.s_rc, 1);
    SSL_get0_alpn_selected(p.c, &sel, &len);
    assert_int_equal(len, 8);
    assert_memory_equal(sel, "testline", 8);
    pair_free(&p);

    /* no ALPN at all */
    pair_init(&p, cli_ctx, &conn);
    client_for(&p, "localhost");
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(p.s_rc, 1);
    SSL_get0_alpn_selected(p.c, &sel, &len);
    assert_int_equal(len, 0);
    pair_free(&p);

    /* a NULL list accepts no offer */
    pair_init(&p, cli_ctx, &nolist);
    client_for(&p, "localhost");
    alpn_offer(&p, "testline");
    pair_run(&p);
    assert_int_equal(p.s_rc, -1);
    assert_int_equal(p.s_reason, SSL_R_NO_APPLICATION_PROTOCOL);
    pair_free(&p);
}

/* ------------------------------------------------------- outbound tests */

enum srv_mode {
    SRV_HOLD, /* accept, then say nothing */
    SRV_TLS,  /* accept and run the server side of the handshake */
};

struct srv_conn {
    int fd;
    SSL *ssl;
    ev_io io;
};

static struct {
    int fd;
    int port;
    enum srv_mode mode;
    ev_io accept_io;
    struct srv_conn conns[8];
    unsigned nconns;
} srv;

static struct {
    bool called;
    unsigned calls;
    bool reentered;
    struct mg_conn *c;
    int status;
    char *error;
    void *arg;
} res;

static bool in_connect;
static ev_timer guard;

static void
srv_conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct srv_conn *sc = w->data;
    int r;

    (void)revents;
    r = SSL_do_handshake(sc->ssl);
    if (r == 1 || (SSL_get_error(sc->ssl, r) != SSL_ERROR_WANT_READ &&
                   SSL_get_error(sc->ssl, r) != SSL_ERROR_WANT_WRITE)) {
        ev_io_stop(loop, w);
        ERR_clear_error();
        return;
    }
    ev_io_stop(loop, w);
    ev_io_set(w, sc->fd,
              SSL_get_error(sc->ssl, r) == SSL_ERROR_WANT_READ ? EV_READ
                                                               : EV_WRITE);
    ev_io_start(loop, w);
}

static void
srv_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct srv_conn *sc;
    int fd;

    (void)w;
    (void)revents;
    fd = accept4(srv.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (srv.nconns == sizeof(srv.conns) / sizeof(srv.conns[0])) {
        close(fd);
        return;
    }
    sc = &srv.conns[srv.nconns++];
    sc->fd = fd;
    sc->ssl = NULL;
    if (srv.mode != SRV_TLS)
        return;
    sc->ssl = SSL_new(srv_ctx);
    SSL_set_fd(sc->ssl, fd);
    SSL_set_accept_state(sc->ssl);
    SSL_set_ex_data(sc->ssl, mg_tls_conn_index, NULL);
    ev_io_init(&sc->io, srv_conn_cb, fd, EV_READ);
    sc->io.data = sc;
    ev_io_start(loop, &sc->io);
}

static int
srv_setup(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof(sin);

    (void)state;
    memset(&res, 0, sizeof(res));
    stub_done_delay = 0;
    stub_submit_fails = false;
    srv.mode = SRV_TLS;
    srv.nconns = 0;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(srv.fd >= 0);
    assert_int_equal(bind(srv.fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(srv.fd, 8), 0);
    assert_int_equal(getsockname(srv.fd, (struct sockaddr *)&sin, &len), 0);
    srv.port = ntohs(sin.sin_port);
    ev_io_init(&srv.accept_io, srv_accept_cb, srv.fd, EV_READ);
    ev_io_start(mg_loop, &srv.accept_io);
    return 0;
}

static int
srv_teardown(void **state)
{
    unsigned i;

    (void)state;
    ev_io_stop(mg_loop, &srv.accept_io);
    close(srv.fd);
    for (i = 0; i < srv.nconns; i++) {
        if (srv.conns[i].ssl != NULL) {
            ev_io_stop(mg_loop, &srv.conns[i].io);
            SSL_free(srv.conns[i].ssl);
        }
        close(srv.conns[i].fd);
    }
    if (res.c != NULL) {
        SSL_free(res.c->ssl);
        close(res.c->fd);
        free(res.c);
    }
    free(res.error);
    memset(&res, 0, sizeof(res));
    /* let the loop drain anything outbound.c still has pending */
    ev_run(mg_loop, EVRUN_NOWAIT);
    return 0;
}

static void
connect_done(struct mg_conn *c, int status, const char *error, void *arg)
{
    res.calls++;
    res.called = true;
    res.reentered |= in_connect;
    res.c = c;
    res.status = status;
    res.error = error != NULL ? strdup(error) : NULL;
    res.arg = arg;
    ev_break(mg_loop, EVBREAK_ALL);
}

static void
guard_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Start a connect and run the loop until done() (or 5 s). */
static void
run_connect(const struct mg_connect_spec *spec)
{
    const char *error = NULL;
    int r;

    in_connect = true;
    r = mg_outbound_connect(NULL, spec, connect_done, &res, &error);
    in_connect = false;
    if (r != MG_OK)
        fail_msg("mg_outbound_connect: %s", error);
    assert_false(res.called);
    ev_timer_init(&guard, guard_cb, 5., 0.);
    ev_timer_start(mg_loop, &guard);
    ev_run(mg_loop, 0);
    ev_timer_stop(mg_loop, &guard);
    assert_true(res.called);
    assert_int_equal(res.calls, 1);
    assert_false(res.reentered);
    assert_ptr_equal(res.arg, &res);
}

static void
expect_error(const char *prefix, const char *part)
{
    assert_int_equal(res.status, MG_ERROR);
    assert_null(res.c);
    assert_non_null(res.error);
    if (strncmp(res.error, prefix, strlen(prefix)) != 0 ||
        strstr(res.error, part) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"... or \"%s\"", res.error, prefix,
                 part);
}

static void
test_outbound_plain(void **state)
{
    struct mg_connect_spec spec = {.host = "127.0.0.1", .port = srv.port};
    int one = 0;
    socklen_t len = sizeof(one);

    (void)state;
    srv.mode = SRV_HOLD;
    run_connect(&spec);
    assert_int_equal(res.status, MG_OK);
    assert_non_null(res.c);
    assert_null(res.c->ssl);
    assert_false(res.c->tls_done);
    assert_true(res.c->fd >= 0);
    assert_true(fcntl(res.c->fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(res.c->fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(
        getsockopt(res.c->fd, IPPROTO_TCP, TCP_NODELAY, &one, &len), 0);
    assert_int_equal(one, 1);
}

static void
test_outbound_implicit(void **state)
{
    struct mg_connect_spec spec = {.host = "localhost",
                                   .port = srv.port,
                                   .tls = MG_TLS_IMPLICIT,
                                   .ca_file = ca_pem};
    int v;

    (void)state;
    /* "localhost" may resolve to ::1 first, where nobody listens: the
     * next address is tried */
    run_connect(&spec);
    if (res.status != MG_OK)
        fail_msg("%s", res.error);
    assert_non_null(res.c);
    assert_non_null(res.c->ssl);
    assert_true(res.c->tls_done);
    assert_true(SSL_is_init_finished(res.c->ssl));
    assert_int_equal(SSL_get_verify_result(res.c->ssl), X509_V_OK);
    v = SSL_version(res.c->ssl);
    assert_true(v == TLS1_2_VERSION || v == TLS1_3_VERSION);
}

static void
test_outbound_implicit_ip(void **state)
{
    struct mg_connect_spec spec = {.host = "127.0.0.1",
                                   .port = srv.port,
                                   .tls = MG_TLS_IMPLICIT,
                                   .ca_file = ca_pem};

    (void)state;
    run_connect(&spec);
    if (res.status != MG_OK)
        fail_msg("%s", res.error);
    assert_true(res.c->tls_done);
}

static void
test_outbound_untrusted(void **state)
{
    struct mg_connect_spec spec = {
        .host = "127.0.0.1", .port = srv.port, .tls = MG_TLS_IMPLICIT};
    char prefix[64];

    (void)state;
    (void)snprintf(prefix, sizeof(prefix),
                   "connect to 127.0.0.1:%d: ", srv.port);
    run_connect(&spec);
    expect_error(prefix, "certificate verification failed: ");
    assert_non_null(
        strstr(res.error, X509_verify_cert_error_string(
                              X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)));
}

static void
test_outbound_starttls(void **state)
{
    struct mg_connect_spec spec = {.host = "localhost",
                                   .port = srv.port,
                                   .tls = MG_TLS_STARTTLS,
                                   .ca_file = ca_pem};

    (void)state;
    srv.mode = SRV_HOLD;
    run_connect(&spec);
    assert_int_equal(res.status, MG_OK);
    assert_non_null(res.c->ssl);
    assert_false(res.c->tls_done);
    assert_false(SSL_is_init_finished(res.c->ssl));
    assert_false(SSL_is_server(res.c->ssl));
    assert_string_equal(
        SSL_get_servername(res.c->ssl, TLSEXT_NAMETYPE_host_name), "localhost");
}

static unsigned filter_calls;

static int
filter_none(const struct sockaddr *sa, socklen_t len, void *arg)
{
    (void)sa;
    (void)len;
    assert_ptr_equal(arg, &res);
    filter_calls++;
    return MG_DECLINED;
}

static int
filter_v4(const struct sockaddr *sa, socklen_t len, void *arg)
{
    (void)len;
    (void)arg;
    filter_calls++;
    return sa->sa_family == AF_INET ? MG_OK : MG_DECLINED;
}

static void
test_outbound_filter(void **state)
{
    struct mg_connect_spec spec = {
        .host = "127.0.0.1", .port = srv.port, .filter = filter_none};

    (void)state;
    srv.mode = SRV_HOLD;
    filter_calls = 0;
    run_connect(&spec);
    expect_error("connect to 127.0.0.1:", "no permitted address for 127.0.0.1");
    assert_true(filter_calls >= 1);
    assert_int_equal(srv.nconns, 0);
    free(res.error);
    memset(&res, 0, sizeof(res));

    spec.filter = filter_v4;
    spec.host = "localhost";
    run_connect(&spec);
    assert_int_equal(res.status, MG_OK);
    assert_non_null(res.c);
}

static int
filter_not2(const struct sockaddr *sa, socklen_t len, void *arg)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

    (void)len;
    (void)arg;
    filter_calls++;
    return sin->sin_addr.s_addr == htonl(0x7f000002) ? MG_DECLINED : MG_OK;
}

/* The first address refuses; the second one is used. */
static void
test_outbound_next_address(void **state)
{
    struct mg_connect_spec spec = {.host = "two.test",
                                   .port = srv.port,
                                   .tls = MG_TLS_IMPLICIT,
                                   .ca_file = ca_pem};

    (void)state;
    /* the certificate does not name two.test: check the walk with
     * plaintext, and TLS (by name) separately below */
    spec.tls = MG_TLS_NONE;
    srv.mode = SRV_HOLD;
    run_connect(&spec);
    if (res.status != MG_OK)
        fail_msg("%s", res.error);
    assert_non_null(res.c);
    srv_teardown(state);
    srv_setup(state);

    /* the filter sees both, declines the first */
    spec.port = srv.port;
    spec.filter = filter_not2;
    filter_calls = 0;
    run_connect(&spec);
    assert_int_equal(res.status, MG_OK);
    assert_int_equal(filter_calls, 2);
    srv_teardown(state);
    srv_setup(state);

    /* with TLS: the name is checked, so this one fails verification */
    spec.port = srv.port;
    spec.filter = NULL;
    spec.tls = MG_TLS_IMPLICIT;
    run_connect(&spec);
    expect_error("connect to two.test:",
                 X509_verify_cert_error_string(X509_V_ERR_HOSTNAME_MISMATCH));
}

/* Every address refuses: the error tells why the last one failed. */
static void
test_outbound_all_refused(void **state)
{
    struct mg_connect_spec spec = {.host = "two.test", .port = srv.port};

    (void)state;
    ev_io_stop(mg_loop, &srv.accept_io);
    close(srv.fd);
    srv.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    run_connect(&spec);
    expect_error("connect to two.test:", "127.0.0.1: Connection refused");
}

static void
test_outbound_refused(void **state)
{
    struct mg_connect_spec spec = {.host = "127.0.0.1"};

    (void)state;
    /* nobody listens on the port once its socket is closed */
    spec.port = srv.port;
    ev_io_stop(mg_loop, &srv.accept_io);
    close(srv.fd);
    srv.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    run_connect(&spec);
    expect_error("connect to 127.0.0.1:", strerror(ECONNREFUSED));
}

static void
test_outbound_timeout_tls(void **state)
{
    struct mg_connect_spec spec = {.host = "127.0.0.1",
                                   .port = srv.port,
                                   .tls = MG_TLS_IMPLICIT,
                                   .ca_file = ca_pem,
                                   .connect_timeout_ms = 200};

    (void)state;
    srv.mode = SRV_HOLD;
    run_connect(&spec);
    expect_error("connect to 127.0.0.1:", "timed out after 200 ms in the TLS "
                                          "handshake with 127.0.0.1");
}

static void
test_outbound_timeout_dns(void **state)
{
    struct mg_connect_spec spec = {
        .host = "127.0.0.1", .port = srv.port, .connect_timeout_ms = 100};

    (void)state;
    srv.mode = SRV_HOLD;
    stub_done_delay = 0.3;
    run_connect(&spec);
    expect_error("connect to 127.0.0.1:", "timed out after 100 ms resolving");
    /* the lookup finishing later must free quietly, without a second done */
    ev_timer_init(&guard, guard_cb, 0.5, 0.);
    ev_timer_start(mg_loop, &guard);
    ev_run(mg_loop, 0);
    assert_int_equal(res.calls, 1);
    assert_int_equal(srv.nconns, 0);
}

static void
test_outbound_submit_fails(void **state)
{
    struct mg_connect_spec spec = {.host = "127.0.0.1", .port = srv.port};

    (void)state;
    stub_submit_fails = true;
    run_connect(&spec); /* checks done() came from the loop */
    expect_error("connect to 127.0.0.1:", "cannot queue");
}

static void
test_outbound_unresolvable(void **state)
{
    struct mg_connect_spec spec = {.host = "no-such-host.invalid",
                                   .port = srv.port};

    (void)state;
    run_connect(&spec);
    expect_error("connect to no-such-host.invalid:", "cannot resolve");
}

static void
test_outbound_bad_spec(void **state)
{
    struct mg_connect_spec spec = {.host = "", .port = 25};
    const char *error = NULL;
    char missing[160];

    (void)state;
    assert_int_equal(
        mg_outbound_connect(NULL, &spec, connect_done, NULL, &error), MG_ERROR);
    assert_non_null(error);
    spec.host = "a.example\r\nRCPT";
    error = NULL;
    assert_int_equal(
        mg_outbound_connect(NULL, &spec, connect_done, NULL, &error), MG_ERROR);
    assert_non_null(strstr(error, "CR or LF"));
    spec.host = "a.example";
    spec.port = 0;
    error = NULL;
    assert_int_equal(
        mg_outbound_connect(NULL, &spec, connect_done, NULL, &error), MG_ERROR);
    assert_non_null(strstr(error, "port 0"));
    spec.port = 65536;
    assert_int_equal(
        mg_outbound_connect(NULL, &spec, connect_done, NULL, &error), MG_ERROR);
    spec.port = 25;
    spec.tls = MG_TLS_IMPLICIT;
    (void)snprintf(missing, sizeof(missing), "%s/nope.pem", tmpdir);
    spec.ca_file = missing;
    error = NULL;
    assert_int_equal(
        mg_outbound_connect(NULL, &spec, connect_done, NULL, &error), MG_ERROR);
    assert_non_null(strstr(error, missing));
    ev_run(mg_loop, EVRUN_NOWAIT);
    assert_false(res.called);
}

/* ------------------------------------------------- session resumption */

/* The server's TLS 1.3 tickets come after the handshake: the client reads
 * them when it reads data. One byte each way brings them in. */
static void
pair_exchange(struct pair *p)
{
    char b = 'x';
    int i;

    assert_int_equal(SSL_write(p->s, &b, 1), 1);
    for (i = 0; i < 10; i++) {
        if (SSL_read(p->c, &b, 1) == 1)
            break;
    }
    assert_int_equal(b, 'x');
}

/* A handshake of a client from ctx for host under the cache key (host,
 * 4711, host, ca); true when it resumed. max: the highest version. */
static bool
resume_round(SSL_CTX *ctx, const char *host, const char *ca, int max,
             bool *offered)
{
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;
    bool reused;

    pair_init(&p, ctx, &conn);
    if (max != 0)
        assert_int_equal(SSL_set_max_proto_version(p.c, max), 1);
    client_for(&p, host);
    *offered = mg_tls_resume_prepare(p.c, host, 4711, host, ca);
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    assert_int_equal(p.s_rc, 1);
    /* resumed or not, the peer certificate and its verification are
     * there for checks after the handshake */
    assert_int_equal(SSL_get_verify_result(p.c), X509_V_OK);
    assert_non_null(SSL_get0_peer_certificate(p.c));
    pair_exchange(&p);
    reused = SSL_session_reused(p.c) == 1;
    /* a connection that ends without close_notify makes OpenSSL mark its
     * session not resumable (ssl_clear_bad_session) */
    (void)SSL_shutdown(p.c);
    pair_free(&p);
    return reused;
}

static SSL_CTX *
resume_ctx(void)
{
    const char *error = NULL;
    SSL_CTX *ctx = mg_tls_client_ctx(ca_pem, &error);

    if (ctx == NULL)
        fail_msg("client ctx: %s", error);
    mg_tls_resume_enable(ctx);
    mg_tls_resume_flush();
    return ctx;
}

static void
test_resume_tls13(void **state)
{
    SSL_CTX *ctx = resume_ctx();
    size_t n;
    bool offered;
    SSL *ssl;

    (void)state;
    assert_false(resume_round(ctx, "localhost", ca_pem, 0, &offered));
    assert_false(offered);
    assert_int_equal(mg_tls_resume_count(), 1);
    /* OpenSSL's server sends two tickets: both are kept, for sessions
     * that start together */
    n = mg_tls_resume_sessions();
    assert_int_equal(n, 2);
    /* each ticket is offered once */
    ssl = SSL_new(ctx);
    assert_true(
        mg_tls_resume_prepare(ssl, "localhost", 4711, "localhost", ca_pem));
    SSL_free(ssl);
    assert_int_equal(mg_tls_resume_sessions(), n - 1);
    assert_true(resume_round(ctx, "localhost", ca_pem, 0, &offered));
    assert_true(offered);
    assert_int_equal(mg_tls_resume_count(), 1);
    assert_true(mg_tls_resume_sessions() >= 1);
    assert_true(resume_round(ctx, "localhost", ca_pem, 0, &offered));
    /* never more than eight for one upstream */
    /* full handshakes (the client offers nothing) bring two each: at
     * most eight are kept for one upstream */
    for (int i = 0; i < 10; i++) {
        struct mg_conn conn = {.alpn = NULL};
        struct pair p;

        pair_init(&p, ctx, &conn);
        client_for(&p, "localhost");
        (void)mg_tls_resume_prepare(p.c, "localhost", 4711, "localhost",
                                    ca_pem);
        assert_int_equal(SSL_set_session(p.c, NULL), 1);
        pair_run(&p);
        assert_int_equal(p.c_rc, 1);
        pair_exchange(&p);
        assert_false(SSL_session_reused(p.c));
        (void)SSL_shutdown(p.c);
        pair_free(&p);
    }
    assert_int_equal(mg_tls_resume_sessions(), 8);

    /* another name, another CA file: nothing offered */
    assert_false(resume_round(ctx, "127.0.0.1", ca_pem, 0, &offered));
    assert_false(offered);
    assert_false(resume_round(ctx, "localhost", cert_pem, 0, &offered));
    assert_false(offered);
    assert_int_equal(mg_tls_resume_count(), 3);

    /* a flush drops all; the next handshake is a full one */
    mg_tls_resume_flush();
    assert_int_equal(mg_tls_resume_count(), 0);
    assert_int_equal(mg_tls_resume_sessions(), 0);
    assert_false(resume_round(ctx, "localhost", ca_pem, 0, &offered));
    assert_false(offered);
    mg_tls_resume_flush();
    SSL_CTX_free(ctx);
}

static void
test_resume_flush_in_flight(void **state)
{
    SSL_CTX *ctx = resume_ctx();
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;

    (void)state;
    /* a handshake begun before a flush (a reload) never caches */
    pair_init(&p, ctx, &conn);
    client_for(&p, "localhost");
    assert_false(
        mg_tls_resume_prepare(p.c, "localhost", 4711, "localhost", ca_pem));
    mg_tls_resume_flush();
    pair_run(&p);
    assert_int_equal(p.c_rc, 1);
    pair_exchange(&p);
    assert_int_equal(mg_tls_resume_count(), 0);
    pair_free(&p);

    /* nor does a handshake whose certificate did not verify */
    pair_init(&p, ctx, &conn);
    client_for(&p, "wrong.example");
    (void)mg_tls_resume_prepare(p.c, "wrong.example", 4711, "wrong.example",
                                ca_pem);
    pair_run(&p);
    assert_int_equal(p.c_rc, -1);
    assert_int_equal(mg_tls_resume_count(), 0);
    pair_free(&p);
    SSL_CTX_free(ctx);
}

static void
test_resume_tls12_and_lifetime(void **state)
{
    SSL_CTX *ctx = resume_ctx();
    struct mg_conn conn = {.alpn = NULL};
    struct pair p;
    SSL_SESSION *sess;
    bool offered;

    (void)state;
    assert_false(
        resume_round(ctx, "localhost", ca_pem, TLS1_2_VERSION, &offered));
    assert_int_equal(mg_tls_resume_count(), 1);
    /* a TLS 1.2 session stays for the next ones */
    assert_true(
        resume_round(ctx, "localhost", ca_pem, TLS1_2_VERSION, &offered));
    assert_int_equal(mg_tls_resume_count(), 1);
    assert_int_equal(mg_tls_resume_sessions(), 1);
    assert_true(
        resume_round(ctx, "localhost", ca_pem, TLS1_2_VERSION, &offered));

    /* older than an hour: dropped, whatever the server allowed */
    pair_init(&p, ctx, &conn);
    client_for(&p, "localhost");
    assert_true(
        mg_tls_resume_prepare(p.c, "localhost", 4711, "localhost", ca_pem));
    sess = SSL_get_session(p.c);
    assert_non_null(sess);
    assert_int_equal(SSL_SESSION_set_timeout(sess, 86400), 1);
    assert_true(SSL_SESSION_set_time(sess, (long)time(NULL) - 3601) != 0);
    SSL_free(p.s);
    p.s = NULL;
    pair_free(&p); /* never handshaken: the session stays resumable */
    assert_false(
        resume_round(ctx, "localhost", ca_pem, TLS1_2_VERSION, &offered));
    assert_false(offered);
    mg_tls_resume_flush();
    SSL_CTX_free(ctx);
}

static void
test_resume_bounded(void **state)
{
    SSL_CTX *ctx = resume_ctx();
    char host[32];
    bool offered;
    int i;

    (void)state;
    /* 1030 names (all "localhost" to the server: the key is ours) */
    for (i = 0; i < 1030; i++) {
        struct mg_conn conn = {.alpn = NULL};
        struct pair p;

        (void)snprintf(host, sizeof(host), "localhost-%d", i);
        pair_init(&p, ctx, &conn);
        client_for(&p, "localhost");
        assert_false(
            mg_tls_resume_prepare(p.c, host, 4711, "localhost", ca_pem));
        pair_run(&p);
        assert_int_equal(p.c_rc, 1);
        pair_exchange(&p);
        (void)SSL_shutdown(p.c);
        pair_free(&p);
    }
    assert_int_equal(mg_tls_resume_count(), 1024);
    /* the oldest went first */
    (void)offered;
    for (i = 0; i < 1030; i++) {
        SSL *ssl = SSL_new(ctx);

        (void)snprintf(host, sizeof(host), "localhost-%d", i);
        assert_int_equal(
            mg_tls_resume_prepare(ssl, host, 4711, "localhost", ca_pem),
            i >= 6);
        SSL_free(ssl);
    }
    mg_tls_resume_flush();
    SSL_CTX_free(ctx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_ctx_profile),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_handshake_by_name),
        cmocka_unit_test(test_handshake_wrong_name),
        cmocka_unit_test(test_handshake_by_ip),
        cmocka_unit_test(test_client_setup_rejects),
        cmocka_unit_test(test_tls11_refused),
        cmocka_unit_test(test_tls12_ciphers),
        cmocka_unit_test(test_alpn),
        cmocka_unit_test(test_resume_tls13),
        cmocka_unit_test(test_resume_flush_in_flight),
        cmocka_unit_test(test_resume_tls12_and_lifetime),
        cmocka_unit_test(test_resume_bounded),
#define OB(t) cmocka_unit_test_setup_teardown(t, srv_setup, srv_teardown)
        OB(test_outbound_plain),
        OB(test_outbound_implicit),
        OB(test_outbound_implicit_ip),
        OB(test_outbound_untrusted),
        OB(test_outbound_starttls),
        OB(test_outbound_filter),
        OB(test_outbound_refused),
        OB(test_outbound_next_address),
        OB(test_outbound_all_refused),
        OB(test_outbound_timeout_tls),
        OB(test_outbound_timeout_dns),
        OB(test_outbound_submit_fails),
        OB(test_outbound_unresolvable),
        OB(test_outbound_bad_spec),
#undef OB
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
