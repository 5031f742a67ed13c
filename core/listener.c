/* core/listener.c -- listening sockets: staging, binding, inheritance
 * across reloads, accepting under the connection limits */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mg.h"

#define LISTEN_BACKLOG   511
#define ACCEPT_BATCH     64
#define ACCEPT_RETRY_SEC 0.1 /* after EMFILE: pause instead of spinning */

static int
listener_parse_tls(const char *s, enum mg_tls_mode *mode)
{
    if (strcmp(s, "none") == 0)
        *mode = MG_TLS_NONE;
    else if (strcmp(s, "starttls") == 0)
        *mode = MG_TLS_STARTTLS;
    else if (strcmp(s, "implicit") == 0)
        *mode = MG_TLS_IMPLICIT;
    else
        return MG_ERROR;
    return MG_OK;
}

static const char *
listener_key(const struct mg_listener *l, char *buf, size_t size)
{
    if (l->address == NULL)
        snprintf(buf, size, "*:%d", l->port);
    else if (strchr(l->address, ':') != NULL)
        snprintf(buf, size, "[%s]:%d", l->address, l->port);
    else
        snprintf(buf, size, "%s:%d", l->address, l->port);
    return buf;
}

int
mg_listener_stage(struct mg_generation *gen, struct mg_modctx *mod,
                  const config_setting_t *entry,
                  const struct mg_listen_default *def,
                  const struct mg_listener_ops *ops, void *arg,
                  const char **error_r)
{
    struct mg_listener *l = mg_xcalloc(1, sizeof(*l));
    const char *address, *tls;
    char key[80];

    l->gen = gen;
    l->mod = mod;
    l->ops = ops;
    l->arg = arg;
    l->entry = entry;
    l->fd = -1;
    if (entry != NULL) {
        address = mg_cfg_string(entry, "address", NULL);
        l->port = (int)mg_cfg_int(entry, "port", 0);
        tls = mg_cfg_string(entry, "tls", "none");
        l->allow_plaintext_auth =
            mg_cfg_bool(entry, "allow_plaintext_auth", false);
        l->proxy_protocol = mg_cfg_bool(entry, "proxy_protocol", false);
        l->max_connections = mg_cfg_int(entry, "max_connections", 0);
        if (listener_parse_tls(tls, &l->tls) != MG_OK) {
            *error_r = mg_error("%s: listen: tls: \"%s\" is not one of "
                                "none, starttls, implicit",
                                mg_cfg_where(entry, "tls"), tls);
            goto fail;
        }
        if (l->port == 0) {
            *error_r = mg_error("%s: listen: every listener needs a port",
                                mg_cfg_where(entry, NULL));
            goto fail;
        }
        if (mg_cfg_netlist(entry, "trusted_proxies", &l->trusted_proxies,
                           error_r) != MG_OK)
            goto fail;
        if (l->proxy_protocol && l->trusted_proxies.n == 0) {
            *error_r = mg_error(
                "%s: listen: proxy_protocol needs trusted_proxies (the "
                "networks of the load balancers allowed to send the "
                "PROXY header)",
                mg_cfg_where(entry, "proxy_protocol"));
            goto fail;
        }
    } else {
        address = def->address;
        l->port = def->port;
        l->tls = def->tls;
    }
    if (address != NULL) {
        struct in6_addr a6;
        struct in_addr a4;

        if (inet_pton(AF_INET, address, &a4) == 1) {
            l->family = AF_INET;
        } else if (inet_pton(AF_INET6, address, &a6) == 1) {
            l->family = AF_INET6;
        } else {
            *error_r = mg_error("%s: listen: address \"%s\" is not an IP "
                                "address (write 0.0.0.0 or :: for all, or "
                                "leave it out for both)",
                                entry != NULL ? mg_cfg_where(entry, "address")
                                              : mod->mod->name,
                                address);
            goto fail;
        }
        l->address = mg_xstrdup(address);
    } else {
        l->family = AF_INET6; /* dual stack; IPv4 only if v6 is off */
    }
    l->name = mg_xasprintf("%s %s", mod->mod->name,
                           listener_key(l, key, sizeof(key)));
    for (struct mg_listener *o = gen->listeners; o != NULL; o = o->next) {
        char okey[80];

        if (strcmp(listener_key(o, okey, sizeof(okey)), key) == 0) {
            *error_r = mg_error("%s: listen: %s is configured twice (also "
                                "for module %s)",
                                entry != NULL ? mg_cfg_where(entry, "port")
                                              : mod->mod->name,
                                key, o->mod->mod->name);
            goto fail;
        }
    }
    if (l->tls != MG_TLS_NONE && ops->alpn == NULL)
        mg_log(MG_LOG_DEBUG, "%s: no ALPN protocol ids: ALPN offers refused",
               l->name);
    l->next = gen->listeners;
    gen->listeners = l;
    return MG_OK;

fail:
    mg_netlist_free(&l->trusted_proxies);
    free(l->address);
    free(l->name);
    free(l);
    return MG_ERROR;
}

static int
listener_bind(struct mg_listener *l, const char **error_r)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1, zero = 0, fd;

    memset(&ss, 0, sizeof(ss));
    if (l->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)l->port);
        inet_pton(AF_INET, l->address, &sin->sin_addr);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)l->port);
        if (l->address != NULL)
            inet_pton(AF_INET6, l->address, &sin6->sin6_addr);
        else
            sin6->sin6_addr = in6addr_any;
        len = sizeof(*sin6);
    }
    fd = socket(l->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 && l->address == NULL && errno == EAFNOSUPPORT) {
        /* no IPv6 on this host: the wildcard becomes 0.0.0.0 */
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        memset(&ss, 0, sizeof(ss));
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)l->port);
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof(*sin);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    if (fd < 0) {
        *error_r = mg_error("%s: socket: %s", l->name, strerror(errno));
        return MG_ERROR;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY,
                   l->address == NULL ? &zero : &one, sizeof(int));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int e = errno;

        close(fd);
        *error_r =
            mg_error("%s: cannot listen: %s%s", l->name, strerror(e),
                     e == EACCES       ? " (ports below 1024 need root or "
                                         "CAP_NET_BIND_SERVICE)"
                     : e == EADDRINUSE ? " (another server runs on this port?)"
                     : e == EADDRNOTAVAIL ? " (the address is not on this host)"
                                          : "");
        return MG_ERROR;
    }
    if (listen(fd, LISTEN_BACKLOG) < 0) {
        int e = errno;

        close(fd);
        *error_r = mg_error("%s: listen: %s", l->name, strerror(e));
        return MG_ERROR;
    }
    l->fd = fd;
    return MG_OK;
}

int
mg_listeners_open(struct mg_generation *gen, struct mg_generation *old,
                  const char **error_r)
{
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next) {
        char key[80], okey[80];

        listener_key(l, key, sizeof(key));
        l->inherited = false;
        for (struct mg_listener *o = old != NULL ? old->listeners : NULL;
             o != NULL; o = o->next) {
            if (o->fd >= 0 &&
                strcmp(listener_key(o, okey, sizeof(okey)), key) == 0) {
                l->fd = o->fd; /* shared until the switch is committed */
                l->inherited = true;
                break;
            }
        }
        if (!l->inherited && listener_bind(l, error_r) != MG_OK) {
            mg_listeners_close(gen);
            return MG_ERROR;
        }
    }
    return MG_OK;
}

static void
listener_refuse(struct mg_listener *l, int fd, const char *addr)
{
    mg_log(MG_LOG_INFO, "%s: refused %s: connection limit reached", l->name,
           addr);
    if (l->tls != MG_TLS_IMPLICIT && l->ops->refuse_line != NULL) {
        char line[512];
        int n = snprintf(line, sizeof(line), "%s\r\n", l->ops->refuse_line);

        /* best effort: a fresh socket's buffer takes one short line */
        if (n > 0 && send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT))
            shutdown(fd, SHUT_WR);
    }
    close(fd);
}

static void
listener_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct mg_listener *l = w->data;

    (void)revents;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        char addr[64];
        bool exempt;
        int one = 1;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                mg_log(MG_LOG_WARNING,
                       "%s: accept: %s; pausing new connections briefly "
                       "(raise the open files limit or lower "
                       "max_connections)",
                       l->name, strerror(errno));
                ev_io_stop(loop, &l->accept_io);
                ev_timer_start(loop, &l->retry_timer);
                return;
            }
            mg_log(MG_LOG_ERROR, "%s: accept: %s", l->name, strerror(errno));
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        mg_sockaddr_text((struct sockaddr *)&ss, addr, sizeof(addr), NULL);
        if (mg_limits_enter((struct sockaddr *)&ss, &l->gen->config->s, l,
                            &exempt) != MG_OK) {
            listener_refuse(l, fd, addr);
            continue;
        }
        mg_conn_accepted(fd, (struct sockaddr *)&ss, len, l, exempt);
    }
}

static void
listener_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct mg_listener *l = w->data;

    (void)revents;
    if (l->fd >= 0 && !l->gen->stopping)
        ev_io_start(loop, &l->accept_io);
}

void
mg_listeners_start(struct mg_generation *gen)
{
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next) {
        ev_io_init(&l->accept_io, listener_accept_cb, l->fd, EV_READ);
        l->accept_io.data = l;
        ev_timer_init(&l->retry_timer, listener_retry_cb, ACCEPT_RETRY_SEC, 0.);
        l->retry_timer.data = l;
        ev_io_start(mg_loop, &l->accept_io);
        mg_log(MG_LOG_INFO, "listening on %s (%s%s)", l->name,
               l->tls == MG_TLS_IMPLICIT   ? "implicit TLS"
               : l->tls == MG_TLS_STARTTLS ? "STARTTLS"
                                           : "plaintext",
               l->proxy_protocol ? ", PROXY protocol" : "");
    }
}

void
mg_listeners_stop(struct mg_generation *gen)
{
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next) {
        if (l->fd < 0)
            continue;
        ev_io_stop(mg_loop, &l->accept_io);
        ev_timer_stop(mg_loop, &l->retry_timer);
    }
}

/* The new generation took these sockets: the old one must not close
 * them. Called once the switch to `gen` is committed. */
void
mg_listeners_commit(struct mg_generation *gen, struct mg_generation *old)
{
    if (old == NULL)
        return;
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next) {
        if (!l->inherited)
            continue;
        for (struct mg_listener *o = old->listeners; o != NULL; o = o->next) {
            if (o->fd == l->fd) {
                ev_io_stop(mg_loop, &o->accept_io);
                ev_timer_stop(mg_loop, &o->retry_timer);
                o->fd = -1;
            }
        }
        l->inherited = false;
    }
}

void
mg_listeners_close(struct mg_generation *gen)
{
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next) {
        if (l->fd >= 0) {
            ev_io_stop(mg_loop, &l->accept_io);
            ev_timer_stop(mg_loop, &l->retry_timer);
            if (!l->inherited) {
                mg_log(MG_LOG_INFO, "closed listener %s", l->name);
                close(l->fd);
            }
        }
        l->fd = -1;
    }
}

void
mg_listeners_free(struct mg_generation *gen)
{
    struct mg_listener *l, *next;

    mg_listeners_close(gen);
    for (l = gen->listeners; l != NULL; l = next) {
        next = l->next;
        mg_netlist_free(&l->trusted_proxies);
        free(l->address);
        free(l->name);
        free(l);
    }
    gen->listeners = NULL;
}
