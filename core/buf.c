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

int
mg_line_next(struct mg_buf *in, struct mg_linereader *lr, const char **line,
             size_t *len, enum mg_eol *eol, size_t *used_r)
{
    const char *data = mg_buf_data(in);
    size_t avail = mg_buf_len(in);
    const char *lf;

    *used_r = 0;
    if (lr->scanned > avail)
        lr->scanned = 0;
    lf = memchr(data + lr->scanned, '\n', avail - lr->scanned);
    if (lf == NULL) {
        if (lr->discarding || avail >= lr->max) {
            /* overlong: drop what we have but keep a trailing CR, which
             * may be the start of the terminator */
            size_t drop = avail;

            if (drop > 0 && data[drop - 1] == '\r')
                drop--;
            mg_buf_consume(in, drop);
            lr->discarding = true;
        }
        lr->scanned = mg_buf_len(in);
        return MG_AGAIN;
    }

    size_t total = (size_t)(lf - data) + 1;

    lr->scanned = 0;
    *used_r = total;
    if (lr->discarding || total > lr->max) {
        lr->discarding = false;
        return MG_DECLINED;
    }
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
