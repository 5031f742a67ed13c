## modules/pop3: the POP3 engine (the archiver's pickup point); built
## against the public headers only, like a third-party module
pkglib_LTLIBRARIES += modules/pop3/pop3.la
modules_pop3_pop3_la_SOURCES = \
	modules/pop3/pop3.h \
	modules/pop3/pop3_engine.h \
	modules/pop3/pop3_parse.c \
	modules/pop3/pop3_throttle.c \
	modules/pop3/pop3_auth.c \
	modules/pop3/pop3_retr.c \
	modules/pop3/pop3_trans.c \
	modules/pop3/pop3_session.c \
	modules/pop3/pop3_module.c
modules_pop3_pop3_la_CPPFLAGS = -I$(top_builddir)/include \
	-I$(top_srcdir)/include -I$(top_srcdir)/modules/pop3
modules_pop3_pop3_la_LDFLAGS = $(MG_MODLDFLAGS)

if HAVE_CMOCKA
MG_UNIT_TESTS += tests/unit/test_pop3_parse
tests_unit_test_pop3_parse_SOURCES = tests/unit/test_pop3_parse.c \
	modules/pop3/pop3_parse.c
tests_unit_test_pop3_parse_CPPFLAGS = $(modules_pop3_pop3_la_CPPFLAGS)
tests_unit_test_pop3_parse_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_pop3_parse_LDADD = $(CMOCKA_LIBS)
endif

# the fuzz target replays its seed corpus under `make check` (any
# compiler); `make fuzz-pop3` builds the real libFuzzer binary with clang
check_PROGRAMS += tests/fuzz/fuzz_pop3
TESTS += tests/fuzz/run-corpus-pop3.sh
tests_fuzz_fuzz_pop3_SOURCES = tests/fuzz/fuzz_pop3.c \
	tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_replay.h \
	modules/pop3/pop3_parse.c
tests_fuzz_fuzz_pop3_CPPFLAGS = $(modules_pop3_pop3_la_CPPFLAGS)
EXTRA_DIST += tests/fuzz/run-corpus-pop3.sh

fuzz-pop3:
	clang -g -O1 -fsanitize=fuzzer,address,undefined -DMG_LIBFUZZER \
	  $(modules_pop3_pop3_la_CPPFLAGS) -I$(top_builddir) \
	  $(top_srcdir)/tests/fuzz/fuzz_pop3.c \
	  $(top_srcdir)/modules/pop3/pop3_parse.c -o tests/fuzz/fuzz_pop3_libfuzzer
.PHONY: fuzz-pop3
