/* tests/fuzz/fuzz_pop3.c -- libFuzzer target for the pop3 parsers and the
 * dot-stuffing encoder
 *
 * Every line of the input goes through pop3_parse_command and the
 * argument parsers (message numbers, TOP, login names, SASL PLAIN). The
 * whole input is also stuffed as a RETR response (whole, in two parts
 * split at data[0] % size, and byte by byte) and as a TOP response; the
 * result must equal a line-based reference and unstuff back to the input.
 * Any violated invariant abort()s.
 *
 * Built with -DMG_LIBFUZZER by `make fuzz-pop3`; without it (make check)
 * main() replays the files named on the command line.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3.h"
#include "fuzz_replay.h"

static void
fuzz_line(const char *line, size_t len)
{
    struct pop3_command cmd;
    const char *why = NULL;
    char id[33], sasl[POP3_SECRET_MAX + 1];
    const char *z, *u, *p;
    uint32_t n;
    uint64_t lines;

    if (pop3_parse_command(line, len, &cmd, &why) == MG_OK) {
        FUZZ_CHECK(cmd.verblen >= 1 && cmd.verblen <= 8);
        FUZZ_CHECK(cmd.arg != NULL && cmd.arglen <= len);
        FUZZ_CHECK(memchr(cmd.arg, '\0', cmd.arglen) == NULL);
        if (pop3_parse_msgno(cmd.arg, cmd.arglen, &n) == MG_OK)
            FUZZ_CHECK(n >= 1);
        (void)pop3_parse_top(cmd.arg, cmd.arglen, &n, &lines);
        if (pop3_login_mailbox(cmd.arg, cmd.arglen, "example.test", id) ==
            MG_OK) {
            size_t l = strlen(id);

            FUZZ_CHECK(l >= 8 && l <= 32);
            for (size_t i = 0; i < l; i++)
                FUZZ_CHECK((id[i] >= 'a' && id[i] <= 'z') ||
                           (id[i] >= '0' && id[i] <= '9'));
        }
        if (pop3_sasl_plain(cmd.arg, cmd.arglen, sasl, sizeof(sasl), &z, &u,
                            &p) == MG_OK) {
            FUZZ_CHECK(u[0] != '\0' && p[0] != '\0');
            FUZZ_CHECK(z >= sasl && p < sasl + sizeof(sasl));
        }
    } else {
        FUZZ_CHECK(why != NULL && strpbrk(why, "\r\n") == NULL);
    }
}

/* The reference: a '.' at the start of every line doubled. */
static size_t
fuzz_ref_stuff(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0;
    bool bol = true;

    for (size_t i = 0; i < len; i++) {
        if (bol && in[i] == '.')
            out[o++] = '.';
        out[o++] = (char)in[i];
        bol = in[i] == '\n';
    }
    return o;
}

static void
fuzz_stuff(const uint8_t *data, size_t size)
{
    char *ref = malloc(2 * size + 8), *out = malloc(2 * size + 8);
    size_t rlen, olen, split;
    struct pop3_stuff st;
    char end[8];
    size_t elen;

    FUZZ_CHECK(ref != NULL && out != NULL);
    rlen = fuzz_ref_stuff(data, size, ref);

    /* whole */
    pop3_stuff_init(&st, POP3_ALL_LINES);
    olen = 0;
    FUZZ_CHECK(pop3_stuff_feed(&st, (const char *)data, size, out, &olen) ==
               size);
    FUZZ_CHECK(olen == rlen && memcmp(out, ref, rlen) == 0);
    elen = pop3_stuff_end(&st, end);
    FUZZ_CHECK(elen == 3 || elen == 5);
    FUZZ_CHECK((elen == 3) ==
               (size == 0 || (size >= 2 && data[size - 2] == '\r' &&
                              data[size - 1] == '\n')));

    /* two parts */
    split = size > 0 ? data[0] % size : 0;
    pop3_stuff_init(&st, POP3_ALL_LINES);
    olen = 0;
    (void)pop3_stuff_feed(&st, (const char *)data, split, out, &olen);
    (void)pop3_stuff_feed(&st, (const char *)data + split, size - split, out,
                          &olen);
    FUZZ_CHECK(olen == rlen && memcmp(out, ref, rlen) == 0);

    /* byte by byte */
    pop3_stuff_init(&st, POP3_ALL_LINES);
    olen = 0;
    for (size_t i = 0; i < size; i++)
        (void)pop3_stuff_feed(&st, (const char *)data + i, 1, out, &olen);
    FUZZ_CHECK(olen == rlen && memcmp(out, ref, rlen) == 0);

    /* TOP: a prefix of the input, stuffed like the reference */
    pop3_stuff_init(&st, size > 0 ? data[size - 1] % 4 : 0);
    olen = 0;
    split = pop3_stuff_feed(&st, (const char *)data, size, out, &olen);
    FUZZ_CHECK(split <= size);
    FUZZ_CHECK(split == size || st.done);
    FUZZ_CHECK(olen == fuzz_ref_stuff(data, split, ref) &&
               memcmp(out, ref, olen) == 0);
    if (st.done)
        FUZZ_CHECK(split > 0 && data[split - 1] == '\n');
    free(ref);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t start = 0;

    for (size_t i = 0; i <= size; i++) {
        if (i == size || data[i] == '\n') {
            size_t len = i - start;

            if (len > 0 && data[start + len - 1] == '\r')
                len--;
            if (len <= POP3_LINE_MAX)
                fuzz_line((const char *)data + start, len);
            start = i + 1;
        }
    }
    fuzz_stuff(data, size);
    return 0;
}
