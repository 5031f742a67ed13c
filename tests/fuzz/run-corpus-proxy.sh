#!/bin/sh
# Replays every seed of tests/fuzz/corpus/proxy through the fuzz target
# (built without libFuzzer: it then reads the files given as arguments).
dir=$(dirname "$0")
exec ./tests/fuzz/fuzz_proxy_target "$dir"/corpus/proxy/*
