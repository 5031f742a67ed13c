/* core/ctl/mailgatectl.c -- control program for a running mailgated
 *
 * Exit codes: 0 done, 1 failed, 2 usage error, 3 not running (status, as
 * LSB init scripts report it).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "store.h"

static int ctl_status(struct ctl *ctl, int argc, char **argv);
static int ctl_reload(struct ctl *ctl, int argc, char **argv);

static const struct ctl_command ctl_commands[] = {
    {"status", ctl_status, "", "tell whether mailgated runs, and its pid"},
    {"reload", ctl_reload, "", "make mailgated re-read its configuration"},
    {"mailbox", ctl_mailbox, "SUBCOMMAND ...",
     "create|list|show|edit|delete|reset-password (mailbox --help)"},
    {"backup", ctl_backup, "DIR",
     "consistent copy of the store, config and certificates"},
    {"restore", ctl_restore, "DIR", "restore a backup (daemon stopped)"},
    {NULL, NULL, NULL, NULL},
};

static void
ctl_usage(FILE *out)
{
    fprintf(out,
            "usage: mailgatectl [-c FILE] [--json] COMMAND [ARGS]\n"
            "\n"
            "options:\n"
            "  -c, --config FILE  configuration file (default %s)\n"
            "      --json         machine-readable output\n"
            "  -h, --help         show this help\n"
            "  -V, --version      show the version\n"
            "\n"
            "commands:\n",
            MG_CONF_DIR "/mailgate.conf");
    for (const struct ctl_command *c = ctl_commands; c->name != NULL; c++) {
        char head[80];

        snprintf(head, sizeof(head), "%s%s%s", c->name, c->args[0] ? " " : "",
                 c->args);
        fprintf(out, "  %-22s %s\n", head, c->summary);
    }
}

/* status and reload take no arguments but --json (argv[0]: the command) */
static int
ctl_no_args(struct ctl *ctl, const char *cmd, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            ctl->json = true;
            continue;
        }
        ctl_err("%s takes no arguments (got '%s')", cmd, argv[i]);
        return MG_ERROR;
    }
    return MG_OK;
}

/* the store's epoch and mailbox count; MG_DECLINED: no store yet */
static int
ctl_status_store(struct ctl *ctl, char epoch[17], size_t *mailboxes_r)
{
    struct mg_mailbox *v = NULL;
    struct mg_store *st = NULL;
    const char *error;
    MDB_txn *txn;
    size_t n = 0;
    int rc;

    if (ctl_priv_resolve(ctl) != MG_OK || ctl_priv_user(ctl) != MG_OK)
        return MG_ERROR;
    rc = ctl_store_open(ctl, false, true, &st);
    if (rc == MG_OK) {
        snprintf(epoch, 17, "%s", mg_store_epoch(st));
        rc = mg_store_read_begin(st, &txn, &error);
        if (rc == MG_OK) {
            rc = mg_rec_mailbox_list(st, txn, &v, &n, &error);
            mg_store_read_end(st, txn);
        }
        if (rc != MG_OK)
            ctl_err("cannot read the store: %s", error);
        for (size_t i = 0; i < n; i++)
            mg_mailbox_clear(&v[i]);
        free(v);
        mg_store_close(st);
    }
    if (ctl_priv_root(ctl) != MG_OK)
        rc = MG_ERROR;
    *mailboxes_r = n;
    return rc;
}

static int
ctl_status(struct ctl *ctl, int argc, char **argv)
{
    char epoch[17] = "";
    size_t mailboxes = 0;
    const char *dir;
    long pid;
    int store;

    if (ctl_no_args(ctl, "status", argc, argv) != MG_OK)
        return CTL_EXIT_USAGE;
    if (ctl_load(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    dir = ctl->cfg->s.data_dir;
    pid = mg_pidfile_running(dir);
    store = ctl_status_store(ctl, epoch, &mailboxes);
    if (ctl->json) {
        fputs(pid != 0 ? "{\"running\":true,\"pid\":" : "{\"running\":false",
              stdout);
        if (pid != 0)
            printf("%ld", pid);
        fputs(",\"data_dir\":", stdout);
        ctl_json_string(stdout, dir);
        if (store == MG_OK)
            printf(",\"epoch\":\"%s\",\"mailboxes\":%zu", epoch, mailboxes);
        else
            fputs(",\"epoch\":null,\"mailboxes\":null", stdout);
        fputs("}\n", stdout);
    } else {
        if (pid > 0)
            printf("mailgated is running (pid %ld)\n", pid);
        else if (pid < 0)
            printf("mailgated is running (pid unknown: %s/mailgated.pid is "
                   "unreadable)\n",
                   dir);
        else
            printf("mailgated is not running (data directory %s)\n", dir);
        if (store == MG_OK)
            printf("store: %s/store, epoch %s, %zu mailbox(es)\n", dir, epoch,
                   mailboxes);
        else if (store == MG_DECLINED)
            printf("store: none yet in %s\n", dir);
    }
    return pid != 0 ? CTL_EXIT_OK : CTL_EXIT_NOT_RUNNING;
}

static int
ctl_reload(struct ctl *ctl, int argc, char **argv)
{
    long pid;

    if (ctl_no_args(ctl, "reload", argc, argv) != MG_OK)
        return CTL_EXIT_USAGE;
    if (ctl_load(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    pid = mg_pidfile_running(ctl->cfg->s.data_dir);
    if (pid == 0) {
        fprintf(stderr,
                "mailgatectl: mailgated is not running (data directory "
                "%s); start it first, e.g. systemctl start mailgated\n",
                ctl->cfg->s.data_dir);
        return CTL_EXIT_FAIL;
    }
    if (pid < 0) {
        fprintf(stderr,
                "mailgatectl: mailgated runs but its pid cannot be read "
                "from %s/mailgated.pid\n",
                ctl->cfg->s.data_dir);
        return CTL_EXIT_FAIL;
    }
    if (kill((pid_t)pid, SIGHUP) != 0) {
        fprintf(stderr,
                "mailgatectl: cannot signal mailgated (pid %ld): %s; run "
                "as root or as mailgated's user\n",
                pid, strerror(errno));
        return CTL_EXIT_FAIL;
    }
    if (ctl->json)
        printf("{\"reload\":true,\"pid\":%ld}\n", pid);
    else
        printf("reload signal sent to mailgated (pid %ld)\n", pid);
    return CTL_EXIT_OK;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl ctl = {.conf_file = MG_CONF_DIR "/mailgate.conf"};
    const struct ctl_command *cmd;
    int c, rc;

    /* config errors are printed by us, not logged with timestamps */
    mg_log_setup("mailgatectl", MG_LOG_WARNING, MG_LOGT_STDERR);
    while ((c = getopt_long(argc, argv, "+c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            ctl.conf_file = optarg;
            break;
        case 'j':
            ctl.json = true;
            break;
        case 'h':
            ctl_usage(stdout);
            return CTL_EXIT_OK;
        case 'V':
            printf("mailgatectl %s\n", PACKAGE_VERSION);
            return CTL_EXIT_OK;
        default:
            ctl_usage(stderr);
            return CTL_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "mailgatectl: no command given\n");
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    for (cmd = ctl_commands; cmd->name != NULL; cmd++) {
        if (strcmp(cmd->name, argv[optind]) == 0)
            break;
    }
    if (cmd->name == NULL) {
        fprintf(stderr, "mailgatectl: unknown command '%s'\n", argv[optind]);
        ctl_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    rc = cmd->run(&ctl, argc - optind, argv + optind);
    mg_config_free(ctl.cfg);
    return rc;
}
