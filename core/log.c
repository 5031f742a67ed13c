/* core/log.c -- leveled logging to stderr or syslog */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "mg.h"

static enum mg_log_level log_level = MG_LOG_INFO;
static enum mg_log_target log_target = MG_LOGT_STDERR;
static const char *log_ident = "mailgated";

static const char *const log_names[] = {
    [MG_LOG_ERROR] = "error",
    [MG_LOG_WARNING] = "warning",
    [MG_LOG_INFO] = "info",
    [MG_LOG_DEBUG] = "debug",
};

void
mg_log_setup(const char *ident, enum mg_log_level level,
             enum mg_log_target target)
{
    if (log_target == MG_LOGT_SYSLOG && target != MG_LOGT_SYSLOG)
        closelog();
    if (target == MG_LOGT_SYSLOG && log_target != MG_LOGT_SYSLOG)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
    log_ident = ident;
    log_level = level;
    log_target = target;
}

bool
mg_log_enabled(enum mg_log_level level)
{
    return level <= log_level;
}

int
mg_log_level_parse(const char *s, enum mg_log_level *level_r)
{
    for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
        if (log_names[i] != NULL && strcmp(s, log_names[i]) == 0) {
            *level_r = (enum mg_log_level)i;
            return MG_OK;
        }
    }
    return MG_ERROR;
}

void
mg_vlogp(enum mg_log_level level, const char *prefix, const char *fmt,
         va_list ap)
{
    char msg[2048];
    size_t n;

    if (!mg_log_enabled(level))
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* one record per line: never let input forge log lines */
    for (n = 0; msg[n] != '\0'; n++) {
        if ((unsigned char)msg[n] < 0x20)
            msg[n] = '?';
    }
    if (log_target == MG_LOGT_SYSLOG) {
        if (prefix != NULL)
            syslog(level, "%s: %s", prefix, msg);
        else
            syslog(level, "%s", msg);
        return;
    }

    struct timespec ts;
    struct tm tm;
    char when[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s[%ld] %s: %s%s%s\n", when,
            ts.tv_nsec / 1000000, log_ident, (long)getpid(), log_names[level],
            prefix != NULL ? prefix : "", prefix != NULL ? ": " : "", msg);
}

void
mg_logp(enum mg_log_level level, const char *prefix, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mg_vlogp(level, prefix, fmt, ap);
    va_end(ap);
}

void
mg_log(enum mg_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mg_vlogp(level, NULL, fmt, ap);
    va_end(ap);
}
