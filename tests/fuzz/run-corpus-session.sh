#!/bin/sh
# Replays every seed of tests/fuzz/corpus/session through the session
# fuzz target (built without libFuzzer: it then reads the files given as
# arguments, one whole SMTP or POP3 session each).
dir=$(dirname "$0")
exec ./tests/fuzz/fuzz_session "$dir"/corpus/session/*
