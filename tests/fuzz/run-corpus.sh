#!/bin/sh
# Replays every seed of tests/fuzz/corpus/smtp through the fuzz target
# (built without libFuzzer: it then reads the files given as arguments).
dir=$(dirname "$0")
exec ./tests/fuzz/fuzz_smtp "$dir"/corpus/smtp/*
