#!/bin/sh
# Replays every seed of tests/fuzz/corpus/pop3 through the fuzz target
# (built without libFuzzer: it then reads the files given as arguments).
dir=$(dirname "$0")
exec ./tests/fuzz/fuzz_pop3 "$dir"/corpus/pop3/*
