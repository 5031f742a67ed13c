## modules/proxy: the recording proxy (POP3 half: pop3.login takeover;
## SMTP half: smtp.auth with keep_engine and the per-command hooks);
## built against the public headers only, like a third-party module
pkglib_LTLIBRARIES += modules/proxy/proxy.la
modules_proxy_proxy_la_SOURCES = \
	modules/proxy/proxy.h \
	modules/proxy/proxy_target.h \
	modules/proxy/proxy_target.c \
	modules/proxy/proxy_policy.c \
	modules/proxy/proxy_upstream.c \
	modules/proxy/proxy_record.c \
	modules/proxy/proxy_pop3.h \
	modules/proxy/proxy_pop3.c \
	modules/proxy/proxy_pop3_relay.c \
	modules/proxy/proxy_pop3_ahead.c \
	modules/proxy/proxy_smtp.h \
	modules/proxy/proxy_smtp.c \
	modules/proxy/proxy_smtp_upstream.c \
	modules/proxy/proxy_smtp_relay.c \
	modules/proxy/proxy_smtp_reply.c \
	modules/proxy/proxy_module.c
modules_proxy_proxy_la_CPPFLAGS = -I$(top_builddir)/include \
	-I$(top_srcdir)/include -I$(top_srcdir)/modules/proxy
modules_proxy_proxy_la_LDFLAGS = $(MG_MODLDFLAGS)

if HAVE_CMOCKA
MG_UNIT_TESTS += tests/unit/test_proxy_target
tests_unit_test_proxy_target_SOURCES = tests/unit/test_proxy_target.c \
	modules/proxy/proxy_target.c
tests_unit_test_proxy_target_CPPFLAGS = $(modules_proxy_proxy_la_CPPFLAGS)
tests_unit_test_proxy_target_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_proxy_target_LDADD = $(CMOCKA_LIBS)
MG_UNIT_TESTS += tests/unit/test_proxy_smtp_reply
tests_unit_test_proxy_smtp_reply_SOURCES = tests/unit/test_proxy_smtp_reply.c \
	modules/proxy/proxy_smtp_reply.c
tests_unit_test_proxy_smtp_reply_CPPFLAGS = $(modules_proxy_proxy_la_CPPFLAGS)
tests_unit_test_proxy_smtp_reply_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_proxy_smtp_reply_LDADD = $(CMOCKA_LIBS)
endif

# the fuzz target replays its seed corpus under `make check`; `make
# fuzz-proxy` builds the real libFuzzer binary with clang
check_PROGRAMS += tests/fuzz/fuzz_proxy_target
TESTS += tests/fuzz/run-corpus-proxy.sh
tests_fuzz_fuzz_proxy_target_SOURCES = tests/fuzz/fuzz_proxy_target.c \
	tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_replay.h \
	modules/proxy/proxy_target.c
tests_fuzz_fuzz_proxy_target_CPPFLAGS = $(modules_proxy_proxy_la_CPPFLAGS)
EXTRA_DIST += tests/fuzz/run-corpus-proxy.sh

# the SMTP half's reply parser and dot-stuffing, against a model
check_PROGRAMS += tests/fuzz/fuzz_proxy_smtp
TESTS += tests/fuzz/run-corpus-proxy-smtp.sh
tests_fuzz_fuzz_proxy_smtp_SOURCES = tests/fuzz/fuzz_proxy_smtp.c \
	tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_replay.h \
	modules/proxy/proxy_smtp_reply.c
tests_fuzz_fuzz_proxy_smtp_CPPFLAGS = $(modules_proxy_proxy_la_CPPFLAGS)
EXTRA_DIST += tests/fuzz/run-corpus-proxy-smtp.sh

fuzz-proxy:
	clang -g -O1 -fsanitize=fuzzer,address,undefined -DMG_LIBFUZZER \
	  $(modules_proxy_proxy_la_CPPFLAGS) -I$(top_builddir) \
	  $(top_srcdir)/tests/fuzz/fuzz_proxy_target.c \
	  $(top_srcdir)/modules/proxy/proxy_target.c \
	  -o tests/fuzz/fuzz_proxy_target_libfuzzer
	clang -g -O1 -fsanitize=fuzzer,address,undefined -DMG_LIBFUZZER \
	  $(modules_proxy_proxy_la_CPPFLAGS) -I$(top_builddir) \
	  $(top_srcdir)/tests/fuzz/fuzz_proxy_smtp.c \
	  $(top_srcdir)/modules/proxy/proxy_smtp_reply.c \
	  -o tests/fuzz/fuzz_proxy_smtp_libfuzzer
.PHONY: fuzz-proxy
