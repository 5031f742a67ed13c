## bench/store: the store benchmark (built, never run by the tests)
noinst_PROGRAMS += bench/store/mg-store-bench
bench_store_mg_store_bench_SOURCES = bench/store/store_bench.c
bench_store_mg_store_bench_CFLAGS = $(AM_CFLAGS) $(SODIUM_CFLAGS) \
	$(LMDB_CFLAGS) $(LIBCONFIG_CFLAGS) $(OPENSSL_CFLAGS)
bench_store_mg_store_bench_LDADD = libmgstore.la libmgcore.la
EXTRA_DIST += bench/store/run.sh bench/README.md bench/lib.sh
