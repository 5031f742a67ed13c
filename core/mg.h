/*
 * core/mg.h -- declarations shared by the core's own files. Modules never
 * include this: their contract is include/mailgate/module.h.
 */
#ifndef MG_CORE_H
#define MG_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>
#include <libconfig.h>
#include <openssl/ssl.h>

#include <mailgate/module.h>

/* ------------------------------------------------------------ xalloc.c */

/* Allocation failure is not an input error: these abort with a message. */
void *mg_xmalloc(size_t n);
void *mg_xcalloc(size_t n, size_t size);
void *mg_xrealloc(void *p, size_t n);
char *mg_xstrdup(const char *s);
char *mg_xstrndup(const char *s, size_t n);
char *mg_xasprintf(const char *fmt, ...) MG_PRINTF(1, 2);
/** A broken invariant (never bad input): log and abort. */
_Noreturn void mg_fatalx(const char *fmt, ...) MG_PRINTF(1, 2);
/**
 * Format an error message into one of a few rotating static buffers and
 * return it, for `*error_r = mg_error(...)`. Loop thread only; the text
 * stays valid until several more errors have been formatted.
 */
const char *mg_error(const char *fmt, ...) MG_PRINTF(1, 2);

/* --------------------------------------------------------------- log.c */

enum mg_log_target {
    MG_LOGT_STDERR = 0,
    MG_LOGT_SYSLOG = 1,
};

/** Set the level and target; ident names the program in syslog. */
void mg_log_setup(const char *ident, enum mg_log_level level,
                  enum mg_log_target target);
bool mg_log_enabled(enum mg_log_level level);
void mg_log(enum mg_log_level level, const char *fmt, ...) MG_PRINTF(2, 3);
/** `prefix` (a module name, "conn 12 1.2.3.4") goes before the text. */
void mg_vlogp(enum mg_log_level level, const char *prefix, const char *fmt,
              va_list ap);
void mg_logp(enum mg_log_level level, const char *prefix, const char *fmt, ...)
    MG_PRINTF(3, 4);
/** "error" | "warning" | "info" | "debug" → level; MG_ERROR if unknown. */
int mg_log_level_parse(const char *s, enum mg_log_level *level_r);

/* --------------------------------------------------------------- buf.c */

/** A growable byte buffer with a consumed prefix (compacted lazily). */
struct mg_buf {
    char *data;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last byte */
    size_t cap;
};

void mg_buf_init(struct mg_buf *b);
void mg_buf_free(struct mg_buf *b);
static inline size_t
mg_buf_len(const struct mg_buf *b)
{
    return b->end - b->start;
}
static inline const char *
mg_buf_data(const struct mg_buf *b)
{
    /* a buffer that never held data has no storage: NULL + 0 is undefined
     * (found by tests/fuzz/fuzz_session: peek before the first read) */
    return b->data != NULL ? b->data + b->start : NULL;
}
void mg_buf_append(struct mg_buf *b, const void *data, size_t len);
/** Room for at least `min` more bytes at the end; returns the write
 * pointer and sets *avail_r. Follow with mg_buf_commit(). */
char *mg_buf_reserve(struct mg_buf *b, size_t min, size_t *avail_r);
void mg_buf_commit(struct mg_buf *b, size_t n);
void mg_buf_consume(struct mg_buf *b, size_t n);
void mg_buf_clear(struct mg_buf *b);

/** State of a bounded line reader over an input buffer. */
struct mg_linereader {
    size_t max;      /* longest line accepted, terminator included */
    size_t scanned;  /* bytes already searched for LF (resumable) */
    bool discarding; /* inside an overlong line: drop until LF */
};

/**
 * Find the next line in `in`. MG_OK: *line, *len (terminator excluded),
 * *eol, and *used_r (bytes to consume after the caller is done with the
 * line). MG_AGAIN: no full line yet. MG_DECLINED: a line is longer than
 * `max`, reported as soon as `max` bytes arrived without a line end (a
 * protocol can answer and disconnect at once); what is buffered of it is
 * dropped (*used_r is 0), and the rest is dropped silently as it arrives,
 * up to its LF, so the buffer stays bounded. Once per overlong line.
 */
int mg_line_next(struct mg_buf *in, struct mg_linereader *lr, const char **line,
                 size_t *len, enum mg_eol *eol, size_t *used_r);

/* ----------------------------------------------------------- netaddr.c */

/** An address with a prefix length; IPv4 is kept as IPv4. */
struct mg_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
};

struct mg_netlist {
    struct mg_cidr *v;
    size_t n;
};

/** Parse "192.0.2.1", "192.0.2.0/24", "2001:db8::/32", "::1". */
int mg_cidr_parse(const char *s, struct mg_cidr *out, const char **error_r);
/** True if sa (IPv4-mapped IPv6 counts as IPv4) is inside c. */
bool mg_cidr_match(const struct mg_cidr *c, const struct sockaddr *sa);
bool mg_netlist_match(const struct mg_netlist *l, const struct sockaddr *sa);
void mg_netlist_add(struct mg_netlist *l, const struct mg_cidr *c);
void mg_netlist_free(struct mg_netlist *l);
/** Address as text (IPv4-mapped IPv6 shown as IPv4) and port. */
void mg_sockaddr_text(const struct sockaddr *sa, char *buf, size_t size,
                      int *port_r);
/** Key for per-IP counting: the address bytes (v4-mapped → v4). */
size_t mg_sockaddr_key(const struct sockaddr *sa, uint8_t key[16]);

/* ---------------------------------------------------------- proxyv2.c */

/** What a PROXY protocol v2 header said. */
struct mg_proxy_info {
    bool local; /* LOCAL command: keep the real peer */
    struct sockaddr_storage src, dst;
    socklen_t srclen, dstlen;
};

/**
 * Parse a PROXY v2 header at the start of data (pure). MG_OK: *used_r
 * bytes belong to the header. MG_AGAIN: need more bytes. MG_ERROR: not a
 * valid v2 header (error text set); the connection must be closed.
 */
int mg_proxyv2_parse(const void *data, size_t len, struct mg_proxy_info *info,
                     size_t *used_r, const char **error_r);

/* --------------------------------------------------------------- cfg.c */

/** store.cipher: which encryption scheme new messages get. */
enum mg_store_cipher {
    MG_CIPHER_AUTO = 0,          /* AES-256-GCM where the CPU has AES */
    MG_CIPHER_AES256GCM = 1,     /* scheme 3 */
    MG_CIPHER_XCHACHA20POLY1305, /* scheme 2 */
};

/** Top-level settings of one configuration generation. */
struct mg_settings {
    char *file;         /* the config file as given */
    char *data_dir;     /* absolute */
    char *email_domain; /* lower case */
    enum mg_log_level log_level;
    bool log_target_set;
    enum mg_log_target log_target;
    char *tls_cert; /* absolute (relative paths are under data_dir) */
    char *tls_key;
    char *user; /* NULL: no privilege drop */
    char *group;
    char *module_dir; /* where modules are found by name */
    uint32_t drain_timeout_ms;
    uint32_t handshake_timeout_ms;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    struct mg_netlist limit_exempt;
    unsigned worker_threads;
    unsigned kdf_concurrency;           /* parallel Argon2id derivations */
    bool log_addresses;                 /* envelope addresses in the log */
    uint64_t store_map_size;            /* bytes (sparse) */
    uint64_t store_reserve;             /* bytes kept for deletions */
    unsigned store_sender_key_lifetime; /* seconds; 0: one per message */
    enum mg_store_cipher store_cipher;  /* the chunk cipher of new mail */
    bool store_drop_written_pages;      /* uncache written chunks */
};

/** A parsed and checked configuration file. */
struct mg_config {
    config_t cfg;
    struct mg_settings s;
    config_setting_t *modules; /* the `modules` list, may be NULL */
};

/**
 * Read and check a config file: syntax, top-level settings (unknown names,
 * types, ranges) and the shape of `modules`. Module sections are checked
 * against each module's schema later, in the generation. Errors name file,
 * line and setting.
 */
int mg_config_load(const char *path, const char *default_module_dir,
                   struct mg_config **cfg_r, const char **error_r);
void mg_config_free(struct mg_config *cfg);

/**
 * Check a group against a schema: every member must be named in `schema`
 * or in `extra` (either may be NULL), have the declared type, and an
 * integer must lie within [min, max]. `what` names the group in messages.
 */
int mg_cfg_check_group(const config_setting_t *group,
                       const struct mg_setting *schema,
                       const struct mg_setting *extra, const char *what,
                       const char **error_r);
/** "file:line" of a setting (or of the group when name is NULL). */
const char *mg_cfg_where(const config_setting_t *group, const char *name);
/** Dotted path of a setting, list elements as [i]:
 * "modules.[1].listen.[0].port" (rotating static buffer, like mg_error). */
const char *mg_cfg_path(const config_setting_t *s);
bool mg_cfg_bool(const config_setting_t *g, const char *name, bool def);
int64_t mg_cfg_int(const config_setting_t *g, const char *name, int64_t def);
const char *mg_cfg_string(const config_setting_t *g, const char *name,
                          const char *def);
const char *mg_cfg_strings(const config_setting_t *g, const char *name,
                           unsigned i);
/** Parse a list of CIDR strings (setting `name` of g) into l. */
int mg_cfg_netlist(const config_setting_t *g, const char *name,
                   struct mg_netlist *l, const char **error_r);

/** The core's schema of a listener entry (address, port, tls, …). */
extern const struct mg_setting mg_listener_schema[];

/* ------------------------------------------------------------ loader.c */

/**
 * The module `name`: from `path` when given, else `<module_dir>/<name>.so`.
 * Loaded once per process (RTLD_NOW | RTLD_LOCAL) and never unloaded; a
 * second request for the same name returns the same descriptor, unless the
 * path differs (refused: a duplicate). Checks symbol, ABI and name.
 */
const struct mg_module *mg_module_load(const char *name, const char *path,
                                       const char *module_dir,
                                       const char **error_r);
/** The checks alone (pure): ABI version, signature, name. */
int mg_module_check(const struct mg_module *mod, const char *name,
                    const char **error_r);
/** Forget the cache (tests only: the code stays mapped). */
void mg_module_cache_reset(void);

/* ------------------------------------------------------------- hooks.c */

struct mg_hooks;

/** Names of the hooks the core knows (doc/hooks.md); NULL-terminated. */
extern const char *const mg_hook_names[];

struct mg_hooks *mg_hooks_new(void);
void mg_hooks_free(struct mg_hooks *h);
/** Add a handler; the hook must be known (or start with "x-"). */
int mg_hooks_add(struct mg_hooks *h, const char *hook, int prio, mg_hook_fn fn,
                 void *arg, const char *owner, const char **error_r);
/** Remove every handler `owner` added. */
void mg_hooks_remove_owner(struct mg_hooks *h, const char *owner);
bool mg_hooks_has(const struct mg_hooks *h, const char *hook);
/** Run handlers in priority order (equal priorities: order of adding). */
enum mg_verdict mg_hooks_run(struct mg_hooks *h, struct mg_hook_call *call,
                             mg_hook_done_fn done, void *arg);
/** Resume a suspended run by call id. MG_DECLINED: no such run. */
int mg_hooks_resume(struct mg_hooks *h, uint64_t call_id, enum mg_verdict v,
                    const struct mg_reply *reply);
/** Abandon the suspended runs of a conn (it closed): done is not called. */
void mg_hooks_cancel_conn(struct mg_hooks *h, uint64_t conn_id);

/* ----------------------------------------------------------- workers.c */

/** Start n worker threads; completions come back on loop. */
int mg_workers_start(struct ev_loop *loop, unsigned n, const char **error_r);
int mg_workers_submit(mg_work_fn work, mg_work_done_fn done, void *arg);
/** Thread-safe: run fn(arg) on the loop. */
void mg_post(void (*fn)(void *), void *arg);
/** Finish queued jobs, join the threads. */
void mg_workers_stop(void);

/* --------------------------------------------------------------- tls.c */

/**
 * A server context with Mozilla's "intermediate" profile (TLS 1.2 and 1.3,
 * ECDHE AEAD suites), the certificate chain and key from PEM files, and an
 * ALPN callback that enforces each listener's protocol list (ALPACA).
 */
SSL_CTX *mg_tls_server_ctx(const char *cert, const char *key,
                           const char **error_r);
/** A client context verifying peers against the system store + ca_file. */
SSL_CTX *mg_tls_client_ctx(const char *ca_file, const char **error_r);
/** Prepare a client SSL: SNI (not for IP literals) and name/IP check. */
int mg_tls_client_setup(SSL *ssl, const char *host, const char **error_r);
/** Index of SSL ex_data holding the struct mg_conn *. */
extern int mg_tls_conn_index;

/* -------------------------------------------------------- tls_resume.c */

/** Give a client context the process-wide session cache. */
void mg_tls_resume_enable(SSL_CTX *ctx);
/** Tag a client SSL with its cache key (host, port, verify name, CA file)
 * and offer a cached session for it; true when one was offered. */
bool mg_tls_resume_prepare(SSL *ssl, const char *host, int port,
                           const char *verify_name, const char *ca_file);
/** Drop every cached session (reload, shutdown); sessions from handshakes
 * begun before are never cached. */
void mg_tls_resume_flush(void);
/** Upstreams with cached sessions now (at most 1024), and sessions. */
size_t mg_tls_resume_count(void);
size_t mg_tls_resume_sessions(void);
/** "subject, not after" of the context's certificate, for logs. */
const char *mg_tls_ctx_describe(SSL_CTX *ctx);
/** Provided by conn.c: the ALPN protocol ids ("smtp", …; NULL-terminated)
 * a server conn accepts, or NULL for none. The ALPN callback refuses a
 * client that offers ALPN but none of these (ALPACA). */
const char *const *mg_conn_alpn_list(const struct mg_conn *c);

/* ---------------------------------------------------------- listener.c */

struct mg_generation;
struct mg_modctx;

/** A listening socket of a module in a generation. */
struct mg_listener {
    struct mg_listener *next;
    struct mg_modctx *mod;
    struct mg_generation *gen;
    const struct mg_listener_ops *ops;
    void *arg;
    const config_setting_t *entry; /* its config entry (may be NULL) */
    char *name;                    /* "smtp 127.0.0.1:2525" */
    char *address;                 /* NULL = wildcard */
    int port;
    int family;
    enum mg_tls_mode tls;
    bool proxy_protocol;
    struct mg_netlist trusted_proxies;
    bool allow_plaintext_auth;
    int64_t max_connections; /* of this listener, 0 = global limit only */
    int fd;                  /* -1 until bound or inherited */
    bool inherited;          /* fd came from the previous generation */
    ev_io accept_io;
    ev_timer retry_timer; /* accept paused after EMFILE */
    unsigned nconns;
};

/** Stage a listener from a config entry (or a default). Not yet bound. */
int mg_listener_stage(struct mg_generation *gen, struct mg_modctx *mod,
                      const config_setting_t *entry,
                      const struct mg_listen_default *def,
                      const struct mg_listener_ops *ops, void *arg,
                      const char **error_r);
/** Bind (or take over from `old` by address) every listener of gen. */
int mg_listeners_open(struct mg_generation *gen, struct mg_generation *old,
                      const char **error_r);
/** Start and stop accepting. */
void mg_listeners_start(struct mg_generation *gen);
void mg_listeners_stop(struct mg_generation *gen);
/** Close the sockets not taken over by a newer generation. */
void mg_listeners_close(struct mg_generation *gen);
/** The switch to gen is final: sockets it took over now belong to it. */
void mg_listeners_commit(struct mg_generation *gen, struct mg_generation *old);
/** Close what is still open and free the listeners. */
void mg_listeners_free(struct mg_generation *gen);

/* Connection counting across all generations (limits). */
/** Account a new conn; MG_DECLINED when a limit is reached. */
int mg_limits_enter(const struct sockaddr *sa, const struct mg_settings *s,
                    struct mg_listener *l, bool *exempt_r);
void mg_limits_leave(const struct sockaddr *sa, struct mg_listener *l);
unsigned mg_limits_total(void);

/* -------------------------------------------------------------- conn.c */

/** The conn API table handed to modules. */
extern const struct mg_conn_api mg_conn_api;

/** Take over an accepted socket: PROXY header and implicit TLS handshake
 * if configured, then the listener's on_accept. */
void mg_conn_accepted(int fd, const struct sockaddr *sa, socklen_t salen,
                      struct mg_listener *l, bool exempt);
/** Wrap a connected outbound socket (outbound.c). `ssl`: NULL for
 * plaintext; with tls_done the handshake is complete (implicit TLS),
 * otherwise it is prepared in connect state for a later starttls(). */
struct mg_conn *mg_conn_outbound(int fd, struct mg_modctx *mod, SSL *ssl,
                                 bool tls_done);
/** Ask every conn of gen to shut down (module's on_shutdown). */
void mg_conns_shutdown(struct mg_generation *gen);
/** Close every conn at once (final exit). */
void mg_conns_close_all(void);
unsigned mg_conns_count(void);
/** The generation a conn belongs to (its settings and hooks). */
struct mg_generation *mg_conn_generation(const struct mg_conn *c);

/* ---------------------------------------------------------- outbound.c */

int mg_outbound_connect(struct mg_modctx *mod,
                        const struct mg_connect_spec *spec, mg_connect_fn done,
                        void *arg, const char **error_r);
/** Forget the client contexts and cached TLS sessions: a reload re-reads
 * the CA files, and no session outlives the trust it was verified under. */
void mg_outbound_reset(void);

/* -------------------------------------------------------- generation.c */

/** One module in one generation. */
struct mg_modctx {
    struct mg_generation *gen;
    const struct mg_module *mod;
    const config_setting_t *sect;
    void *state;
    bool configured, started;
    char *logname; /* "smtp" */
};

/** One configuration generation: the config, modules, listeners, hooks. */
struct mg_generation {
    uint64_t id;
    struct mg_config *config;
    struct mg_modctx *mods;
    size_t nmods;
    struct mg_listener *listeners;
    struct mg_hooks *hooks;
    SSL_CTX *tls; /* server context, NULL when no cert is configured */
    unsigned char cert_fp[32]; /* SHA-256 of the certificate (cert.changed) */
    unsigned refs;             /* conns and in-flight jobs of this generation */
    bool started, stopping;
};

/** Build (configure) a generation from a file; nothing is started. */
int mg_generation_build(const char *path, const char *module_dir,
                        struct mg_generation **gen_r, const char **error_r);
/** Open sockets (inheriting from old), start modules and listeners.
 * `source` says what asked for it ("start", "reload", "acme", …). */
int mg_generation_start(struct mg_generation *gen, struct mg_generation *old,
                        const char *source, const char **error_r);
/** Stop accepting and call the modules' stop(); sessions go on. */
void mg_generation_stop(struct mg_generation *gen);
void mg_generation_ref(struct mg_generation *gen);
/** Drop a ref; a stopped generation is released with its last ref. */
void mg_generation_unref(struct mg_generation *gen);
/** Drop a generation that never started (build or start failed). */
void mg_generation_discard(struct mg_generation *gen);
/** The current (newest started) generation, or NULL. */
struct mg_generation *mg_generation_current(void);
/** Call fn for every started generation not yet released. */
void mg_generation_each(void (*fn)(struct mg_generation *gen, void *arg),
                        void *arg);

/* --------------------------------------------------------------- api.c */

/** The API table given to modules (one per process). */
const struct mg_core_api *mg_core_api_get(void);
/** The generation being configured (its settings answer the getters),
 * or NULL when configuring is over. */
void mg_api_building(struct mg_generation *gen);
/** Set by main: reload the configuration soon (like SIGHUP). */
extern void (*mg_reload_request)(const char *source);
/** Cancel the timers modules left behind (at exit). */
void mg_api_timers_free(void);
uint64_t mg_now_ms(void);

/* ------------------------------------------------------------ daemon.c */

/**
 * Lock the data directory (flock on <data_dir>/mailgated.pid, held for
 * the life of the process) and write our pid into it. MG_DECLINED: another
 * instance holds it (its pid in *pid_r).
 */
int mg_pidfile_lock(const char *data_dir, long *pid_r, const char **error_r);
/** Read the pid of the instance holding the lock (0 = none running,
 * -1 = one runs but its pid cannot be read). */
long mg_pidfile_running(const char *data_dir);
/**
 * Become `user` (and `group`, else the user's primary group): chown the
 * data directory and the pid file to it, set groups, gid, uid, and check
 * that root cannot be regained. user NULL: nothing to do (MG_OK).
 */
int mg_privdrop(const char *user, const char *group, const char *data_dir,
                const char **error_r);
/** No core dumps, not ptrace-able by the same uid (RLIMIT_CORE 0,
 * PR_SET_DUMPABLE 0). Call after mg_privdrop(): changing credentials
 * resets the dumpable flag. */
void mg_harden_process(void);

/* The loop the core runs; set in main.c. */
extern struct ev_loop *mg_loop;

#endif /* MG_CORE_H */
