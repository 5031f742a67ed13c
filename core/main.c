/* core/main.c -- mailgated: start-up, signals, reload and shutdown */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mg.h"
#include "store.h"

struct ev_loop *mg_loop;

static const char *main_config = MG_CONF_DIR "/mailgate.conf";
static bool main_foreground;
static bool main_stopping;
static int main_ready_fd = -1; /* to the waiting parent (background) */
static char *main_data_dir;
static char *main_user;
static ev_signal main_sighup, main_sigterm, main_sigint;
static ev_timer main_drain;
static ev_prepare main_idle_check;

static void
main_usage(FILE *f)
{
    fprintf(f,
            "Usage: mailgated [-c FILE] [--foreground] [--check-config]\n"
            "\n"
            "The mailgate email archiving gateway daemon.\n"
            "\n"
            "  -c, --config FILE   configuration file (default %s)\n"
            "  -f, --foreground    stay in the foreground, log to stderr\n"
            "                      unless the file sets log_target\n"
            "  -t, --check-config  check the file and every module's section,\n"
            "                      then exit (0 = valid)\n"
            "  -h, --help          show this help\n"
            "  -V, --version       show the version\n"
            "\n"
            "Signals: HUP reloads the configuration; TERM and INT stop.\n"
            "See mailgated(8) and doc/configuration.md.\n",
            MG_CONF_DIR "/mailgate.conf");
}

/* Start-up failed: tell the terminal (directly, or through the parent
 * that waits for us) and leave. */
static _Noreturn void
main_die(const char *msg)
{
    if (main_ready_fd >= 0) {
        ssize_t n = write(main_ready_fd, msg, strlen(msg));

        (void)n;
    }
    mg_log(MG_LOG_ERROR, "%s", msg);
    exit(1);
}

static void
main_apply_logging(const struct mg_settings *s)
{
    enum mg_log_target t = main_foreground ? MG_LOGT_STDERR : MG_LOGT_SYSLOG;

    if (s->log_target_set)
        t = s->log_target;
    mg_log_setup("mailgated", s->log_level, t);
}

/* ------------------------------------------------------------- reload */

static void
main_reload(const char *source)
{
    struct mg_generation *old = mg_generation_current();
    struct mg_generation *gen;
    const char *err;

    if (main_stopping)
        return;
    mg_log(MG_LOG_INFO, "reload (%s): reading %s", source, main_config);
    if (mg_generation_build(main_config, MG_MODULE_DIR, &gen, &err) != MG_OK) {
        mg_log(MG_LOG_ERROR,
               "reload failed, the running configuration stays: %s", err);
        return;
    }
    if (strcmp(gen->config->s.data_dir, main_data_dir) != 0) {
        mg_log(MG_LOG_ERROR,
               "reload failed, the running configuration stays: data_dir "
               "changed from %s to %s; that needs a restart",
               main_data_dir, gen->config->s.data_dir);
        mg_generation_discard(gen);
        return;
    }
    if ((gen->config->s.user == NULL) != (main_user == NULL) ||
        (main_user != NULL && strcmp(gen->config->s.user, main_user) != 0))
        mg_log(MG_LOG_WARNING,
               "reload: a change of `user` takes effect at the next "
               "restart");
    if (mg_generation_start(gen, old, source, &err) != MG_OK) {
        mg_log(MG_LOG_ERROR,
               "reload failed, the running configuration stays: %s", err);
        mg_generation_discard(gen);
        return;
    }
    main_apply_logging(&gen->config->s);
    /* CA files are read again; no TLS session outlives its trust */
    mg_outbound_reset();
    mg_log(MG_LOG_INFO, "reload: configuration generation %llu running",
           (unsigned long long)gen->id);
}

/* A module asked for a reload: run it from the loop, never inside the
 * module's own call. */
static ev_timer main_reload_timer;
static const char *main_reload_source;

static void
main_reload_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    main_reload(main_reload_source);
}

static void
main_request_reload(const char *source)
{
    main_reload_source = source;
    if (!ev_is_active(&main_reload_timer)) {
        ev_timer_init(&main_reload_timer, main_reload_timer_cb, 0., 0.);
        ev_timer_start(mg_loop, &main_reload_timer);
    }
}

/* ----------------------------------------------------------- shutdown */

static void
main_idle_check_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)w;
    (void)revents;
    if (main_stopping && mg_conns_count() == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void
main_drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    mg_log(MG_LOG_WARNING,
           "drain_timeout reached: closing %u remaining connections",
           mg_conns_count());
    mg_conns_close_all();
    ev_break(loop, EVBREAK_ALL);
}

static void
main_shutdown(int sig)
{
    struct mg_generation *cur = mg_generation_current();
    double drain = 5.0;

    if (main_stopping)
        return;
    main_stopping = true;
    if (cur != NULL)
        drain = cur->config->s.drain_timeout_ms / 1000.0;
    mg_log(MG_LOG_INFO,
           "%s: shutting down (closing idle sessions, %u open, drain "
           "timeout %.0f s)",
           strsignal(sig), mg_conns_count(), drain);
    if (cur != NULL)
        mg_generation_stop(cur);
    mg_conns_shutdown(NULL);
    ev_timer_init(&main_drain, main_drain_cb, drain, 0.);
    ev_timer_start(mg_loop, &main_drain);
    ev_prepare_init(&main_idle_check, main_idle_check_cb);
    ev_prepare_start(mg_loop, &main_idle_check);
}

static void
main_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    if (w->signum == SIGHUP)
        main_reload("reload");
    else
        main_shutdown(w->signum);
}

/* -------------------------------------------------------------- start */

static void
main_check_config(void)
{
    struct mg_generation *gen;
    const char *err;

    if (mg_generation_build(main_config, MG_MODULE_DIR, &gen, &err) != MG_OK) {
        fprintf(stderr, "mailgated: %s\n", err);
        exit(1);
    }
    printf("%s: configuration OK (%zu module%s, listeners:", main_config,
           gen->nmods, gen->nmods == 1 ? "" : "s");
    for (struct mg_listener *l = gen->listeners; l != NULL; l = l->next)
        printf(" %s", l->name);
    printf("%s)\n", gen->listeners == NULL ? " none" : "");
    mg_generation_discard(gen);
    mg_module_cache_reset();
    exit(0);
}

/* Background: the parent waits until the child is ready or failed, so
 * start-up errors reach the terminal and the exit status. */
static void
main_daemonize(void)
{
    int p[2];
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("mailgated: pipe");
        exit(1);
    }
    pid = fork();
    if (pid < 0) {
        perror("mailgated: fork");
        exit(1);
    }
    if (pid > 0) {
        char msg[2048];
        ssize_t n, len = 0;

        close(p[1]);
        while (len < (ssize_t)sizeof(msg) - 1 &&
               (n = read(p[0], msg + len, sizeof(msg) - 1 - (size_t)len)) > 0)
            len += n;
        msg[len] = '\0';
        if (strcmp(msg, "ready") == 0)
            exit(0);
        fprintf(stderr, "mailgated: %s\n",
                len > 0 ? msg : "start-up failed (see the log)");
        exit(1);
    }
    close(p[0]);
    main_ready_fd = p[1];
    setsid();
    ev_loop_fork(mg_loop); /* the signal watchers were set up before */
}

static void
main_detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return;
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    if (!main_foreground)
        dup2(fd, STDERR_FILENO);
    close(fd);
}

static void
main_prepare_data_dir(const char *dir)
{
    struct stat st;

    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            main_die(mg_error("data_dir %s is not a directory", dir));
        return;
    }
    if (errno != ENOENT || mkdir(dir, 0750) < 0)
        main_die(mg_error("cannot use data_dir %s: %s (create it, owned by "
                          "the `user` of the config, mode 0750)",
                          dir, strerror(errno)));
    mg_log(MG_LOG_INFO, "created data directory %s", dir);
}

/* The store was created as root: hand it to the `user` the daemon drops
 * to (and mailgatectl drops to), so nothing is left owned by root. */
static void
main_chown_store(const struct mg_settings *s)
{
    static const char *const files[] = {"", "/data.mdb", "/lock.mdb"};
    struct passwd pwbuf, *pw = NULL;
    char buf[4096];

    if (s->user == NULL || geteuid() != 0)
        return;
    if (getpwnam_r(s->user, &pwbuf, buf, sizeof(buf), &pw) != 0 || pw == NULL)
        main_die(mg_error("unknown user %s", s->user));
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *p = mg_xasprintf("%s/store%s", s->data_dir, files[i]);

        if (chown(p, pw->pw_uid, (gid_t)-1) != 0 && errno != ENOENT)
            main_die(mg_error("cannot hand %s to user %s: %s", p, s->user,
                              strerror(errno)));
        free(p);
    }
}

static void
main_start(void)
{
    struct mg_config *cfg;
    struct mg_generation *gen;
    const struct mg_settings *s;
    const char *err;
    long pid;

    if (!main_foreground)
        main_daemonize();
    /* the settings first: lock the data directory and open the store
     * before any module configures, so that modules find api->store */
    if (mg_config_load(main_config, MG_MODULE_DIR, &cfg, &err) != MG_OK)
        main_die(err);
    s = &cfg->s;
    main_apply_logging(s);
    main_data_dir = mg_xstrdup(s->data_dir);
    main_user = s->user != NULL ? mg_xstrdup(s->user) : NULL;
    main_prepare_data_dir(s->data_dir);
    switch (mg_pidfile_lock(s->data_dir, &pid, &err)) {
    case MG_OK:
        break;
    case MG_DECLINED:
        main_die(mg_error("another instance of mailgated (pid %ld) holds "
                          "the data directory %s: stop it first, or give "
                          "this one its own data_dir",
                          pid, s->data_dir));
    default:
        main_die(err);
    }
    if (mg_store_api_open(s, &err) != MG_OK)
        main_die(err);
    main_chown_store(s);
    mg_config_free(cfg);
    if (mg_generation_build(main_config, MG_MODULE_DIR, &gen, &err) != MG_OK)
        main_die(err);
    s = &gen->config->s;
    if (mg_generation_start(gen, NULL, "start", &err) != MG_OK) {
        mg_generation_discard(gen);
        main_die(err);
    }
    if (mg_privdrop(s->user, s->group, s->data_dir, &err) != MG_OK)
        main_die(err);
    if (s->user == NULL && geteuid() == 0)
        mg_log(MG_LOG_WARNING,
               "running as root: set `user` in %s to drop privileges after "
               "binding",
               main_config);
    mg_harden_process();
    if (mg_workers_start(mg_loop, s->worker_threads, &err) != MG_OK)
        main_die(err);
    mg_log(MG_LOG_INFO,
           "mailgated %s started (configuration generation "
           "%llu, %zu module%s)",
           PACKAGE_VERSION, (unsigned long long)gen->id, gen->nmods,
           gen->nmods == 1 ? "" : "s");
    if (main_ready_fd >= 0) {
        ssize_t n = write(main_ready_fd, "ready", 5);

        (void)n;
        close(main_ready_fd);
        main_ready_fd = -1;
        main_detach_stdio();
    }
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"foreground", no_argument, NULL, 'f'},
        {"check-config", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    bool check = false;
    int ch;

    while ((ch = getopt_long(argc, argv, "c:fthV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            main_config = optarg;
            break;
        case 'f':
            main_foreground = true;
            break;
        case 't':
            check = true;
            break;
        case 'h':
            main_usage(stdout);
            return 0;
        case 'V':
            printf("mailgated %s (module ABI %d, %s)\n", PACKAGE_VERSION,
                   MG_ABI_VERSION, MG_ABI_SIGNATURE);
            return 0;
        default:
            main_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mailgated: unexpected argument '%s'\n", argv[optind]);
        main_usage(stderr);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    mg_log_setup("mailgated", MG_LOG_INFO, MG_LOGT_STDERR);
    mg_loop = ev_default_loop(EVFLAG_AUTO);
    if (check)
        main_check_config();
    /* before the ports open: a signal that comes as soon as they answer
     * must find its handler */
    ev_signal_init(&main_sighup, main_signal_cb, SIGHUP);
    ev_signal_init(&main_sigterm, main_signal_cb, SIGTERM);
    ev_signal_init(&main_sigint, main_signal_cb, SIGINT);
    ev_signal_start(mg_loop, &main_sighup);
    ev_signal_start(mg_loop, &main_sigterm);
    ev_signal_start(mg_loop, &main_sigint);
    main_start();

    mg_reload_request = main_request_reload;
    ev_run(mg_loop, 0);

    /* stopping: a second TERM or INT must not kill the final cleanup once
     * the watchers are gone (the default action would) */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    mg_conns_close_all();
    mg_store_api_close(); /* queued writes finish; completions posted */
    mg_workers_stop();
    mg_outbound_reset();
    mg_api_timers_free();
    ev_timer_stop(mg_loop, &main_drain);
    ev_timer_stop(mg_loop, &main_reload_timer);
    ev_prepare_stop(mg_loop, &main_idle_check);
    ev_signal_stop(mg_loop, &main_sighup);
    ev_signal_stop(mg_loop, &main_sigterm);
    ev_signal_stop(mg_loop, &main_sigint);
    signal(SIGTERM, SIG_IGN); /* libev restores the default on stop */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    mg_log(MG_LOG_INFO, "mailgated stopped");
    free(main_data_dir);
    free(main_user);
    ev_loop_destroy(mg_loop);
    return 0;
}
