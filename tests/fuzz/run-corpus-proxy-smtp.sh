#!/bin/sh
# Replays every seed of tests/fuzz/corpus/proxy_smtp through the SMTP
# proxy's fuzz target (built without libFuzzer: it then reads the files
# given as arguments).
dir=$(dirname "$0")
exec ./tests/fuzz/fuzz_proxy_smtp "$dir"/corpus/proxy_smtp/*
