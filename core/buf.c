/* core/buf.c -- byte buffers and the bounded line reader */
#include "config.h"

#include <string.h>

#include "mg.h"

#define BUF_MIN 4096

void
mg_buf_init(struct mg_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void
mg_buf_free(struct mg_buf *b)
{
    free(b->data);
    mg_buf_init(b);
}

char *
mg_buf_reserve(struct mg_buf *b, size_t min, size_t *avail_r)
{
    if (b->cap - b->end < min && b->start > 0) {
        /* slide the unconsumed bytes down before growing */
        memmove(b->data, b->data + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
    }
    if (b->cap - b->end < min) {
        size_t cap = b->cap ? b->cap : BUF_MIN;

        while (cap - b->end < min)
            cap *= 2;
        b->data = mg_xrealloc(b->data, cap);
        b->cap = cap;
    }
    if (avail_r != NULL)
        *avail_r = b->cap - b->end;
    return b->data + b->end;
}

void
mg_buf_commit(struct mg_buf *b, size_t n)
{
    if (n > b->cap - b->end)
        mg_fatalx("mg_buf_commit: %zu bytes past the reserved space", n);
    b->end += n;
}

void
mg_buf_append(struct mg_buf *b, const void *data, size_t len)
{
    if (len == 0)
        return;
    memcpy(mg_buf_reserve(b, len, NULL), data, len);
    b->end += len;
}

void
mg_buf_consume(struct mg_buf *b, size_t n)
{
    if (n > b->end - b->start)
        mg_fatalx("mg_buf_consume: %zu bytes, %zu buffered", n,
                  b->end - b->start);
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

void
mg_buf_clear(struct mg_buf *b)
{
    b->start = b->end = 0;
}

/* Drop the rest of an overlong line: up to and including its LF when it
 * is buffered (true), else everything buffered (false). */
static bool
line_discard(struct mg_buf *in)
{
    const char *data = mg_buf_data(in);
    /* an empty buffer may have no storage: memchr(NULL, ...) is undefined */
    const char *lf =
        mg_buf_len(in) > 0 ? memchr(data, '\n', mg_buf_len(in)) : NULL;

    if (lf == NULL) {
        mg_buf_clear(in);
        return false;
    }
    mg_buf_consume(in, (size_t)(lf - data) + 1);
    return true;
}

int
mg_line_next(struct mg_buf *in, struct mg_linereader *lr, const char **line,
             size_t *len, enum mg_eol *eol, size_t *used_r)
{
    const char *data, *lf;
    size_t avail, limit;

    *used_r = 0;
    if (lr->discarding) {
        /* the rest of a line already reported as overlong */
        lr->scanned = 0;
        if (!line_discard(in))
            return MG_AGAIN;
        lr->discarding = false;
    }
    data = mg_buf_data(in);
    avail = mg_buf_len(in);
    if (lr->scanned > avail)
        lr->scanned = 0;
    /* a terminator past the limit cannot end an acceptable line */
    limit = avail < lr->max ? avail : lr->max;
    lf = lr->scanned < limit
             ? memchr(data + lr->scanned, '\n', limit - lr->scanned)
             : NULL;
    if (lf == NULL) {
        if (avail < lr->max) {
            lr->scanned = avail;
            return MG_AGAIN;
        }
        /* overlong: reported now, not when (if ever) the line ends; the
         * rest of it is dropped as it arrives, so the buffer stays
         * bounded */
        lr->scanned = 0;
        lr->discarding = !line_discard(in);
        return MG_DECLINED;
    }

    size_t total = (size_t)(lf - data) + 1;

    lr->scanned = 0;
    *used_r = total;
    *line = data;
    if (total >= 2 && lf[-1] == '\r') {
        *len = total - 2;
        *eol = MG_EOL_CRLF;
    } else {
        *len = total - 1;
        *eol = MG_EOL_LF;
    }
    return MG_OK;
}
