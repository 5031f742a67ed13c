/* tests/fuzz/fuzz_replay.c -- replay corpus files through a fuzz target
 * (the main() of the make-check builds; libFuzzer brings its own). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>

#include "fuzz_replay.h"

/* The whole file, however long: a target's invariants may depend on it. */
static uint8_t *
replay_read(FILE *f, size_t *len_r)
{
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;

    do {
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 65536;
            buf = realloc(buf, cap);
            if (buf == NULL)
                abort();
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    *len_r = len;
    return buf;
}

int
fuzz_replay_files(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        uint8_t *buf;
        size_t len;

        if (f == NULL) {
            perror(argv[i]); /* NOLINT(cert-err33-c) */
            return 1;
        }
        buf = replay_read(f, &len);
        if (ferror(f)) {
            perror(argv[i]); /* NOLINT(cert-err33-c) */
            (void)fclose(f);
            free(buf);
            return 1;
        }
        (void)fclose(f);
        (void)LLVMFuzzerTestOneInput(buf, len);
        free(buf);
    }
    return 0;
}

#ifndef MG_FUZZ_OWN_MAIN
/* The replay is the whole program; a target that sets up more (the
 * session target) has a main of its own. */
int
main(int argc, char **argv)
{
    return fuzz_replay_files(argc, argv);
}
#endif
