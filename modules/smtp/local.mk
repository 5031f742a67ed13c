## modules/smtp: the SMTP engine (journal target); built against the
## public headers only, like a third-party module
pkglib_LTLIBRARIES += modules/smtp/smtp.la
modules_smtp_smtp_la_SOURCES = \
	modules/smtp/smtp.h \
	modules/smtp/smtp_engine.h \
	modules/smtp/smtp_parse.c \
	modules/smtp/smtp_data.c \
	modules/smtp/smtp_session.h \
	modules/smtp/smtp_session.c \
	modules/smtp/smtp_command.c \
	modules/smtp/smtp_envelope.c \
	modules/smtp/smtp_body.c \
	modules/smtp/smtp_deliver.c \
	modules/smtp/smtp_auth.c \
	modules/smtp/smtp_hooks.c \
	modules/smtp/smtp_reply.c \
	modules/smtp/smtp_util.c \
	modules/smtp/smtp_module.c
modules_smtp_smtp_la_CPPFLAGS = -I$(top_builddir)/include \
	-I$(top_srcdir)/include -I$(top_srcdir)/modules/smtp
modules_smtp_smtp_la_LDFLAGS = $(MG_MODLDFLAGS)

if HAVE_CMOCKA
MG_UNIT_TESTS += tests/unit/test_smtp_parse tests/unit/test_smtp_data
tests_unit_test_smtp_parse_SOURCES = tests/unit/test_smtp_parse.c \
	modules/smtp/smtp_parse.c
tests_unit_test_smtp_parse_CPPFLAGS = $(modules_smtp_smtp_la_CPPFLAGS)
tests_unit_test_smtp_parse_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_smtp_parse_LDADD = $(CMOCKA_LIBS)
tests_unit_test_smtp_data_SOURCES = tests/unit/test_smtp_data.c \
	modules/smtp/smtp_data.c
tests_unit_test_smtp_data_CPPFLAGS = $(modules_smtp_smtp_la_CPPFLAGS)
tests_unit_test_smtp_data_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_smtp_data_LDADD = $(CMOCKA_LIBS)
endif

# the fuzz target replays its seed corpus under `make check` (any
# compiler); `make fuzz-smtp` builds the real libFuzzer binary with clang
check_PROGRAMS += tests/fuzz/fuzz_smtp
TESTS += tests/fuzz/run-corpus.sh
tests_fuzz_fuzz_smtp_SOURCES = tests/fuzz/fuzz_smtp.c \
	tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_replay.h \
	modules/smtp/smtp_parse.c modules/smtp/smtp_data.c
tests_fuzz_fuzz_smtp_CPPFLAGS = $(modules_smtp_smtp_la_CPPFLAGS)
EXTRA_DIST += tests/fuzz/run-corpus.sh tests/fuzz/corpus

fuzz-smtp:
	clang -g -O1 -fsanitize=fuzzer,address,undefined -DMG_LIBFUZZER \
	  $(modules_smtp_smtp_la_CPPFLAGS) -I$(top_builddir) \
	  $(top_srcdir)/tests/fuzz/fuzz_smtp.c \
	  $(top_srcdir)/modules/smtp/smtp_parse.c \
	  $(top_srcdir)/modules/smtp/smtp_data.c -o tests/fuzz/fuzz_smtp_libfuzzer
.PHONY: fuzz-smtp
