/*
 * core/conn.c -- the buffered connection every protocol module drives.
 *
 * One ev_io per socket; plain and TLS look the same to modules. Events go
 * to the module's handler; a close requested inside the handler is
 * deferred until it returns, and a fatal condition found meanwhile (write
 * error, HTTP request line) becomes one MG_CONN_ERROR after it returns.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "mg.h"

#define CONN_READ_CHUNK  16384        /* the first read of a conn */
#define CONN_READ_MAX    (128 * 1024) /* reads grow up to this in bulk */
#define CONN_IN_MAX      (256 * 1024) /* stop reading past this */
#define CONN_OUT_HIWAT   (256 * 1024)
#define CONN_OUT_LOWAT   (64 * 1024)
#define CONN_FLUSH_MS    5000        /* final flush before a close */
#define CONN_TLS_RECORD  16384       /* TLS plaintext per record at most */
#define CONN_TLS_WBUF    (80 * 1024) /* records sent together: 64 KiB */
#define CONN_DEFAULT_MAX 1002        /* command line incl. CRLF (RFC 5321) */
#define CONN_BUCKETS     4096

enum conn_state {
    CONN_PROXYHDR, /* waiting for the PROXY v2 header */
    CONN_HANDSHAKE,
    CONN_OPEN,
    CONN_CLOSING, /* flushing before the free */
};

struct mg_conn {
    uint64_t id;
    int fd;
    SSL *ssl;
    bool outbound, tls_ready, tls_client_pending;
    enum conn_state state;
    struct mg_listener *listener; /* NULL for outbound */
    struct mg_generation *gen;    /* a ref is held */
    struct mg_modctx *mod;

    ev_io io;
    ev_timer idle, total, deadline; /* deadline: handshake/proxy/flush */
    uint32_t idle_ms;
    uint64_t total_ms;

    struct mg_buf in, out;
    size_t rsize; /* room asked for the next read; doubles while reads
                   * fill all they are given (message data) */
    struct mg_linereader lr;
    size_t pending_consume;

    mg_conn_fn fn;
    void *arg;
    unsigned depth;  /* nesting of handler calls */
    bool closed;     /* close() called: no more events */
    bool fatal;      /* deliver MG_CONN_ERROR after the handler */
    bool paused;     /* module paused reading */
    bool want_drain; /* module saw MG_AGAIN from write */
    bool shutdown;   /* on_shutdown delivered */
    bool counted;    /* accounted in the limits */
    bool ssl_write_wants_read, ssl_read_wants_write;
    bool ssl_buffered; /* reading stopped with bytes inside OpenSSL */
    BIO *tls_wbuf;     /* TLS records waiting to be sent together */

    struct sockaddr_storage real_sa; /* the socket's peer (limits) */
    unsigned char *phdr;             /* PROXY header being read */
    size_t phlen;
    char addr[64], local[64], proxy_addr[64];
    struct mg_peer peer;

    struct mg_conn *hnext;       /* id table */
    struct mg_conn *prev, *next; /* all conns */
};

static struct mg_conn *conn_table[CONN_BUCKETS];
static struct mg_conn *conn_list;
static unsigned conn_count;
static uint64_t conn_next_id = 1;

static void conn_update_io(struct mg_conn *c);
static void conn_free(struct mg_conn *c);
static void conn_finish_close(struct mg_conn *c);
static void conn_handshake(struct mg_conn *c);

/* ----------------------------------------------------------- bookkeeping */

static void
conn_register(struct mg_conn *c)
{
    size_t b;

    c->id = conn_next_id++;
    c->peer.id = c->id;
    b = c->id % CONN_BUCKETS;
    c->hnext = conn_table[b];
    conn_table[b] = c;
    c->next = conn_list;
    if (conn_list != NULL)
        conn_list->prev = c;
    conn_list = c;
    conn_count++;
}

static void
conn_unregister(struct mg_conn *c)
{
    struct mg_conn **pp = &conn_table[c->id % CONN_BUCKETS];

    while (*pp != NULL && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp == c)
        *pp = c->hnext;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        conn_list = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    conn_count--;
}

static struct mg_conn *
conn_find(uint64_t id)
{
    struct mg_conn *c;

    for (c = conn_table[id % CONN_BUCKETS]; c != NULL; c = c->hnext) {
        if (c->id == id)
            return c->closed ? NULL : c;
    }
    return NULL;
}

unsigned
mg_conns_count(void)
{
    return conn_count;
}

struct mg_generation *
mg_conn_generation(const struct mg_conn *c)
{
    return c->gen;
}

const char *const *
mg_conn_alpn_list(const struct mg_conn *c)
{
    return c->listener != NULL ? c->listener->ops->alpn : NULL;
}

static void
conn_logv(struct mg_conn *c, enum mg_log_level level, const char *fmt,
          va_list ap)
{
    char prefix[128];

    if (!mg_log_enabled(level))
        return;
    snprintf(prefix, sizeof(prefix), "conn %llu %s", (unsigned long long)c->id,
             c->addr);
    mg_vlogp(level, prefix, fmt, ap);
}

static void MG_PRINTF(3, 4)
    conn_log(struct mg_conn *c, enum mg_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    conn_logv(c, level, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------- dispatching */

/* Deliver an event; afterwards act on a close or a fatal condition that
 * the handler (or the core inside it) asked for. */
static bool
conn_emit(struct mg_conn *c, enum mg_conn_event ev)
{
    bool final =
        ev == MG_CONN_TIMEOUT || ev == MG_CONN_EOF || ev == MG_CONN_ERROR;

    if (c->closed || c->fn == NULL) {
        if (final && !c->closed)
            conn_finish_close(c);
        return false;
    }
    c->depth++;
    c->fn(c, ev, c->arg);
    c->depth--;
    if (c->depth > 0)
        return !c->closed;
    if (!c->closed && c->fatal && !final) {
        c->fatal = false;
        c->depth++;
        c->fn(c, MG_CONN_ERROR, c->arg);
        c->depth--;
        final = true;
    }
    if (c->closed || final) {
        c->closed = true;
        conn_finish_close(c);
        return false;
    }
    return true;
}

/* A fatal condition found by the core's own callbacks: inside a handler it
 * is reported after it returns; otherwise right away (the caller must not
 * touch c afterwards). */
static void
conn_fail(struct mg_conn *c)
{
    if (c->closed)
        return;
    if (c->depth > 0) {
        c->fatal = true;
        return;
    }
    if (c->state != CONN_OPEN || c->fn == NULL) {
        c->closed = true;
        conn_finish_close(c);
        return;
    }
    conn_emit(c, MG_CONN_ERROR);
}

/* The same, found inside an API call a module may make from anywhere (a
 * timer, a work completion): never free the conn under the module's
 * feet; report from the loop instead. */
static void
conn_fail_later(struct mg_conn *c)
{
    if (c->closed)
        return;
    c->fatal = true;
    if (c->depth == 0) {
        ev_timer_stop(mg_loop, &c->deadline);
        ev_timer_set(&c->deadline, 0., 0.);
        ev_timer_start(mg_loop, &c->deadline);
    }
}

/* ---------------------------------------------------------------- I/O */

static void
conn_log_ssl_error(struct mg_conn *c, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    if (e != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        conn_log(c, MG_LOG_INFO, "%s: %s", what, buf);
    } else {
        conn_log(c, MG_LOG_INFO, "%s: %s", what,
                 errno ? strerror(errno) : "connection closed");
    }
    ERR_clear_error();
}

/* Output not yet handed to the kernel: queued, and TLS records held in
 * the write buffer. */
static size_t
conn_out_pending(const struct mg_conn *c)
{
    return mg_buf_len(&c->out) +
           (c->tls_wbuf != NULL ? BIO_wpending(c->tls_wbuf) : 0);
}

/* Output of more than one TLS record (a message being retrieved: a
 * 64 KiB one is five) goes through a buffer in front of the socket, so
 * that all its records leave in one send(), not one each. Set up at the
 * first such write only: connections that never write much (most) keep
 * no buffer. Handshake messages and alerts are flushed by OpenSSL. */
static void
conn_tls_buffer(struct mg_conn *c)
{
    BIO *sock = SSL_get_wbio(c->ssl), *buf;

    if (c->tls_wbuf != NULL || sock == NULL ||
        mg_buf_len(&c->out) <= CONN_TLS_RECORD)
        return;
    buf = BIO_new(BIO_f_buffer());
    if (buf == NULL)
        return;
    if (BIO_set_write_buffer_size(buf, CONN_TLS_WBUF) != 1 ||
        BIO_up_ref(sock) != 1) {
        BIO_free(buf);
        return;
    }
    BIO_push(buf, sock);
    SSL_set0_wbio(c->ssl, buf); /* drops the reference it held on sock */
    c->tls_wbuf = buf;
}

/* Send the TLS records held in the write buffer. */
static int
conn_tls_flush(struct mg_conn *c)
{
    if (c->tls_wbuf == NULL || BIO_wpending(c->tls_wbuf) == 0)
        return MG_OK;
    ERR_clear_error();
    if (BIO_flush(c->tls_wbuf) > 0)
        return MG_OK;
    if (BIO_should_retry(c->tls_wbuf))
        return MG_AGAIN;
    conn_log_ssl_error(c, "TLS write failed");
    return MG_ERROR;
}

/* Write queued output. MG_OK: all written; MG_AGAIN: more later;
 * MG_ERROR: the connection is broken. */
static int
conn_flush(struct mg_conn *c)
{
    if (c->ssl != NULL && c->tls_ready)
        conn_tls_buffer(c);
    while (mg_buf_len(&c->out) > 0) {
        size_t len = mg_buf_len(&c->out);
        ssize_t n;

        if (c->ssl != NULL && c->tls_ready) {
            int r;

            ERR_clear_error();
            c->ssl_write_wants_read = false;
            r = SSL_write(c->ssl, mg_buf_data(&c->out),
                          len > INT32_MAX ? INT32_MAX : (int)len);
            if (r <= 0) {
                int err = SSL_get_error(c->ssl, r);

                if (err == SSL_ERROR_WANT_WRITE)
                    return MG_AGAIN;
                if (err == SSL_ERROR_WANT_READ) {
                    c->ssl_write_wants_read = true;
                    return MG_AGAIN;
                }
                conn_log_ssl_error(c, "TLS write failed");
                return MG_ERROR;
            }
            n = r;
        } else {
            n = send(c->fd, mg_buf_data(&c->out), len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return MG_AGAIN;
                if (errno == EINTR)
                    continue;
                conn_log(c, MG_LOG_DEBUG, "write failed: %s", strerror(errno));
                return MG_ERROR;
            }
        }
        mg_buf_consume(&c->out, (size_t)n);
    }
    return conn_tls_flush(c);
}

/* Read what the socket has into the input buffer. MG_OK: got bytes;
 * MG_AGAIN: nothing now; MG_DECLINED: end of stream; MG_ERROR: broken. */
static int
conn_fill(struct mg_conn *c)
{
    size_t avail, want = c->rsize != 0 ? c->rsize : CONN_READ_CHUNK;
    char *p = mg_buf_reserve(&c->in, want, &avail);
    ssize_t n;

    if (c->ssl != NULL && c->tls_ready) {
        int r;

        ERR_clear_error();
        c->ssl_read_wants_write = false;
        r = SSL_read(c->ssl, p, avail > INT32_MAX ? INT32_MAX : (int)avail);
        if (r <= 0) {
            int err = SSL_get_error(c->ssl, r);

            if (err == SSL_ERROR_WANT_READ)
                return MG_AGAIN;
            if (err == SSL_ERROR_WANT_WRITE) {
                c->ssl_read_wants_write = true;
                return MG_AGAIN;
            }
            if (err == SSL_ERROR_ZERO_RETURN)
                return MG_DECLINED;
            conn_log_ssl_error(c, "TLS read failed");
            return MG_ERROR;
        }
        n = r;
    } else {
        n = recv(c->fd, p, avail, 0);
        if (n == 0)
            return MG_DECLINED;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return MG_AGAIN;
            conn_log(c, MG_LOG_DEBUG, "read failed: %s", strerror(errno));
            return MG_ERROR;
        }
    }
    mg_buf_commit(&c->in, (size_t)n);
    /* a read that filled its room: bulk data is coming, and fewer, larger
     * reads cost fewer system calls and ACKs (a command session stays at
     * the first size; TLS reads return one record at a time) */
    if ((size_t)n == avail && want < CONN_READ_MAX)
        c->rsize = want * 2;
    return MG_OK;
}

static bool
conn_reading(const struct mg_conn *c)
{
    if (c->state == CONN_CLOSING)
        return false;
    if (c->state != CONN_OPEN)
        return true;
    return !c->paused && mg_buf_len(&c->in) < CONN_IN_MAX;
}

static void
conn_update_io(struct mg_conn *c)
{
    int events = 0;

    if (c->fd < 0)
        return;
    if (c->state == CONN_HANDSHAKE) {
        events = SSL_want_write(c->ssl) ? EV_WRITE : EV_READ;
    } else {
        if (conn_reading(c) || c->ssl_write_wants_read)
            events |= EV_READ;
        if (conn_out_pending(c) > 0 || c->ssl_read_wants_write)
            events |= EV_WRITE;
    }
    if (events != (c->io.events & (EV_READ | EV_WRITE)) ||
        !ev_is_active(&c->io)) {
        ev_io_stop(mg_loop, &c->io);
        if (events != 0) {
            ev_io_set(&c->io, c->fd, events);
            ev_io_start(mg_loop, &c->io);
        }
    }
    /* records OpenSSL read ahead wake no epoll: deliver them now */
    if (c->ssl_buffered && c->state == CONN_OPEN && conn_reading(c)) {
        c->ssl_buffered = false;
        ev_feed_event(mg_loop, &c->io, EV_READ);
    }
}

static void
conn_touch(struct mg_conn *c)
{
    if (c->idle_ms > 0) {
        c->idle.repeat = c->idle_ms / 1000.0;
        ev_timer_again(mg_loop, &c->idle);
    }
}

/* ------------------------------------------------------------ reading */

static void
conn_on_input(struct mg_conn *c)
{
    bool got = false;
    int r = MG_AGAIN;

    while (conn_reading(c)) {
        r = conn_fill(c);
        if (r != MG_OK)
            break;
        got = true;
        if (c->ssl == NULL)
            break; /* one read per wakeup is fair; TLS may have records */
        /* with read-ahead one read() brings several records: decrypt
         * them all, the socket has no event for what OpenSSL holds */
        if (!SSL_has_pending(c->ssl))
            break;
    }
    /* stopped by the input cap or a pause with records still buffered:
     * conn_update_io() feeds a read event once reading resumes */
    c->ssl_buffered = c->ssl != NULL && c->tls_ready && !conn_reading(c) &&
                      SSL_has_pending(c->ssl);
    if (got) {
        conn_touch(c);
        if (!conn_emit(c, MG_CONN_READABLE))
            return;
    }
    if (r == MG_DECLINED) {
        conn_emit(c, MG_CONN_EOF);
        return;
    }
    if (r == MG_ERROR) {
        conn_emit(c, MG_CONN_ERROR);
        return;
    }
    conn_update_io(c);
}

/* Returns false when c is gone or closing. */
static bool
conn_on_output(struct mg_conn *c)
{
    int r = conn_flush(c);

    if (r == MG_ERROR) {
        if (c->state == CONN_CLOSING) {
            conn_free(c);
            return false;
        }
        conn_emit(c, MG_CONN_ERROR);
        return false;
    }
    if (c->state == CONN_CLOSING) {
        if (r == MG_OK)
            conn_free(c);
        else
            conn_update_io(c);
        return false;
    }
    if (c->want_drain && mg_buf_len(&c->out) < CONN_OUT_LOWAT) {
        c->want_drain = false;
        if (!conn_emit(c, MG_CONN_DRAINED))
            return false;
    }
    conn_update_io(c);
    return true;
}

/* ------------------------------------------------------- PROXY header */

static void conn_ready(struct mg_conn *c);

#define PROXY_FIXED 16
#define PROXY_MAX   (PROXY_FIXED + 536)

/* Read the header and not one byte more: what follows may be a TLS
 * ClientHello that OpenSSL must read from the socket itself. */
static int
conn_read_proxyhdr(struct mg_conn *c)
{
    for (;;) {
        size_t need = PROXY_FIXED;
        ssize_t n;

        if (c->phlen >= PROXY_FIXED)
            need += ((size_t)c->phdr[14] << 8) | c->phdr[15];
        if (need > PROXY_MAX)
            return MG_OK; /* let the parser say what is wrong */
        if (c->phlen >= need)
            return MG_OK;
        n = recv(c->fd, c->phdr + c->phlen, need - c->phlen, 0);
        if (n == 0)
            return MG_DECLINED;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? MG_AGAIN
                                                           : MG_ERROR;
        }
        c->phlen += (size_t)n;
        if (memcmp(c->phdr, "\r\n\r\n\0\r\nQUIT\n",
                   c->phlen < 12 ? c->phlen : 12) != 0)
            return MG_OK; /* not a v2 signature: the parser refuses it */
    }
}

static void
conn_on_proxyhdr(struct mg_conn *c)
{
    struct mg_proxy_info info;
    const char *err;
    size_t used;
    int r;

    if (c->phdr == NULL)
        c->phdr = mg_xmalloc(PROXY_MAX);
    r = conn_read_proxyhdr(c);
    if (r == MG_AGAIN)
        return;
    if (r == MG_DECLINED || r == MG_ERROR) {
        conn_log(c, MG_LOG_INFO, "closed before the PROXY header");
        conn_fail(c);
        return;
    }
    r = mg_proxyv2_parse(c->phdr, c->phlen, &info, &used, &err);
    if (r == MG_AGAIN)
        return;
    if (r != MG_OK) {
        conn_log(c, MG_LOG_WARNING, "bad PROXY header: %s; closing", err);
        conn_fail(c);
        return;
    }
    free(c->phdr);
    c->phdr = NULL;
    if (!info.local) {
        bool exempt = false;

        /* limits count the real client, not the load balancer */
        mg_limits_leave((struct sockaddr *)&c->real_sa, c->listener);
        c->counted = false;
        /* the listener's own count already includes this conn */
        if (mg_limits_enter((struct sockaddr *)&info.src, &c->gen->config->s,
                            NULL, &exempt) != MG_OK) {
            conn_log(c, MG_LOG_INFO, "refused (connection limit)");
            conn_fail(c);
            return;
        }
        c->real_sa = info.src;
        c->counted = true;
        c->peer.limit_exempt = exempt;
        snprintf(c->proxy_addr, sizeof(c->proxy_addr), "%s", c->addr);
        c->peer.proxy_addr = c->proxy_addr;
        c->peer.proxied = true;
        memcpy(&c->peer.sa, &info.src, sizeof(info.src));
        c->peer.salen = info.srclen;
        mg_sockaddr_text((struct sockaddr *)&info.src, c->addr, sizeof(c->addr),
                         &c->peer.port);
        conn_log(c, MG_LOG_DEBUG, "PROXY header from %s", c->proxy_addr);
    }
    ev_timer_stop(mg_loop, &c->deadline);
    conn_ready(c);
}

/* ---------------------------------------------------------------- TLS */

static void
conn_tls_info(struct mg_conn *c)
{
    c->peer.tls = true;
    c->peer.tls_version = SSL_get_version(c->ssl);
    c->peer.tls_cipher = SSL_get_cipher_name(c->ssl);
    c->peer.sni = SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
}

static void
conn_start_handshake(struct mg_conn *c)
{
    uint32_t ms = c->gen->config->s.handshake_timeout_ms;

    c->state = CONN_HANDSHAKE;
    ev_timer_stop(mg_loop, &c->deadline);
    ev_timer_set(&c->deadline, ms / 1000.0, 0.);
    ev_timer_start(mg_loop, &c->deadline);
    conn_handshake(c);
}

static void
conn_handshake(struct mg_conn *c)
{
    int r;

    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        ev_timer_stop(mg_loop, &c->deadline);
        c->tls_ready = true;
        c->state = CONN_OPEN;
        conn_tls_info(c);
        conn_log(c, MG_LOG_DEBUG, "TLS established: %s %s%s",
                 c->peer.tls_version, c->peer.tls_cipher,
                 SSL_session_reused(c->ssl) ? " (resumed)" : "");
        if (c->fn == NULL && c->listener != NULL) {
            conn_ready(c); /* implicit TLS: now the module sees it */
            return;
        }
        if (conn_emit(c, MG_CONN_TLS_READY))
            conn_on_input(c);
        return;
    }

    int err = SSL_get_error(c->ssl, r);

    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        conn_update_io(c);
        return;
    }
    conn_log_ssl_error(c, "TLS handshake failed");
    c->state = CONN_OPEN; /* so that the module (if any) hears of it */
    conn_fail(c);
}

/* ------------------------------------------------------------ watchers */

static void
conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct mg_conn *c = w->data;

    (void)loop;
    switch (c->state) {
    case CONN_PROXYHDR:
        conn_on_proxyhdr(c);
        return;
    case CONN_HANDSHAKE:
        conn_handshake(c);
        return;
    case CONN_CLOSING:
        conn_on_output(c);
        return;
    case CONN_OPEN:
        break;
    }
    if ((revents & EV_WRITE) || c->ssl_write_wants_read) {
        if (!conn_on_output(c))
            return;
    }
    if (revents & EV_READ || c->ssl_read_wants_write)
        conn_on_input(c);
}

static void
conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct mg_conn *c = w->data;

    (void)loop;
    (void)revents;
    conn_log(c, MG_LOG_INFO, "idle timeout");
    conn_emit(c, MG_CONN_TIMEOUT);
}

static void
conn_total_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct mg_conn *c = w->data;

    (void)loop;
    (void)revents;
    conn_log(c, MG_LOG_INFO, "session time limit reached");
    conn_emit(c, MG_CONN_TIMEOUT);
}

static void
conn_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct mg_conn *c = w->data;

    (void)loop;
    (void)revents;
    switch (c->state) {
    case CONN_CLOSING:
        conn_log(c, MG_LOG_DEBUG, "final flush timed out");
        conn_free(c);
        return;
    case CONN_PROXYHDR:
        conn_log(c, MG_LOG_INFO, "no PROXY header in time; closing");
        break;
    case CONN_HANDSHAKE:
        conn_log(c, MG_LOG_INFO, "TLS handshake timed out; closing");
        break;
    case CONN_OPEN:
        if (c->fatal) { /* from conn_fail_later() */
            c->fatal = false;
            conn_emit(c, MG_CONN_ERROR);
        }
        return;
    }
    c->state = CONN_OPEN;
    conn_fail(c);
}

/* -------------------------------------------------------------- create */

static struct mg_conn *
conn_new(int fd, struct mg_generation *gen)
{
    struct mg_conn *c = mg_xcalloc(1, sizeof(*c));

    c->fd = fd;
    c->gen = gen;
    mg_generation_ref(gen);
    mg_buf_init(&c->in);
    mg_buf_init(&c->out);
    c->lr.max = CONN_DEFAULT_MAX;
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_init(&c->idle, conn_idle_cb);
    c->idle.data = c;
    ev_init(&c->total, conn_total_cb);
    c->total.data = c;
    ev_init(&c->deadline, conn_deadline_cb);
    c->deadline.data = c;
    c->peer.addr = c->addr;
    c->peer.local_addr = c->local;
    conn_register(c);
    return c;
}

static void
conn_fill_local(struct mg_conn *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(c->fd, (struct sockaddr *)&ss, &len) == 0)
        mg_sockaddr_text((struct sockaddr *)&ss, c->local, sizeof(c->local),
                         &c->peer.local_port);
}

/* The module takes over: after the PROXY header and implicit TLS. */
static void
conn_ready(struct mg_conn *c)
{
    struct mg_listener *l = c->listener;

    c->state = CONN_OPEN;
    if (l->tls == MG_TLS_IMPLICIT && !c->tls_ready) {
        conn_start_handshake(c);
        return;
    }
    conn_log(c, MG_LOG_DEBUG, "accepted on %s", l->name);
    c->depth++;
    l->ops->on_accept(c, l->entry, l->arg);
    c->depth--;
    if (c->fn == NULL && !c->closed) {
        conn_log(c, MG_LOG_ERROR, "module %s set no handler; closing",
                 c->mod->mod->name);
        c->closed = true;
    }
    if (c->closed || c->fatal) {
        if (!c->closed && c->fatal)
            conn_emit(c, MG_CONN_ERROR);
        else
            conn_finish_close(c);
        return;
    }
    /* bytes may already wait in the socket or in OpenSSL */
    conn_on_input(c);
}

void
mg_conn_accepted(int fd, const struct sockaddr *sa, socklen_t salen,
                 struct mg_listener *l, bool exempt)
{
    struct mg_conn *c = conn_new(fd, l->gen);

    c->listener = l;
    c->mod = l->mod;
    c->counted = true;
    l->nconns++;
    memcpy(&c->real_sa, sa, salen);
    memcpy(&c->peer.sa, sa, salen);
    c->peer.salen = salen;
    c->peer.limit_exempt = exempt;
    c->peer.listener = l->name;
    mg_sockaddr_text(sa, c->addr, sizeof(c->addr), &c->peer.port);
    conn_fill_local(c);

    if (l->tls == MG_TLS_IMPLICIT || l->tls == MG_TLS_STARTTLS) {
        c->ssl = SSL_new(l->gen->tls);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
            conn_log_ssl_error(c, "cannot set up TLS");
            c->closed = true;
            conn_finish_close(c);
            return;
        }
        SSL_set_ex_data(c->ssl, mg_tls_conn_index, c);
        SSL_set_accept_state(c->ssl);
    }
    if (l->proxy_protocol) {
        if (!mg_netlist_match(&l->trusted_proxies, sa)) {
            conn_log(c, MG_LOG_WARNING,
                     "PROXY protocol listener %s: %s is not a trusted "
                     "proxy; closing",
                     l->name, c->addr);
            c->closed = true;
            conn_finish_close(c);
            return;
        }
        c->state = CONN_PROXYHDR;
        ev_timer_set(&c->deadline,
                     l->gen->config->s.handshake_timeout_ms / 1000.0, 0.);
        ev_timer_start(mg_loop, &c->deadline);
        conn_update_io(c);
        return;
    }
    conn_ready(c);
}

struct mg_conn *
mg_conn_outbound(int fd, struct mg_modctx *mod, SSL *ssl, bool tls_done)
{
    struct mg_conn *c = conn_new(fd, mod->gen);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    c->outbound = true;
    c->mod = mod;
    c->ssl = ssl;
    c->state = CONN_OPEN;
    c->lr.max = 64 * 1024; /* upstream replies: the module bounds them */
    if (ssl != NULL) {
        SSL_set_ex_data(ssl, mg_tls_conn_index, c);
        if (tls_done) {
            c->tls_ready = true;
            conn_tls_info(c);
            /* what read-ahead took in with the handshake's last flight
             * (a TLS 1.2 server's greeting) wakes no epoll: feed it */
            c->ssl_buffered = SSL_has_pending(ssl);
        } else {
            c->tls_client_pending = true;
        }
    }
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0) {
        memcpy(&c->peer.sa, &ss, len);
        c->peer.salen = len;
        mg_sockaddr_text((struct sockaddr *)&ss, c->addr, sizeof(c->addr),
                         &c->peer.port);
    }
    c->peer.listener = "outbound";
    conn_fill_local(c);
    if (c->tls_ready)
        conn_log(c, MG_LOG_DEBUG, "TLS established: %s %s%s",
                 c->peer.tls_version, c->peer.tls_cipher,
                 SSL_session_reused(ssl) ? " (resumed)" : "");
    return c;
}

/* --------------------------------------------------------------- close */

static void
conn_free(struct mg_conn *c)
{
    ev_io_stop(mg_loop, &c->io);
    ev_timer_stop(mg_loop, &c->idle);
    ev_timer_stop(mg_loop, &c->total);
    ev_timer_stop(mg_loop, &c->deadline);
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    if (c->counted)
        mg_limits_leave((struct sockaddr *)&c->real_sa, c->listener);
    if (c->listener != NULL)
        c->listener->nconns--;
    if (c->gen->hooks != NULL)
        mg_hooks_cancel_conn(c->gen->hooks, c->id);
    conn_unregister(c);
    mg_buf_free(&c->in);
    mg_buf_free(&c->out);
    free(c->phdr);
    conn_log(c, MG_LOG_DEBUG, "closed");
    mg_generation_unref(c->gen);
    free(c);
}

/* After the last event: flush (bounded), then free. */
static void
conn_finish_close(struct mg_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->closed = true;
    c->fn = NULL;
    ev_timer_stop(mg_loop, &c->idle);
    ev_timer_stop(mg_loop, &c->total);
    ev_timer_stop(mg_loop, &c->deadline);
    if (c->state != CONN_OPEN || conn_out_pending(c) == 0 ||
        conn_flush(c) != MG_AGAIN) {
        if (c->ssl != NULL && c->tls_ready && c->state == CONN_OPEN) {
            ERR_clear_error();
            SSL_shutdown(c->ssl); /* best effort close_notify */
        }
        conn_free(c);
        return;
    }
    c->state = CONN_CLOSING;
    ev_timer_set(&c->deadline, CONN_FLUSH_MS / 1000.0, 0.);
    ev_timer_start(mg_loop, &c->deadline);
    conn_update_io(c);
}

static void
conn_api_close(struct mg_conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    if (c->depth == 0)
        conn_finish_close(c);
}

/* Ids of all conns: handlers may close other conns while we iterate. */
static uint64_t *
conn_ids(size_t *n_r)
{
    uint64_t *ids = mg_xcalloc(conn_count + 1, sizeof(*ids));
    size_t n = 0;

    for (struct mg_conn *c = conn_list; c != NULL; c = c->next)
        ids[n++] = c->id;
    *n_r = n;
    return ids;
}

static struct mg_conn *
conn_find_any(uint64_t id)
{
    struct mg_conn *c;

    for (c = conn_table[id % CONN_BUCKETS]; c != NULL; c = c->hnext) {
        if (c->id == id)
            return c;
    }
    return NULL;
}

void
mg_conns_shutdown(struct mg_generation *gen)
{
    size_t n;
    uint64_t *ids = conn_ids(&n);

    for (size_t i = 0; i < n; i++) {
        struct mg_conn *c = conn_find(ids[i]);

        if (c == NULL || (gen != NULL && c->gen != gen) || c->shutdown)
            continue;
        c->shutdown = true;
        if (c->listener == NULL || c->state != CONN_OPEN || c->fn == NULL) {
            /* not yet handed to a module, or outbound: its owner ends it */
            if (c->listener != NULL) {
                c->closed = true;
                conn_finish_close(c);
            }
            continue;
        }
        c->depth++;
        c->listener->ops->on_shutdown(c, c->listener->arg);
        c->depth--;
        if (c->closed || c->fatal) {
            if (!c->closed)
                conn_emit(c, MG_CONN_ERROR);
            else
                conn_finish_close(c);
        }
    }
    free(ids);
}

void
mg_conns_close_all(void)
{
    struct mg_conn *c, *next;
    size_t n;
    uint64_t *ids = conn_ids(&n);

    for (size_t i = 0; i < n; i++) {
        c = conn_find_any(ids[i]);
        if (c == NULL)
            continue;
        if (c->state == CONN_CLOSING) {
            conn_free(c);
            continue;
        }
        if (!c->closed && c->fn != NULL && c->state == CONN_OPEN) {
            conn_log(c, MG_LOG_INFO, "closed at shutdown");
            conn_emit(c, MG_CONN_ERROR); /* final: the module frees */
            continue;
        }
        c->closed = true;
        mg_buf_clear(&c->out);
        conn_finish_close(c);
    }
    free(ids);
    /* the final flushes are abandoned too */
    for (c = conn_list; c != NULL; c = next) {
        next = c->next;
        conn_free(c);
    }
}

/* ------------------------------------------------------------- the API */

static void
conn_api_set_handler(struct mg_conn *c, mg_conn_fn fn, void *arg)
{
    c->fn = fn;
    c->arg = arg;
}

static void
conn_apply_consume(struct mg_conn *c)
{
    if (c->pending_consume > 0) {
        mg_buf_consume(&c->in, c->pending_consume);
        c->pending_consume = 0;
    }
}

/* An HTTP request line on a mail port is a cross-protocol attack
 * (ALPACA): never answer it. */
static bool
conn_is_http_request(const char *line, size_t len)
{
    static const char *const methods[] = {
        "GET ",     "POST ",   "HEAD ",  "PUT ",   "OPTIONS ",
        "CONNECT ", "DELETE ", "PATCH ", "TRACE ", NULL,
    };
    bool method = false;

    for (size_t i = 0; methods[i] != NULL; i++) {
        size_t n = strlen(methods[i]);

        if (len > n && memcmp(line, methods[i], n) == 0) {
            method = true;
            break;
        }
    }
    if (!method || len < 9)
        return false;
    return memcmp(line + len - 9, " HTTP/1.", 8) == 0 ||
           memcmp(line + len - 9, " HTTP/2.", 8) == 0;
}

static int
conn_api_getline(struct mg_conn *c, const char **line, size_t *len,
                 enum mg_eol *eol)
{
    size_t used;
    int r;

    conn_apply_consume(c);
    if (c->closed || c->fatal || c->state != CONN_OPEN)
        return MG_AGAIN;
    r = mg_line_next(&c->in, &c->lr, line, len, eol, &used);
    c->pending_consume = used;
    if (r == MG_OK && !c->outbound && conn_is_http_request(*line, *len)) {
        conn_log(c, MG_LOG_WARNING,
                 "HTTP request on a %s port (cross-protocol attack?); "
                 "closing",
                 c->listener->ops->protocol);
        c->pending_consume = 0;
        mg_buf_clear(&c->in);
        conn_fail(c);
        return MG_AGAIN;
    }
    conn_update_io(c); /* reading may resume below the input cap */
    return r;
}

static void
conn_api_set_line_max(struct mg_conn *c, size_t max)
{
    c->lr.max = max < 3 ? 3 : max;
}

static void
conn_api_peek(struct mg_conn *c, const char **data, size_t *len)
{
    conn_apply_consume(c);
    c->lr.scanned = 0;
    *data = mg_buf_data(&c->in);
    *len = mg_buf_len(&c->in);
}

static void
conn_api_consume(struct mg_conn *c, size_t n)
{
    conn_apply_consume(c);
    if (n > mg_buf_len(&c->in))
        n = mg_buf_len(&c->in);
    mg_buf_consume(&c->in, n);
    c->lr.scanned = 0;
    conn_update_io(c);
}

static void
conn_api_pause_read(struct mg_conn *c, bool pause)
{
    c->paused = pause;
    conn_update_io(c);
}

static int
conn_api_write(struct mg_conn *c, const void *buf, size_t len)
{
    bool was_empty;

    if (c->closed || c->state != CONN_OPEN)
        return MG_ERROR;
    was_empty = conn_out_pending(c) == 0;
    mg_buf_append(&c->out, buf, len);
    if (was_empty && (c->ssl == NULL || c->tls_ready)) {
        /* write at once: most replies fit the socket buffer */
        if (conn_flush(c) == MG_ERROR) {
            mg_buf_clear(&c->out);
            conn_fail_later(c);
            return MG_ERROR;
        }
    }
    conn_update_io(c);
    if (mg_buf_len(&c->out) > CONN_OUT_HIWAT) {
        c->want_drain = true;
        return MG_AGAIN;
    }
    return MG_OK;
}

static int
conn_api_printf(struct mg_conn *c, const char *fmt, ...)
{
    char small[512], *big = NULL;
    va_list ap;
    int n, r;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return MG_ERROR;
    if ((size_t)n < sizeof(small))
        return conn_api_write(c, small, (size_t)n);
    big = mg_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    r = conn_api_write(c, big, (size_t)n);
    free(big);
    return r;
}

/* A reply line must not smuggle protocol: no CR, LF or NUL. */
/* Printable text only: a CR or LF would inject reply lines, and other
 * control bytes have no place in a protocol reply. */
static bool
conn_reply_line_ok(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return false;
    }
    return true;
}

static int
conn_api_write_reply(struct mg_conn *c, const struct mg_reply *r)
{
    struct mg_buf b;
    int ret;

    if (r->code < 200 || r->code > 599 || r->nlines == 0 ||
        (r->ecode != NULL && !conn_reply_line_ok(r->ecode)))
        return MG_ERROR;
    mg_buf_init(&b);
    for (size_t i = 0; i < r->nlines; i++) {
        char head[32];
        int n;

        if (!conn_reply_line_ok(r->lines[i])) {
            mg_buf_free(&b);
            return MG_ERROR;
        }
        n = snprintf(head, sizeof(head), "%d%c", r->code,
                     i + 1 < r->nlines ? '-' : ' ');
        mg_buf_append(&b, head, (size_t)n);
        if (r->ecode != NULL) {
            mg_buf_append(&b, r->ecode, strlen(r->ecode));
            mg_buf_append(&b, " ", 1);
        }
        mg_buf_append(&b, r->lines[i], strlen(r->lines[i]));
        mg_buf_append(&b, "\r\n", 2);
    }
    ret = conn_api_write(c, mg_buf_data(&b), mg_buf_len(&b));
    mg_buf_free(&b);
    return ret;
}

/* The records in the TLS write buffer count as written, like bytes in
 * the socket's buffer: back-pressure (MG_AGAIN from write, DRAINED, a
 * module's check of this against the same mark) rests on the queue
 * alone. Counting them here let a module see more than CONN_OUT_HIWAT
 * queued after a write that never said MG_AGAIN, and wait for a DRAINED
 * that never came (a POP3 session that stopped reading for good). */
static size_t
conn_api_write_queued(const struct mg_conn *c)
{
    return mg_buf_len(&c->out);
}

static int
conn_api_starttls(struct mg_conn *c)
{
    if (c->closed || c->ssl == NULL || c->tls_ready)
        return MG_ERROR;
    if (c->outbound && !c->tls_client_pending)
        return MG_ERROR;
    /* Anything the peer pipelined after the command came in plaintext:
     * it must never be taken as coming over TLS (CVE-2011-0411). */
    conn_apply_consume(c);
    if (mg_buf_len(&c->in) > 0)
        conn_log(c, MG_LOG_INFO,
                 "discarding %zu bytes sent before the TLS handshake",
                 mg_buf_len(&c->in));
    mg_buf_clear(&c->in);
    c->lr.scanned = 0;
    c->lr.discarding = false;
    c->tls_client_pending = false;
    /* the reply to STARTTLS must go out in plaintext first */
    if (conn_flush(c) != MG_OK) {
        conn_fail_later(c);
        return MG_ERROR;
    }
    c->depth++; /* a failing handshake is reported after this call */
    conn_start_handshake(c);
    c->depth--;
    if (c->fatal && c->depth == 0)
        conn_fail_later(c);
    return MG_OK;
}

static const struct mg_peer *
conn_api_peer(const struct mg_conn *c)
{
    return &c->peer;
}

static void
conn_api_set_timeouts(struct mg_conn *c, uint32_t idle_ms, uint64_t total_ms)
{
    c->idle_ms = idle_ms;
    c->total_ms = total_ms;
    ev_timer_stop(mg_loop, &c->idle);
    if (idle_ms > 0) {
        ev_timer_set(&c->idle, idle_ms / 1000.0, idle_ms / 1000.0);
        ev_timer_start(mg_loop, &c->idle);
    }
    ev_timer_stop(mg_loop, &c->total);
    if (total_ms > 0) {
        ev_timer_set(&c->total, (double)total_ms / 1000.0, 0.);
        ev_timer_start(mg_loop, &c->total);
    }
}

static void
conn_api_log(struct mg_conn *c, enum mg_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    conn_logv(c, level, fmt, ap);
    va_end(ap);
}

static bool
conn_api_shutting_down(const struct mg_conn *c)
{
    return c->shutdown;
}

const struct mg_conn_api mg_conn_api = {
    .size = sizeof(struct mg_conn_api),
    .set_handler = conn_api_set_handler,
    .getline = conn_api_getline,
    .set_line_max = conn_api_set_line_max,
    .peek = conn_api_peek,
    .consume = conn_api_consume,
    .pause_read = conn_api_pause_read,
    .write = conn_api_write,
    .printf = conn_api_printf,
    .write_reply = conn_api_write_reply,
    .write_queued = conn_api_write_queued,
    .starttls = conn_api_starttls,
    .peer = conn_api_peer,
    .set_timeouts = conn_api_set_timeouts,
    .close = conn_api_close,
    .find = conn_find,
    .log = conn_api_log,
    .shutting_down = conn_api_shutting_down,
};
