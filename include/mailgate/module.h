/*
 * include/mailgate/module.h -- the ABI between mailgated and its modules.
 *
 * A module is a shared object that exports exactly one symbol,
 * `mg_module_<name>`, a `const struct mg_module`. The core hands it a
 * `const struct mg_core_api *` and the module calls nothing else in the core.
 * doc/modules.md explains the life cycle; doc/hooks.md lists the hooks.
 *
 * Rules for this file: structs only grow at the end (check `size` before
 * using a field added later); any other change bumps MG_ABI_VERSION, and
 * so does growing a struct without a `size` that the core reads from a
 * module (mg_connect_spec).
 */
#ifndef MG_MODULE_H
#define MG_MODULE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <mailgate/abi.h>
#include <mailgate/store.h>

/** Bumped whenever a struct in this header changes other than by growing. */
/* 2: mg_connect_spec grew no_tls_resume; the core cannot see the size of a
 * struct a module passes in, so growing one of those is a new version */
#define MG_ABI_VERSION 2

#define MG_EXPORT       __attribute__((visibility("default")))
#define MG_PRINTF(f, a) __attribute__((format(printf, f, a)))

/** Return values of core and module functions. */
enum {
    MG_OK = 0,        /**< done */
    MG_ERROR = -1,    /**< failed; text through `const char **error_r` */
    MG_AGAIN = -2,    /**< not yet: wait for the event that was promised */
    MG_DECLINED = -3, /**< not mine / refused; the caller goes on */
};

struct config_setting_t; /* libconfig: a module's own section */
struct ev_loop;          /* libev: the core loop, core thread only */
struct mg_conn;          /* opaque: socket + TLS + buffers */
struct mg_modctx;        /* opaque: one module in one generation */

/* ------------------------------------------------------------------ log */

/** Log priorities (syslog numbering). */
enum mg_log_level {
    MG_LOG_ERROR = 3,
    MG_LOG_WARNING = 4,
    MG_LOG_INFO = 6,
    MG_LOG_DEBUG = 7,
};

/* ------------------------------------------------------------- settings */

/** Types of a module setting; the core checks them before configure(). */
enum mg_setting_type {
    MG_SET_BOOL = 1,
    MG_SET_INT,     /**< 64-bit integer within [min, max] */
    MG_SET_STRING,  /**< one of `choices` when choices is not NULL */
    MG_SET_STRINGS, /**< a list ( ) or array [ ] of strings */
    MG_SET_GROUP,   /**< a { } group the module checks itself */
    MG_SET_LIST,    /**< a list ( ) of groups the module checks itself */
};

/**
 * One setting a module (or a listener of it) accepts. Any other name in
 * the section is an error that names file and line. The core checks type
 * and range; absent settings take the default the module passes to the
 * getters.
 */
struct mg_setting {
    const char *name;
    enum mg_setting_type type;
    int64_t min, max;           /**< MG_SET_INT only */
    const char *const *choices; /**< MG_SET_STRING: NULL-terminated, or NULL */
};

/* ------------------------------------------------------------ listeners */

/** TLS mode of a listener or an outbound connection. */
enum mg_tls_mode {
    MG_TLS_NONE = 0,     /**< plaintext, no upgrade offered */
    MG_TLS_STARTTLS = 1, /**< plaintext until the module calls starttls() */
    MG_TLS_IMPLICIT = 2, /**< handshake before the module sees the conn */
};

/** A listener a module wants when its section has no `listen` list. */
struct mg_listen_default {
    const char *address; /**< NULL = all addresses ("0.0.0.0" and "::") */
    int port;
    enum mg_tls_mode tls;
};

/** How a module serves connections accepted on its listeners. */
struct mg_listener_ops {
    const char *protocol; /**< "smtp", "pop3": logs and status */
    /** ALPN ids this protocol answers to (NULL-terminated). A client that
     * offers ALPN without one of them is refused with an alert (ALPACA);
     * a client without ALPN is fine. NULL = refuse any ALPN. */
    const char *const *alpn;
    /** Line the core writes (CRLF added) before closing a connection it
     * refuses for a connection limit, e.g. "421 4.7.0 Too many
     * connections". Not sent on implicit-TLS listeners (no handshake is
     * spent on a refused peer); NULL = close silently. */
    const char *refuse_line;
    /** Per-listener settings of the module beyond the core's own. */
    const struct mg_setting *settings;
    /** A new connection (after the implicit TLS handshake, after the
     * PROXY header). `entry` is the listener's config entry. The module
     * sets its handler and greets; it owns the conn until close. */
    void (*on_accept)(struct mg_conn *c, const struct config_setting_t *entry,
                      void *arg);
    /** The daemon stops (SIGTERM/SIGINT). Idle sessions should be closed
     * now; one in the middle of a transaction may finish within
     * drain_timeout. Not called on reload: sessions of an old generation
     * finish on their settings. */
    void (*on_shutdown)(struct mg_conn *c, void *arg);
};

/* ---------------------------------------------------------- connections */

/** Events delivered to a connection's handler. */
enum mg_conn_event {
    MG_CONN_READABLE = 1, /**< new input is buffered */
    MG_CONN_DRAINED,      /**< write queue fell below the low-water mark */
    MG_CONN_TLS_READY,    /**< starttls() finished; input was reset */
    /* The three below are final: the module may write a last reply (it is
     * flushed, briefly), must free its session, and the conn closes when
     * the handler returns, whether or not it called close(). */
    MG_CONN_TIMEOUT, /**< idle or total timeout */
    MG_CONN_EOF,     /**< peer closed its side */
    MG_CONN_ERROR,   /**< I/O or TLS error, a protocol violation the core
                        caught (an HTTP request line), or a forced close */
};

typedef void (*mg_conn_fn)(struct mg_conn *c, enum mg_conn_event ev, void *arg);

/** Line terminators reported by getline(). */
enum mg_eol {
    MG_EOL_CRLF = 1,
    MG_EOL_LF = 2, /**< bare LF: the protocol decides (normally as CRLF) */
};

/** Who is on the other side, and how. Valid while the conn lives. */
struct mg_peer {
    uint64_t id;      /**< conn id: logs, async lookups */
    const char *addr; /**< peer address as text (after PROXY) */
    int port;
    struct sockaddr_storage sa; /**< peer address (after PROXY) */
    socklen_t salen;
    const char *local_addr; /**< our address as text */
    int local_port;
    bool proxied;            /**< a PROXY v2 header set addr */
    const char *proxy_addr;  /**< the load balancer, when proxied */
    const char *listener;    /**< "smtp 0.0.0.0:25" */
    bool tls;                /**< TLS is established */
    const char *tls_version; /**< "TLSv1.3" or NULL */
    const char *tls_cipher;  /**< "TLS_AES_256_GCM_SHA384" or NULL */
    const char *sni;         /**< server name the client asked for */
    bool limit_exempt;       /**< the peer is in the exempt networks */
};

/** A protocol reply with a code, an enhanced code and one or more lines.
 * The smtp engine writes it as `code-ecode line` … `code ecode line`. */
struct mg_reply {
    int code;          /**< SMTP: 250; 0 = no reply. POP3 ignores
                          it: a reply counts when nlines > 0 */
    const char *ecode; /**< SMTP "2.0.0"; POP3 response code without
                          brackets ("SYS/TEMP"); or NULL */
    size_t nlines;
    const char *const *lines; /**< without CRLF; validated, no CR/LF/NUL */
};

/** Connection operations (plain and TLS look the same). */
struct mg_conn_api {
    size_t size;
    void (*set_handler)(struct mg_conn *c, mg_conn_fn fn, void *arg);
    /** Next line from the input buffer, without its terminator.
     * MG_OK: *line, *len set (valid until the next read call), *eol set.
     * MG_AGAIN: no full line yet. MG_DECLINED: a line is longer than
     * the limit, reported as soon as the limit is passed (answer an
     * error, or disconnect); the line is discarded up to its end, the
     * part still to come silently by the next calls.
     * A NUL byte inside a line is delivered; the protocol refuses it. */
    int (*getline)(struct mg_conn *c, const char **line, size_t *len,
                   enum mg_eol *eol);
    /** Set the maximum command line length (default 1000 + CRLF). */
    void (*set_line_max)(struct mg_conn *c, size_t max);
    /** Raw buffered input: pointer and length, without consuming. */
    void (*peek)(struct mg_conn *c, const char **data, size_t *len);
    /** Drop n bytes from the front of the input buffer. */
    void (*consume)(struct mg_conn *c, size_t n);
    /** Stop (true) or resume (false) reading from the socket. */
    void (*pause_read)(struct mg_conn *c, bool pause);
    /** Queue bytes for writing; MG_AGAIN when over the high-water mark
     * (queued anyway: stop producing until MG_CONN_DRAINED). */
    int (*write)(struct mg_conn *c, const void *buf, size_t len);
    int (*printf)(struct mg_conn *c, const char *fmt, ...) MG_PRINTF(2, 3);
    /** Write a reply SMTP-style (multi-line with `-`). MG_ERROR, and
     * nothing written, for a code outside 200..599 or a control character
     * (CR, LF, …) in a line or the enhanced code. */
    int (*write_reply)(struct mg_conn *c, const struct mg_reply *r);
    /** Bytes queued and not yet handed to TLS or the socket: more than
     * the write mark only after a write said MG_AGAIN (MG_CONN_DRAINED
     * follows). */
    size_t (*write_queued)(const struct mg_conn *c);
    /** Server side: queue nothing more, discard buffered input (it came
     * before the handshake: CVE-2011-0411) and start TLS. MG_CONN_TLS_READY
     * or MG_CONN_ERROR follows. Outbound: client handshake, verified. */
    int (*starttls)(struct mg_conn *c);
    const struct mg_peer *(*peer)(const struct mg_conn *c);
    /** Idle timeout (no input) and total session time, in ms; 0 = none. */
    void (*set_timeouts)(struct mg_conn *c, uint32_t idle_ms,
                         uint64_t total_ms);
    /** Flush what is queued (bounded by a short timeout), then close. Safe
     * inside the conn's own handler: the free is deferred. No more events
     * are delivered after this call. */
    void (*close)(struct mg_conn *c);
    /** The conn with this id, or NULL if it is gone (async completions). */
    struct mg_conn *(*find)(uint64_t id);
    /** Log with the conn's id and peer. */
    void (*log)(struct mg_conn *c, enum mg_log_level level, const char *fmt,
                ...) MG_PRINTF(3, 4);
    /** True after the core asked the module to shut the conn down. */
    bool (*shutting_down)(const struct mg_conn *c);
};

/* ------------------------------------------------------------- outbound */

/** An outbound connection request (the proxy module's upstreams). */
struct mg_connect_spec {
    const char *host; /**< name or IP literal (no brackets) */
    int port;
    enum mg_tls_mode tls;        /**< IMPLICIT: handshake before `done`;
                                    STARTTLS: the module calls starttls() */
    const char *ca_file;         /**< extra trust anchors (PEM) or NULL */
    uint32_t connect_timeout_ms; /**< DNS + TCP + TLS, 0 = 30 s */
    /** Called for each resolved address before connecting: MG_OK to use
     * it, MG_DECLINED to skip it (SSRF policy on the resolved address). */
    int (*filter)(const struct sockaddr *sa, socklen_t len, void *arg);
    /** true: always a full handshake, no session cached or offered */
    bool no_tls_resume;
};

/** Result of connect(): conn on MG_OK, error text otherwise. */
typedef void (*mg_connect_fn)(struct mg_conn *c, int status, const char *error,
                              void *arg);

/* ---------------------------------------------------------------- hooks */

/** What a hook handler answers. */
enum mg_verdict {
    MG_PASS = 0, /**< no opinion: the next handler runs */
    MG_ACCEPT,   /**< stop: accept (for takeover hooks: the session is mine) */
    MG_TEMPFAIL, /**< stop: 4xx / -ERR [SYS/TEMP], with `reply` if set */
    MG_PERMFAIL, /**< stop: 5xx / -ERR, with `reply` if set */
    MG_SUSPEND,  /**< later: the handler calls hook_resume(call id) */
};

/** One run of a hook. The data struct of each hook is in doc/hooks.md. */
struct mg_hook_call {
    const char *hook;      /**< "smtp.rcpt", "pop3.login", … */
    uint64_t id;           /**< call id for hook_resume(); set by the core */
    uint64_t conn_id;      /**< the session's conn, 0 if none */
    void *data;            /**< per-hook struct (doc/hooks.md) */
    struct mg_reply reply; /**< out: the answer for the client, optional */
};

typedef enum mg_verdict (*mg_hook_fn)(struct mg_hook_call *call, void *arg);
/** Called once on the loop when a suspended run ends (only when hook_run
 * returned MG_SUSPEND): the final verdict and the reply set by the
 * deciding handler. Not called when the run is cancelled (conn closed). */
typedef void (*mg_hook_done_fn)(struct mg_hook_call *call,
                                enum mg_verdict verdict, void *arg);

/* -------------------------------------------------------- timers, work */

typedef void (*mg_timer_fn)(void *arg);
/** Runs on a worker thread: no loop calls, no conn calls. */
typedef void (*mg_work_fn)(void *arg);
/** Runs on the loop after the work finished. */
typedef void (*mg_work_done_fn)(void *arg);

/* ---------------------------------------------------------- the API */

/** Everything the core offers a module; handed to configure(). */
struct mg_core_api {
    uint32_t abi_version;
    size_t size; /**< sizeof in the core: check before using a later field */
    struct ev_loop *loop;
    const struct mg_conn_api *conn;
    /** The store and the vault (see <mailgate/store.h>); NULL while no
     * store is configured. */
    const struct mg_store_api *store;

    void (*log)(struct mg_modctx *m, enum mg_log_level level, const char *fmt,
                ...) MG_PRINTF(3, 4);
    void (*vlog)(struct mg_modctx *m, enum mg_log_level level, const char *fmt,
                 va_list ap);

    /* settings of the module's section, already checked by the core */
    bool (*setting_bool)(const struct config_setting_t *sect, const char *name,
                         bool def);
    int64_t (*setting_int)(const struct config_setting_t *sect,
                           const char *name, int64_t def);
    /** A string setting; valid for the generation's lifetime. */
    const char *(*setting_string)(const struct config_setting_t *sect,
                                  const char *name, const char *def);
    /** Element i of a string list; NULL past the end or when absent. */
    const char *(*setting_strings)(const struct config_setting_t *sect,
                                   const char *name, unsigned i);
    /** "file:line" of a setting, for the module's own error messages. */
    const char *(*setting_where)(const struct config_setting_t *sect,
                                 const char *name);
    /** Top-level settings every module may read. */
    const char *(*email_domain)(void);
    const char *(*data_dir)(void);

    /** Open the listeners of the section's `listen` list (or `defaults`,
     * terminated by port 0, when there is none). Staged: sockets are
     * bound or inherited when the generation starts. */
    int (*listen)(struct mg_modctx *m, const struct config_setting_t *sect,
                  const struct mg_listen_default *defaults,
                  const struct mg_listener_ops *ops, void *arg,
                  const char **error_r);

    /** Outbound connection with DNS off the loop, the filter applied to
     * each resolved address, timeouts, and for TLS verification of the
     * certificate (host name, or the IP for an IP literal; no SNI then). */
    int (*connect)(struct mg_modctx *m, const struct mg_connect_spec *spec,
                   mg_connect_fn done, void *arg, const char **error_r);

    /** Hooks: add a handler (lower prio runs first; registered while
     * configuring, active when the generation starts). */
    int (*hook_add)(struct mg_modctx *m, const char *hook, int prio,
                    mg_hook_fn fn, void *arg, const char **error_r);
    /** Run a hook's handlers in order. Returns the final verdict (MG_PASS
     * when every handler passed), or MG_SUSPEND: then `done` is called
     * once, later, on the loop. `call` must stay valid until then. */
    enum mg_verdict (*hook_run)(struct mg_hook_call *call, mg_hook_done_fn done,
                                void *arg);
    /** Finish a suspended handler: the run goes on (MG_PASS) or ends. */
    int (*hook_resume)(uint64_t call_id, enum mg_verdict v,
                       const struct mg_reply *reply);
    /** True when at least one handler is registered for the hook. */
    bool (*hook_has)(const char *hook);

    /** One-shot timer on the loop; returns an id for timer_cancel(). */
    uint64_t (*timer_add)(struct mg_modctx *m, uint64_t ms, mg_timer_fn fn,
                          void *arg);
    void (*timer_cancel)(uint64_t id);

    /** CPU-heavy work on the worker pool; done() runs on the loop. */
    int (*work_submit)(struct mg_modctx *m, mg_work_fn work,
                       mg_work_done_fn done, void *arg);
    /** The one thread-safe call: run fn(arg) on the loop soon. */
    void (*post)(void (*fn)(void *), void *arg);

    /** Monotonic milliseconds (the loop's clock). */
    uint64_t (*now_ms)(void);

    /** Reload the configuration soon, as SIGHUP does (a module that wrote
     * new certificate files, e.g. acme). `source` names the cause in the
     * log and in cert.changed. A failed reload keeps the running one. */
    void (*reload)(const char *source);

    /* -- added after the first release: check `size` before use -- */

    /** Is `sa` inside `net`: "192.0.2.0/24", "2001:db8::/32" or one
     * address? 1 yes, 0 no, MG_ERROR (with *error_r) when `net` is not an
     * address or network (error_r may be NULL). IPv4-mapped IPv6 peers
     * match IPv4 networks. A NULL `sa` only checks `net` (0 or MG_ERROR). */
    int (*net_match)(const char *net, const struct sockaddr *sa,
                     const char **error_r);
};

/* ------------------------------------------------------- the descriptor */

/**
 * The one exported symbol. Life cycle per generation (load and each
 * SIGHUP): configure() every module of the new config; if any fails the
 * new generation is dropped and the old one keeps running. Then start()
 * the new one, stop() the old one (its listeners close, its sessions get
 * on_shutdown only at SIGTERM; after a reload they finish on the old
 * settings), and release() the old state once its last conn has closed.
 * The code stays loaded for the life of the process.
 */
struct mg_module {
    uint32_t abi_version;  /**< MG_ABI_VERSION the module was built with */
    const char *signature; /**< MG_ABI_SIGNATURE the module was built with */
    const char *name;      /**< == symbol suffix == config `name` */
    const char *description;
    /** Settings of the module's section (NULL-terminated by name). */
    const struct mg_setting *settings;
    int (*configure)(struct mg_modctx *m, const struct mg_core_api *api,
                     const struct config_setting_t *sect, void **state_r,
                     const char **error_r);
    int (*start)(void *state, const char **error_r);
    void (*stop)(void *state);
    void (*release)(void *state);
    uintptr_t spare[4]; /**< zero; room to grow without an ABI bump */
};

#define MG_MODULE_V1 \
    .abi_version = MG_ABI_VERSION, .signature = MG_ABI_SIGNATURE

/** Declare the module's descriptor: MG_MODULE_EXPORT(smtp) = { … }; */
#define MG_MODULE_EXPORT(n)                                \
    extern MG_EXPORT const struct mg_module mg_module_##n; \
    MG_EXPORT const struct mg_module mg_module_##n

/* the data structs of the hooks: one include gives a module everything */
#include <mailgate/hooks.h>

#endif /* MG_MODULE_H */
