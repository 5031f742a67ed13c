/* tests/fuzz/fuzz_replay.h -- the corpus replay every fuzz target shares
 * outside libFuzzer (make check): each file named on the command line is
 * read whole and given to LLVMFuzzerTestOneInput. */
#ifndef MG_FUZZ_REPLAY_H
#define MG_FUZZ_REPLAY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant a fuzz target checks: abort (libFuzzer's crash) with where
 * and what. */
#define FUZZ_CHECK(c)                                                        \
    do {                                                                     \
        if (!(c)) {                                                          \
            (void)fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, \
                          __LINE__, #c);                                     \
            abort();                                                         \
        }                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 0 when every file was read and replayed; 1 (with perror) otherwise. */
int fuzz_replay_files(int argc, char **argv);

#endif
