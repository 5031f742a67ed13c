/* core/ctl/ctl_util.c -- config loading and output helpers of mailgatectl */
#include "config.h"

#include <getopt.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

#ifndef MG_MODULE_DIR
#define MG_MODULE_DIR NULL
#endif

int
ctl_load(struct ctl *ctl)
{
    const char *error;

    if (ctl->cfg != NULL)
        return MG_OK;
    if (mg_config_load(ctl->conf_file, MG_MODULE_DIR, &ctl->cfg, &error) !=
        MG_OK) {
        ctl_err("%s", error);
        return MG_ERROR;
    }
    return MG_OK;
}

void
ctl_err(const char *fmt, ...)
{
    va_list ap;

    fputs("mailgatectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* JSON string: quotes, backslashes and control bytes escaped; other bytes
 * pass through (names and paths are the operator's own) */
void
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

void
ctl_time_iso(uint64_t t, char out[21])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL ||
        strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 21, "%llu", (unsigned long long)t);
}

void
ctl_time_stamp(uint64_t t, char out[17])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL ||
        strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 0)
        snprintf(out, 17, "%llu", (unsigned long long)t);
}

int
ctl_parse_yesno(const char *s, bool *v)
{
    if (strcmp(s, "yes") == 0) {
        *v = true;
        return MG_OK;
    }
    if (strcmp(s, "no") == 0) {
        *v = false;
        return MG_OK;
    }
    return MG_ERROR;
}

char *
ctl_store_dir(struct ctl *ctl)
{
    return mg_xasprintf("%s/store", ctl->cfg->s.data_dir);
}

int
ctl_args_one(struct ctl *ctl, int argc, char **argv, const char *what,
             const char **arg_r)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    int c;

    optind = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'j')
            return MG_ERROR;
        ctl->json = true;
    }
    if (argc - optind != 1) {
        ctl_err("%s takes %s", argv[0], what);
        return MG_ERROR;
    }
    *arg_r = argv[optind];
    return MG_OK;
}
