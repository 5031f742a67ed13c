/*
 * modules/smtp/smtp_util.c -- small helpers of the session code: allocation
 * that never fails, strings, wiping secrets, cleaning client text.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <mailgate/module.h>

#include "smtp_session.h"

void *
smtp_alloc(size_t n)
{
    void *p = calloc(1, n);

    if (p == NULL)
        abort();
    return p;
}

char *
smtp_strndup(const char *s, size_t n)
{
    char *p = smtp_alloc(n + 1);

    memcpy(p, s, n);
    return p;
}

char *
smtp_strdup(const char *s)
{
    return smtp_strndup(s, strlen(s));
}

/* Secrets never linger in freed memory. */
void
smtp_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;

    while (n-- > 0)
        *v++ = 0;
}

/* A reply text from client-supplied bytes: printable ASCII only. */
void
smtp_clean(char *dst, size_t size, const char *src, size_t len)
{
    size_t i;

    for (i = 0; i < len && i + 1 < size; i++) {
        unsigned char ch = (unsigned char)src[i];

        dst[i] = (ch < 0x20 || ch > 0x7e) ? '?' : (char)ch;
    }
    dst[i] = '\0';
}
