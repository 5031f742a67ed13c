/* core/xalloc.c -- allocation that aborts on failure, error formatting */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg.h"

static _Noreturn void
xalloc_fail(size_t n)
{
    mg_fatalx("out of memory allocating %zu bytes", n);
}

void *
mg_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL)
        xalloc_fail(n);
    return p;
}

void *
mg_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p == NULL)
        xalloc_fail(n * size);
    return p;
}

void *
mg_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (q == NULL)
        xalloc_fail(n);
    return q;
}

char *
mg_xstrdup(const char *s)
{
    return mg_xstrndup(s, strlen(s));
}

char *
mg_xstrndup(const char *s, size_t n)
{
    char *p = mg_xmalloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
mg_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        xalloc_fail(strlen(fmt));
    return s;
}

_Noreturn void
mg_fatalx(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mg_vlogp(MG_LOG_ERROR, "fatal", fmt, ap);
    va_end(ap);
    abort();
}

#define MG_ERRBUFS    8
#define MG_ERRBUF_LEN 1024

const char *
mg_error(const char *fmt, ...)
{
    static char bufs[MG_ERRBUFS][MG_ERRBUF_LEN];
    static unsigned next;
    char *b = bufs[next++ % MG_ERRBUFS];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(b, MG_ERRBUF_LEN, fmt, ap);
    va_end(ap);
    return b;
}
