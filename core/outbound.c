/* core/outbound.c -- outbound connections: DNS on a worker, address filter,
 * non-blocking connect over the resolved addresses, optional TLS */
#include "config.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>

#include "mg.h"

#define OUTBOUND_DEFAULT_TIMEOUT_MS 30000

/** One mg_outbound_connect() in flight. */
struct outbound {
    struct mg_modctx *mod;
    char *host;
    int port;
    enum mg_tls_mode tls;
    SSL_CTX *ctx;  /* one reference, ours */
    char *ca_file; /* part of the TLS session cache key */
    bool resume;   /* offer and cache TLS sessions */
    uint32_t timeout_ms;
    int (*filter)(const struct sockaddr *sa, socklen_t len, void *arg);
    mg_connect_fn done;
    void *arg;

    /* written by the worker, read on the loop after its done callback */
    struct addrinfo *res;
    int gai_err;
    int gai_errno; /* errno for EAI_SYSTEM (errno is per thread) */

    struct addrinfo *next; /* next address to try */
    unsigned permitted;    /* addresses the filter let through */
    char addr[64];         /* the address being tried, as text */
    char *last_error;      /* why the previous address failed */
    int fd;
    SSL *ssl;
    bool resolving;     /* a worker job holds this struct */
    bool failed;        /* done() is due (or was called) with an error */
    char *error;        /* the final error text */
    ev_io io;           /* connect, then handshake readiness */
    ev_timer deadline;  /* DNS + connect + TLS */
    ev_timer fail_soon; /* delivers the failure from the loop */
};

/** A client context per CA file, kept for the life of the process. */
struct outbound_ctx {
    struct outbound_ctx *next;
    char *ca_file; /* NULL: the system store only */
    SSL_CTX *ctx;
};

static struct outbound_ctx *outbound_ctxs;

static SSL_CTX *
outbound_client_ctx(const char *ca_file, const char **error_r)
{
    struct outbound_ctx *oc;
    SSL_CTX *ctx;

    for (oc = outbound_ctxs; oc != NULL; oc = oc->next) {
        if ((oc->ca_file == NULL && ca_file == NULL) ||
            (oc->ca_file != NULL && ca_file != NULL &&
             strcmp(oc->ca_file, ca_file) == 0))
            return oc->ctx;
    }
    ctx = mg_tls_client_ctx(ca_file, error_r);
    if (ctx == NULL)
        return NULL;
    mg_tls_resume_enable(ctx);
    oc = mg_xcalloc(1, sizeof(*oc));
    oc->ca_file = ca_file != NULL ? mg_xstrdup(ca_file) : NULL;
    oc->ctx = ctx;
    oc->next = outbound_ctxs;
    outbound_ctxs = oc;
    return ctx;
}

void
mg_outbound_reset(void)
{
    while (outbound_ctxs != NULL) {
        struct outbound_ctx *oc = outbound_ctxs;

        outbound_ctxs = oc->next;
        SSL_CTX_free(oc->ctx); /* connections in flight hold their own */
        free(oc->ca_file);
        free(oc);
    }
    mg_tls_resume_flush();
}

static void
outbound_free(struct outbound *ob)
{
    ev_io_stop(mg_loop, &ob->io);
    ev_timer_stop(mg_loop, &ob->deadline);
    ev_timer_stop(mg_loop, &ob->fail_soon);
    if (ob->ssl != NULL)
        SSL_free(ob->ssl);
    if (ob->fd >= 0)
        close(ob->fd);
    if (ob->res != NULL)
        freeaddrinfo(ob->res);
    free(ob->last_error);
    free(ob->error);
    if (ob->ctx != NULL)
        SSL_CTX_free(ob->ctx);
    free(ob->ca_file);
    free(ob->host);
    free(ob);
}

/* "host:port", with brackets around an IPv6 literal */
static const char *
outbound_target(const struct outbound *ob)
{
    bool v6 = strchr(ob->host, ':') != NULL;

    return mg_error("%s%s%s:%d", v6 ? "[" : "", ob->host, v6 ? "]" : "",
                    ob->port);
}

static void
outbound_fail_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct outbound *ob = w->data;

    (void)loop;
    (void)revents;
    ev_timer_stop(mg_loop, &ob->fail_soon);
    ob->done(NULL, MG_ERROR, ob->error, ob->arg);
    /* a timed-out DNS job still holds ob: its done callback frees it */
    if (!ob->resolving)
        outbound_free(ob);
}

/* Give up: release the socket now, tell the caller from the loop (never
 * from inside mg_outbound_connect(), so the caller is not re-entered). */
static void
outbound_fail(struct outbound *ob, const char *reason)
{
    if (ob->failed)
        return;
    ob->failed = true;
    ob->error = mg_xasprintf("connect to %s: %s", outbound_target(ob), reason);
    ev_io_stop(mg_loop, &ob->io);
    ev_timer_stop(mg_loop, &ob->deadline);
    if (ob->ssl != NULL) {
        SSL_free(ob->ssl);
        ob->ssl = NULL;
    }
    if (ob->fd >= 0) {
        close(ob->fd);
        ob->fd = -1;
    }
    ev_timer_set(&ob->fail_soon, 0., 0.);
    ev_timer_start(mg_loop, &ob->fail_soon);
}

static void
outbound_succeed(struct outbound *ob, bool tls_done)
{
    mg_connect_fn done = ob->done;
    void *arg = ob->arg;
    struct mg_conn *c;

    ev_io_stop(mg_loop, &ob->io);
    ev_timer_stop(mg_loop, &ob->deadline);
    /* the conn owns the socket and the SSL from here on */
    c = mg_conn_outbound(ob->fd, ob->mod, ob->ssl, tls_done);
    ob->fd = -1;
    ob->ssl = NULL;
    outbound_free(ob);
    if (c == NULL)
        done(NULL, MG_ERROR, "cannot set up the connection", arg);
    else
        done(c, MG_OK, NULL, arg);
}

static void outbound_try_next(struct outbound *ob);

/* The current address failed before TLS: remember why, try the next. */
static void
outbound_address_failed(struct outbound *ob, int err)
{
    free(ob->last_error);
    ob->last_error = mg_xasprintf("%s: %s", ob->addr, strerror(err));
    ev_io_stop(mg_loop, &ob->io);
    close(ob->fd);
    ob->fd = -1;
    outbound_try_next(ob);
}

static void
outbound_handshake(struct outbound *ob)
{
    long vr;
    int r, err, sys;

    ERR_clear_error();
    errno = 0;
    r = SSL_connect(ob->ssl);
    if (r == 1) {
        outbound_succeed(ob, true);
        return;
    }
    err = SSL_get_error(ob->ssl, r);
    sys = errno;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        ev_io_stop(mg_loop, &ob->io);
        ev_io_set(&ob->io, ob->fd,
                  err == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
        ev_io_start(mg_loop, &ob->io);
        return;
    }
    vr = SSL_get_verify_result(ob->ssl);
    if (vr != X509_V_OK) {
        outbound_fail(ob,
                      mg_error("TLS with %s: certificate verification "
                               "failed: %s",
                               ob->addr, X509_verify_cert_error_string(vr)));
    } else if (err == SSL_ERROR_SSL) {
        unsigned long e = ERR_peek_last_error();
        const char *why = ERR_reason_error_string(e);

        outbound_fail(ob, mg_error("TLS handshake with %s failed: %s", ob->addr,
                                   why ? why : "protocol error"));
    } else if (err == SSL_ERROR_SYSCALL && sys != 0) {
        outbound_fail(
            ob, mg_error("TLS handshake with %s: %s", ob->addr, strerror(sys)));
    } else {
        outbound_fail(ob, mg_error("TLS handshake with %s: connection "
                                   "closed by the peer",
                                   ob->addr));
    }
    ERR_clear_error();
}

/* TCP is up: plaintext is done; TLS gets an SSL in connect state. */
static void
outbound_connected(struct outbound *ob)
{
    const char *error;

    ev_io_stop(mg_loop, &ob->io);
    if (ob->tls == MG_TLS_NONE) {
        outbound_succeed(ob, false);
        return;
    }
    ob->ssl = SSL_new(ob->ctx);
    if (ob->ssl == NULL) {
        outbound_fail(ob, "cannot create a TLS session");
        ERR_clear_error();
        return;
    }
    if (SSL_set_fd(ob->ssl, ob->fd) != 1) {
        outbound_fail(ob, "cannot attach the TLS session to the socket");
        ERR_clear_error();
        return;
    }
    if (mg_tls_client_setup(ob->ssl, ob->host, &error) != MG_OK) {
        outbound_fail(ob, error);
        return;
    }
    /* the name checked is the host (mg_tls_client_setup) */
    if (ob->resume)
        (void)mg_tls_resume_prepare(ob->ssl, ob->host, ob->port, ob->host,
                                    ob->ca_file);
    if (ob->tls == MG_TLS_STARTTLS)
        outbound_succeed(ob, false);
    else
        outbound_handshake(ob);
}

static void
outbound_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct outbound *ob = w->data;
    int err = 0;
    socklen_t len = sizeof(err);

    (void)loop;
    (void)revents;
    if (ob->ssl != NULL) {
        outbound_handshake(ob);
        return;
    }
    if (getsockopt(ob->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0)
        outbound_address_failed(ob, err);
    else
        outbound_connected(ob);
}

static void
outbound_addr_text(const struct addrinfo *ai, char *buf, size_t size)
{
    char host[NI_MAXHOST];

    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), NULL, 0,
                    NI_NUMERICHOST) != 0)
        (void)snprintf(host, sizeof(host), "?");
    (void)snprintf(buf, size, ai->ai_family == AF_INET6 ? "[%s]" : "%s", host);
}

/* Start a non-blocking connect to the next permitted address; when none
 * is left, fail with the most telling reason. */
static void
outbound_try_next(struct outbound *ob)
{
    static const int one = 1;

    while (ob->next != NULL) {
        struct addrinfo *ai = ob->next;

        ob->next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (ob->filter != NULL &&
            ob->filter(ai->ai_addr, ai->ai_addrlen, ob->arg) != MG_OK)
            continue;
        ob->permitted++;
        outbound_addr_text(ai, ob->addr, sizeof(ob->addr));
        ob->fd = socket(ai->ai_family,
                        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (ob->fd < 0) {
            free(ob->last_error);
            ob->last_error = mg_xasprintf("socket: %s", strerror(errno));
            continue;
        }
        (void)setsockopt(ob->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* even an immediate success goes through the watcher, so the
         * caller's done() always runs from the loop */
        if (connect(ob->fd, ai->ai_addr, ai->ai_addrlen) != 0 &&
            errno != EINPROGRESS) {
            int err = errno;

            free(ob->last_error);
            ob->last_error = mg_xasprintf("%s: %s", ob->addr, strerror(err));
            close(ob->fd);
            ob->fd = -1;
            continue;
        }
        ev_io_set(&ob->io, ob->fd, EV_WRITE);
        ev_io_start(mg_loop, &ob->io);
        return;
    }
    if (ob->permitted == 0 && ob->res != NULL)
        outbound_fail(ob, mg_error("no permitted address for %s", ob->host));
    else if (ob->last_error != NULL)
        outbound_fail(ob, ob->last_error);
    else
        outbound_fail(ob, mg_error("no address for %s", ob->host));
}

/* Worker thread: no loop calls here. */
static void
outbound_resolve(void *arg)
{
    struct outbound *ob = arg;
    struct addrinfo hints;
    char port[16];

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* no AI_ADDRCONFIG: it hides loopback-only setups */
    hints.ai_flags = AI_NUMERICSERV;
    (void)snprintf(port, sizeof(port), "%d", ob->port);
    ob->gai_err = getaddrinfo(ob->host, port, &hints, &ob->res);
    if (ob->gai_err != 0) {
        ob->gai_errno = errno;
        ob->res = NULL;
    }
}

static void
outbound_resolved(void *arg)
{
    struct outbound *ob = arg;

    ob->resolving = false;
    if (ob->failed) {
        /* timed out meanwhile: done() has run or is about to */
        if (!ev_is_active(&ob->fail_soon))
            outbound_free(ob);
        return;
    }
    if (ob->gai_err != 0) {
        outbound_fail(ob, mg_error("cannot resolve %s: %s", ob->host,
                                   ob->gai_err == EAI_SYSTEM
                                       ? strerror(ob->gai_errno)
                                       : gai_strerror(ob->gai_err)));
        return;
    }
    ob->next = ob->res;
    outbound_try_next(ob);
}

static void
outbound_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct outbound *ob = w->data;
    const char *stage;

    (void)loop;
    (void)revents;
    if (ob->resolving)
        stage = mg_error("resolving %s", ob->host);
    else if (ob->ssl != NULL)
        stage = mg_error("in the TLS handshake with %s", ob->addr);
    else
        stage = mg_error("connecting to %s", ob->addr);
    outbound_fail(ob,
                  mg_error("timed out after %u ms %s", ob->timeout_ms, stage));
}

static int
outbound_check_spec(const struct mg_connect_spec *spec, const char **error_r)
{
    const char *h = spec->host;

    if (h == NULL || *h == '\0') {
        *error_r = "outbound connect: the host is empty";
        return MG_ERROR;
    }
    if (strpbrk(h, "\r\n") != NULL) {
        *error_r = "outbound connect: the host contains CR or LF";
        return MG_ERROR;
    }
    if (spec->port < 1 || spec->port > 65535) {
        *error_r = mg_error("outbound connect to %s: port %d is not in "
                            "1..65535",
                            h, spec->port);
        return MG_ERROR;
    }
    if (spec->tls != MG_TLS_NONE && spec->tls != MG_TLS_STARTTLS &&
        spec->tls != MG_TLS_IMPLICIT) {
        *error_r = mg_error("outbound connect to %s: unknown TLS mode %d", h,
                            (int)spec->tls);
        return MG_ERROR;
    }
    return MG_OK;
}

int
mg_outbound_connect(struct mg_modctx *mod, const struct mg_connect_spec *spec,
                    mg_connect_fn done, void *arg, const char **error_r)
{
    struct outbound *ob;
    SSL_CTX *ctx = NULL;

    /* a C string cannot hold a NUL, so CR/LF are the in-band risks */
    if (outbound_check_spec(spec, error_r) != MG_OK)
        return MG_ERROR;
    if (spec->tls != MG_TLS_NONE) {
        ctx = outbound_client_ctx(spec->ca_file, error_r);
        if (ctx == NULL)
            return MG_ERROR;
        /* a reload may drop the cached context while DNS runs */
        SSL_CTX_up_ref(ctx);
    }

    ob = mg_xcalloc(1, sizeof(*ob));
    ob->mod = mod;
    ob->host = mg_xstrdup(spec->host);
    ob->port = spec->port;
    ob->tls = spec->tls;
    ob->ctx = ctx;
    ob->ca_file = spec->ca_file != NULL ? mg_xstrdup(spec->ca_file) : NULL;
    ob->resume = !spec->no_tls_resume;
    ob->timeout_ms = spec->connect_timeout_ms ? spec->connect_timeout_ms
                                              : OUTBOUND_DEFAULT_TIMEOUT_MS;
    ob->filter = spec->filter;
    ob->done = done;
    ob->arg = arg;
    ob->fd = -1;
    ev_io_init(&ob->io, outbound_io_cb, -1, EV_WRITE);
    ob->io.data = ob;
    ev_timer_init(&ob->deadline, outbound_deadline_cb, ob->timeout_ms / 1000.,
                  0.);
    ob->deadline.data = ob;
    ev_timer_init(&ob->fail_soon, outbound_fail_cb, 0., 0.);
    ob->fail_soon.data = ob;

    ev_timer_start(mg_loop, &ob->deadline);
    ob->resolving = true;
    if (mg_workers_submit(outbound_resolve, outbound_resolved, ob) != MG_OK) {
        ob->resolving = false;
        outbound_fail(ob, "cannot queue the name lookup");
    }
    return MG_OK;
}
