/* tests/unit/test_buf.c -- byte buffers and the bounded line reader */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mg.h"

static void
test_append_consume(void **state)
{
    struct mg_buf b;

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "hello ", 6);
    mg_buf_append(&b, "world", 5);
    assert_int_equal(mg_buf_len(&b), 11);
    assert_memory_equal(mg_buf_data(&b), "hello world", 11);
    mg_buf_consume(&b, 6);
    assert_int_equal(mg_buf_len(&b), 5);
    assert_memory_equal(mg_buf_data(&b), "world", 5);
    mg_buf_consume(&b, 5);
    assert_int_equal(mg_buf_len(&b), 0);
    /* an emptied buffer starts over at the front */
    assert_int_equal(b.start, 0);
    mg_buf_free(&b);
}

static void
test_reserve_slides_before_growing(void **state)
{
    struct mg_buf b;
    size_t avail;
    char *p;

    (void)state;
    mg_buf_init(&b);
    p = mg_buf_reserve(&b, 100, &avail);
    assert_true(avail >= 100);
    memset(p, 'x', avail);
    mg_buf_commit(&b, avail);
    size_t cap = b.cap;

    mg_buf_consume(&b, avail - 10); /* 10 bytes left at the end */
    p = mg_buf_reserve(&b, cap - 20, &avail);
    assert_int_equal(b.cap, cap); /* slid down, did not grow */
    assert_int_equal(b.start, 0);
    assert_true(avail >= cap - 20);
    (void)p;
    mg_buf_free(&b);
}

static void
test_large_append_grows(void **state)
{
    struct mg_buf b;
    static char big[1 << 20];

    (void)state;
    memset(big, 'a', sizeof(big));
    mg_buf_init(&b);
    mg_buf_append(&b, big, sizeof(big));
    mg_buf_append(&b, "z", 1);
    assert_int_equal(mg_buf_len(&b), sizeof(big) + 1);
    assert_int_equal(mg_buf_data(&b)[sizeof(big)], 'z');
    mg_buf_free(&b);
}

/* Feed `in` into the buffer and collect lines as "line|eol;" text. */
static int
lines_of(struct mg_buf *b, struct mg_linereader *lr, char *out, size_t size)
{
    const char *line;
    size_t len, used;
    enum mg_eol eol;
    int r, n = 0;

    out[0] = '\0';
    while ((r = mg_line_next(b, lr, &line, &len, &eol, &used)) != MG_AGAIN) {
        size_t o = strlen(out);

        if (r == MG_OK)
            snprintf(out + o, size - o, "%.*s|%s;", (int)len, line,
                     eol == MG_EOL_CRLF ? "crlf" : "lf");
        else
            snprintf(out + o, size - o, "TOOLONG;");
        mg_buf_consume(b, used);
        n++;
    }
    return n;
}

static void
test_lines_crlf_and_bare_lf(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 100};
    char out[512];

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "EHLO a\r\nNOOP\nlast\r", 18);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 2);
    assert_string_equal(out, "EHLO a|crlf;NOOP|lf;");
    /* a line split between reads ends once its LF arrives */
    assert_int_equal(mg_buf_len(&b), 5);
    mg_buf_append(&b, "\n", 1);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "last|crlf;");
    mg_buf_free(&b);
}

static void
test_bare_cr_is_not_a_terminator(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 100};
    char out[512];

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "a\rb\r\n", 5);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "a\rb|crlf;");
    mg_buf_free(&b);
}

static void
test_nul_inside_line_is_delivered(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 100};
    const char *line;
    size_t len, used;
    enum mg_eol eol;

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "a\0b\r\n", 5);
    assert_int_equal(mg_line_next(&b, &lr, &line, &len, &eol, &used), MG_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(line, "a\0b", 3);
    assert_int_equal(used, 5);
    mg_buf_free(&b);
}

static void
test_limit_boundary(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 10}; /* 8 bytes + CRLF fit */
    char out[512];

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "12345678\r\n", 10);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "12345678|crlf;");
    mg_buf_append(&b, "123456789\r\n", 11);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "TOOLONG;");
    mg_buf_append(&b, "ok\r\n", 4);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "ok|crlf;");
    mg_buf_free(&b);
}

static void
test_overlong_line_memory_stays_bounded(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 64};
    char chunk[1000], out[512];

    (void)state;
    memset(chunk, 'x', sizeof(chunk));
    mg_buf_init(&b);
    /* 1 MB without a newline arrives in pieces: reported at once, with
     * the first piece, then dropped as it arrives */
    for (int i = 0; i < 1000; i++) {
        mg_buf_append(&b, chunk, sizeof(chunk));
        assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), i == 0);
        if (i == 0)
            assert_string_equal(out, "TOOLONG;");
        assert_int_equal(mg_buf_len(&b), 0);
        assert_true(b.cap <= 8192);
    }
    mg_buf_append(&b, "tail\r\nPING\r\n", 12);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "PING|crlf;");
    mg_buf_free(&b);
}

static void
test_overlong_reported_before_its_end(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 8};
    char out[512];

    (void)state;
    mg_buf_init(&b);
    mg_buf_append(&b, "0123456789\r", 11);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "TOOLONG;");
    /* the LF that ends it is part of the overlong line, not a new one */
    mg_buf_append(&b, "\nnext\r\n", 7);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "next|crlf;");
    mg_buf_free(&b);
}

static void
test_resumable_scan(void **state)
{
    struct mg_buf b;
    struct mg_linereader lr = {.max = 4096};
    char out[512];

    (void)state;
    mg_buf_init(&b);
    for (const char *p = "QUIT"; *p != '\0'; p++) {
        mg_buf_append(&b, p, 1);
        assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 0);
    }
    assert_int_equal(lr.scanned, 4);
    mg_buf_append(&b, "\r\n", 2);
    assert_int_equal(lines_of(&b, &lr, out, sizeof(out)), 1);
    assert_string_equal(out, "QUIT|crlf;");
    assert_int_equal(lr.scanned, 0);
    mg_buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_consume),
        cmocka_unit_test(test_reserve_slides_before_growing),
        cmocka_unit_test(test_large_append_grows),
        cmocka_unit_test(test_lines_crlf_and_bare_lf),
        cmocka_unit_test(test_bare_cr_is_not_a_terminator),
        cmocka_unit_test(test_nul_inside_line_is_delivered),
        cmocka_unit_test(test_limit_boundary),
        cmocka_unit_test(test_overlong_line_memory_stays_bounded),
        cmocka_unit_test(test_overlong_reported_before_its_end),
        cmocka_unit_test(test_resumable_scan),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
