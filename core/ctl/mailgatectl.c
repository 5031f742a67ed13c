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

#include "mg.h"

#define CTL_EXIT_OK          0
#define CTL_EXIT_FAIL        1
#define CTL_EXIT_USAGE       2
#define CTL_EXIT_NOT_RUNNING 3

#ifndef MG_MODULE_DIR
#define MG_MODULE_DIR NULL
#endif

/** What every command gets: options and the loaded config (lazily). */
struct ctl {
    const char *conf_file;
    bool json;
    struct mg_config *cfg;
};

/** One command: `mailgatectl [options] NAME ARGS...`. */
struct ctl_command {
    const char *name;
    int (*run)(struct ctl *ctl, int argc, char **argv);
    const char *args; /* usage text of its arguments, "" for none */
    const char *summary;
};

static int ctl_status(struct ctl *ctl, int argc, char **argv);
static int ctl_reload(struct ctl *ctl, int argc, char **argv);

static const struct ctl_command ctl_commands[] = {
    {"status", ctl_status, "", "tell whether mailgated runs, and its pid"},
    {"reload", ctl_reload, "", "make mailgated re-read its configuration"},
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
        char head[64];

        snprintf(head, sizeof(head), "%s%s%s", c->name, c->args[0] ? " " : "",
                 c->args);
        fprintf(out, "  %-18s %s\n", head, c->summary);
    }
}

/* JSON string: quotes, backslashes and control bytes escaped; other bytes
 * pass through (the paths we print are the operator's own) */
static void
ctl_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\t')
            fputs("\\t", out);
        else if (c == '\r')
            fputs("\\r", out);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static int
ctl_load(struct ctl *ctl)
{
    const char *error;

    if (ctl->cfg != NULL)
        return MG_OK;
    if (mg_config_load(ctl->conf_file, MG_MODULE_DIR, &ctl->cfg, &error) !=
        MG_OK) {
        fprintf(stderr, "mailgatectl: %s\n", error);
        return MG_ERROR;
    }
    return MG_OK;
}

static int
ctl_no_args(const char *cmd, int argc, char **argv)
{
    if (argc == 0)
        return MG_OK;
    fprintf(stderr, "mailgatectl: %s takes no arguments (got '%s')\n", cmd,
            argv[0]);
    return MG_ERROR;
}

static int
ctl_status(struct ctl *ctl, int argc, char **argv)
{
    const char *dir;
    long pid;

    if (ctl_no_args("status", argc, argv) != MG_OK)
        return CTL_EXIT_USAGE;
    if (ctl_load(ctl) != MG_OK)
        return CTL_EXIT_FAIL;
    dir = ctl->cfg->s.data_dir;
    pid = mg_pidfile_running(dir);
    if (ctl->json) {
        fputs(pid != 0 ? "{\"running\":true,\"pid\":" : "{\"running\":false",
              stdout);
        if (pid != 0)
            printf("%ld", pid);
        fputs(",\"data_dir\":", stdout);
        ctl_json_string(stdout, dir);
        fputs("}\n", stdout);
    } else if (pid > 0) {
        printf("mailgated is running (pid %ld)\n", pid);
    } else if (pid < 0) {
        printf("mailgated is running (pid unknown: %s/mailgated.pid is "
               "unreadable)\n",
               dir);
    } else {
        printf("mailgated is not running (data directory %s)\n", dir);
    }
    return pid != 0 ? CTL_EXIT_OK : CTL_EXIT_NOT_RUNNING;
}

static int
ctl_reload(struct ctl *ctl, int argc, char **argv)
{
    long pid;

    if (ctl_no_args("reload", argc, argv) != MG_OK)
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
    while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
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
    rc = cmd->run(&ctl, argc - optind - 1, argv + optind + 1);
    mg_config_free(ctl.cfg);
    return rc;
}
