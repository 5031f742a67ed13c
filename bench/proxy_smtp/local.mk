## bench/proxy_smtp: the SMTP load generator (built so that it stays
## warning-free; run.sh builds its own optimized copy and runs it)
noinst_PROGRAMS += bench/proxy_smtp/smtpload
bench_proxy_smtp_smtpload_SOURCES = bench/proxy_smtp/smtpload.c
bench_proxy_smtp_smtpload_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS)
bench_proxy_smtp_smtpload_LDADD = $(OPENSSL_LIBS)
EXTRA_DIST += bench/proxy_smtp/run.sh bench/proxy_smtp/drive.py
