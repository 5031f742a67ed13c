/* tests/fuzz/fuzz_replay.h -- the corpus replay every fuzz target shares
 * outside libFuzzer (make check): each file named on the command line is
 * read whole and given to LLVMFuzzerTestOneInput. */
#ifndef MG_FUZZ_REPLAY_H
#define MG_FUZZ_REPLAY_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 0 when every file was read and replayed; 1 (with perror) otherwise. */
int fuzz_replay_files(int argc, char **argv);

#endif
