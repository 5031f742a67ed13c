/* smtpload -- an SMTP load generator that authenticates (Postfix's
 * smtp-source cannot): C threads with blocking sockets and OpenSSL, each
 * running sessions of EHLO, STARTTLS, EHLO, AUTH PLAIN, then up to M
 * messages (MAIL, RCPT, DATA, lock-step, no pipelining), QUIT. Every
 * message is SIZE bytes with a Message-ID of its own. Prints one line:
 *
 *   msgs=N fail=F secs=S msgs/s=R cpu_ms_per_msg=C
 *
 * (C: the generator's own CPU, so that a saturated generator shows). The
 * server's certificate is not verified: this measures servers on
 * loopback. -T none -A none speak plain SMTP without AUTH (smtp-sink).
 *
 *   smtpload -p PORT [-H 127.0.0.1] [-c CONC] [-n MSGS] [-m PER_SESSION]
 *            [-s SIZE] [-u USER] [-w PASS] [-f FROM] [-t RCPT]
 *            [-T starttls|none] [-A plain|none]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct opts {
    const char *host, *user, *pass, *from, *rcpt;
    int port, conc, per_session;
    long msgs;
    size_t size;
    bool tls, auth;
};

static struct opts o = {"127.0.0.1",
                        NULL,
                        NULL,
                        "bench@example.org",
                        "rcpt@example.org",
                        0,
                        1,
                        10,
                        100,
                        4096,
                        true,
                        true};
static SSL_CTX *ctx;
static atomic_long claimed, sent, failed;

/* One connection: a socket, TLS once STARTTLS is done, a line reader. */
struct conn {
    int fd;
    SSL *ssl;
    char buf[8192];
    size_t len, off;
};

static int
conn_write(struct conn *c, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w;
        if (c->ssl != NULL) {
            size_t done = 0;
            if (SSL_write_ex(c->ssl, s, n, &done) != 1)
                return -1;
            w = (ssize_t)done;
        } else {
            w = write(c->fd, s, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int
conn_fill(struct conn *c)
{
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == sizeof(c->buf))
        return -1;
    if (c->ssl != NULL) {
        size_t got = 0;
        if (SSL_read_ex(c->ssl, c->buf + c->len, sizeof(c->buf) - c->len,
                        &got) != 1)
            return -1;
        c->len += got;
        return 0;
    }
    ssize_t r;
    do
        r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return -1;
    c->len += (size_t)r;
    return 0;
}

/* Reads a whole reply (all its lines); returns its code, -1 on error.
 * `ext` (may be NULL) is set when a line names that extension. */
static int
conn_reply(struct conn *c, const char *ext, bool *has_ext)
{
    for (;;) {
        char *start = c->buf + c->off;
        char *nl = memchr(start, '\n', c->len - c->off);
        if (nl == NULL) {
            if (conn_fill(c) != 0)
                return -1;
            continue;
        }
        size_t n = (size_t)(nl - start) + 1;
        c->off += n;
        if (n < 5)
            return -1;
        if (ext != NULL && n > 4 + strlen(ext) &&
            strncasecmp(start + 4, ext, strlen(ext)) == 0)
            *has_ext = true;
        if (start[3] == ' ' || start[3] == '\r')
            return atoi(start);
    }
}

static int command(struct conn *c, int want, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
command(struct conn *c, int want, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line) || conn_write(c, line, (size_t)n))
        return -1;
    int code = conn_reply(c, NULL, NULL);
    return code / 100 == want / 100 ? 0 : -1;
}

static int
session_open(struct conn *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)o.port)};
    int one = 1;
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1)
        return -1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        conn_reply(c, NULL, NULL) != 220 ||
        command(c, 250, "EHLO load.example.org\r\n") != 0)
        return -1;
    if (o.tls) {
        if (command(c, 220, "STARTTLS\r\n") != 0 || c->off != c->len)
            return -1;
        c->ssl = SSL_new(ctx);
        if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1 ||
            SSL_set_tlsext_host_name(c->ssl, "localhost") != 1 ||
            SSL_connect(c->ssl) != 1)
            return -1;
        if (command(c, 250, "EHLO load.example.org\r\n") != 0)
            return -1;
    }
    if (o.auth) {
        /* AUTH PLAIN with an initial response: \0user\0pass in base64 */
        unsigned char raw[512], b64[700];
        size_t ul = strlen(o.user), pl = strlen(o.pass);
        if (ul + pl + 2 > sizeof(raw))
            return -1;
        raw[0] = 0;
        memcpy(raw + 1, o.user, ul);
        raw[1 + ul] = 0;
        memcpy(raw + 2 + ul, o.pass, pl);
        EVP_EncodeBlock(b64, raw, (int)(ul + pl + 2));
        if (command(c, 235, "AUTH PLAIN %s\r\n", (char *)b64) != 0)
            return -1;
    }
    return 0;
}

static void
session_close(struct conn *c, bool polite)
{
    if (polite)
        (void)command(c, 221, "QUIT\r\n");
    if (c->ssl != NULL) {
        if (polite)
            (void)SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
}

/* The message: headers with a Message-ID whose digits are rewritten per
 * message, lines of 76 characters up to `size`, then the final dot. */
static char *
message_make(size_t size, size_t *len, size_t *id_at)
{
    char *m = malloc(size + 200);
    if (m == NULL)
        return NULL;
    int n = snprintf(m, 200,
                     "From: <%s>\r\nTo: <%s>\r\nSubject: smtpload\r\n"
                     "Message-ID: <0000000000000000@smtpload.example>\r\n\r\n",
                     o.from, o.rcpt);
    *id_at = (size_t)(strstr(m, "Message-ID: <") - m) + 13;
    size_t l = (size_t)n;
    while (l + 78 <= size) {
        memset(m + l, 'x', 76);
        m[l] = 'a' + (char)(l % 26);
        memcpy(m + l + 76, "\r\n", 2);
        l += 78;
    }
    memcpy(m + l, ".\r\n", 3);
    *len = l + 3;
    return m;
}

static bool
send_one(struct conn *c, char *m, size_t len, size_t id_at, long id)
{
    char digits[17];
    snprintf(digits, sizeof(digits), "%016lx", id);
    memcpy(m + id_at, digits, 16);
    return command(c, 250, "MAIL FROM:<%s>\r\n", o.from) == 0 &&
           command(c, 250, "RCPT TO:<%s>\r\n", o.rcpt) == 0 &&
           command(c, 354, "DATA\r\n") == 0 && conn_write(c, m, len) == 0 &&
           conn_reply(c, NULL, NULL) == 250;
}

static void *
worker(void *arg)
{
    size_t len, id_at;
    char *m = message_make(o.size, &len, &id_at);
    (void)arg;
    if (m == NULL)
        return NULL;
    /* a session opens only for a message it has claimed */
    long id;
    while (atomic_load(&failed) <= 10 &&
           (id = atomic_fetch_add(&claimed, 1)) < o.msgs) {
        struct conn c;
        bool ok = session_open(&c) == 0;
        for (int k = 0; ok; k++) {
            ok = send_one(&c, m, len, id_at, id);
            atomic_fetch_add(ok ? &sent : &failed, 1);
            if (k + 1 == o.per_session ||
                (id = atomic_fetch_add(&claimed, 1)) >= o.msgs)
                break;
        }
        if (!ok) {
            fprintf(stderr, "smtpload: session failed (%ld sent so far)\n",
                    atomic_load(&sent));
            ERR_print_errors_fp(stderr);
            atomic_fetch_add(&failed, 1);
        }
        session_close(&c, ok);
    }
    free(m);
    return NULL;
}

static double
now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double
cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void
usage(void)
{
    fprintf(stderr, "usage: smtpload -p PORT [-H ADDR] [-c CONC] [-n MSGS] "
                    "[-m PER_SESSION] [-s SIZE] [-u USER] [-w PASS] [-f FROM] "
                    "[-t RCPT] [-T starttls|none] [-A plain|none]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int ch;
    while ((ch = getopt(argc, argv, "H:p:c:n:m:s:u:w:f:t:T:A:")) != -1) {
        switch (ch) {
        case 'H':
            o.host = optarg;
            break;
        case 'p':
            o.port = atoi(optarg);
            break;
        case 'c':
            o.conc = atoi(optarg);
            break;
        case 'n':
            o.msgs = atol(optarg);
            break;
        case 'm':
            o.per_session = atoi(optarg);
            break;
        case 's':
            o.size = (size_t)atol(optarg);
            break;
        case 'u':
            o.user = optarg;
            break;
        case 'w':
            o.pass = optarg;
            break;
        case 'f':
            o.from = optarg;
            break;
        case 't':
            o.rcpt = optarg;
            break;
        case 'T':
            o.tls = strcmp(optarg, "none") != 0;
            break;
        case 'A':
            o.auth = strcmp(optarg, "none") != 0;
            break;
        default:
            usage();
        }
    }
    if (o.port <= 0 || o.conc < 1 || o.conc > 256 || o.msgs < 1 ||
        o.per_session < 1 || o.size < 300 || o.size > 64 << 20 ||
        (o.auth && (o.user == NULL || o.pass == NULL)))
        usage();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return 1;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

    pthread_t th[256];
    double t0 = now(), c0 = cpu_s();
    for (int i = 0; i < o.conc; i++)
        if (pthread_create(&th[i], NULL, worker, NULL) != 0)
            return 1;
    for (int i = 0; i < o.conc; i++)
        pthread_join(th[i], NULL);
    double secs = now() - t0, cpu = cpu_s() - c0;
    long n = atomic_load(&sent);
    printf("msgs=%ld fail=%ld secs=%.3f msgs/s=%.1f cpu_ms_per_msg=%.3f\n", n,
           atomic_load(&failed), secs, (double)n / secs,
           n > 0 ? cpu * 1e3 / (double)n : 0.0);
    SSL_CTX_free(ctx);
    return atomic_load(&failed) > 0 || n != o.msgs ? 1 : 0;
}
