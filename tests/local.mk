## tests/: unit tests (cmocka) run by `make check`; the integration suites
## (tests/integration, pytest) run from tests/run-all.sh

# test-only modules for the loader tests (shared objects, never installed)
MG_TESTMOD_LDFLAGS = -module -avoid-version -shared -rpath /nowhere \
	$(MG_SAN_LDFLAGS)
# fault injection: fsync/fdatasync fail with EIO while a flag file exists
check_LTLIBRARIES += tests/tools/failsync.la
tests_tools_failsync_la_SOURCES = tests/tools/failsync.c
tests_tools_failsync_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_tools_failsync_la_LIBADD = -ldl
# the power-cut test: logs data.mdb writes, syncs and ACK lines in order
check_LTLIBRARIES += tests/tools/powerlog.la
tests_tools_powerlog_la_SOURCES = tests/tools/powerlog.c
tests_tools_powerlog_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_tools_powerlog_la_LIBADD = -ldl -lpthread
check_LTLIBRARIES += tests/modules/good.la tests/modules/badabi.la \
	tests/modules/badsig.la tests/modules/nosym.la tests/modules/misnamed.la
tests_modules_good_la_SOURCES = tests/modules/loader_good.c
tests_modules_good_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_modules_badabi_la_SOURCES = tests/modules/loader_badabi.c
tests_modules_badabi_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_modules_badsig_la_SOURCES = tests/modules/loader_badsig.c
tests_modules_badsig_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_modules_nosym_la_SOURCES = tests/modules/loader_nosym.c
tests_modules_nosym_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)
tests_modules_misnamed_la_SOURCES = tests/modules/loader_misnamed.c
tests_modules_misnamed_la_LDFLAGS = $(MG_TESTMOD_LDFLAGS)

# test-only store tools (never installed): mg-dump lists and decrypts a
# mailbox, mg-crashtest drives tests/integration/test_store_crash.py,
# mg-corrupt flips a bit of a stored chunk, mg-legacy stores a message
# as encryption scheme 1 did
MG_TOOL_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(LIBCONFIG_CFLAGS) \
	$(SODIUM_CFLAGS) $(LMDB_CFLAGS)
MG_TOOL_LDADD = libmgstore.la libmgcore.la $(SODIUM_LIBS) $(LMDB_LIBS)
check_PROGRAMS += tests/tools/mg-dump tests/tools/mg-crashtest \
	tests/tools/mg-corrupt tests/tools/mg-legacy
tests_tools_mg_dump_SOURCES = tests/tools/mg-dump.c
tests_tools_mg_dump_CFLAGS = $(MG_TOOL_CFLAGS)
tests_tools_mg_dump_LDADD = $(MG_TOOL_LDADD)
tests_tools_mg_crashtest_SOURCES = tests/tools/mg-crashtest.c
tests_tools_mg_crashtest_CFLAGS = $(MG_TOOL_CFLAGS)
tests_tools_mg_crashtest_LDADD = $(MG_TOOL_LDADD)
tests_tools_mg_corrupt_SOURCES = tests/tools/mg-corrupt.c
tests_tools_mg_corrupt_CFLAGS = $(MG_TOOL_CFLAGS)
tests_tools_mg_corrupt_LDADD = $(MG_TOOL_LDADD)
tests_tools_mg_legacy_SOURCES = tests/tools/mg-legacy.c
tests_tools_mg_legacy_CFLAGS = $(MG_TOOL_CFLAGS)
tests_tools_mg_legacy_LDADD = $(MG_TOOL_LDADD)

if HAVE_CMOCKA
MG_UNIT_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS) $(OPENSSL_CFLAGS) \
	$(LIBCONFIG_CFLAGS)
MG_UNIT_LDADD = libmgstore.la libmgcore.la $(CMOCKA_LIBS)

MG_UNIT_TESTS = tests/unit/test_buf tests/unit/test_netaddr \
	tests/unit/test_proxyv2 tests/unit/test_cfg tests/unit/test_loader \
	tests/unit/test_hooks tests/unit/test_workers tests/unit/test_tls \
	tests/unit/test_daemon tests/unit/test_vault tests/unit/test_codec \
	tests/unit/test_store tests/unit/test_message
check_PROGRAMS += $(MG_UNIT_TESTS)
TESTS += $(MG_UNIT_TESTS)
AM_TESTS_ENVIRONMENT = \
	MG_TEST_MODULES='$(abs_top_builddir)/tests/modules/.libs'; \
	MG_TEST_SRCDIR='$(abs_top_srcdir)/tests'; \
	export MG_TEST_MODULES MG_TEST_SRCDIR;

tests_unit_test_buf_SOURCES = tests/unit/test_buf.c
tests_unit_test_buf_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_buf_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_netaddr_SOURCES = tests/unit/test_netaddr.c
tests_unit_test_netaddr_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_netaddr_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_proxyv2_SOURCES = tests/unit/test_proxyv2.c
tests_unit_test_proxyv2_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_proxyv2_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_cfg_SOURCES = tests/unit/test_cfg.c
tests_unit_test_cfg_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_cfg_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_loader_SOURCES = tests/unit/test_loader.c
tests_unit_test_loader_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_loader_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_hooks_SOURCES = tests/unit/test_hooks.c
tests_unit_test_hooks_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_hooks_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_workers_SOURCES = tests/unit/test_workers.c
tests_unit_test_workers_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_workers_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_tls_SOURCES = tests/unit/test_tls.c
tests_unit_test_tls_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_tls_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_vault_SOURCES = tests/unit/test_vault.c
tests_unit_test_vault_CFLAGS = $(MG_UNIT_CFLAGS) $(SODIUM_CFLAGS)
tests_unit_test_vault_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_codec_SOURCES = tests/unit/test_codec.c
tests_unit_test_codec_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_codec_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_store_SOURCES = tests/unit/test_store.c
tests_unit_test_store_CFLAGS = $(MG_UNIT_CFLAGS) $(LMDB_CFLAGS)
tests_unit_test_store_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_message_SOURCES = tests/unit/test_message.c
tests_unit_test_message_CFLAGS = $(MG_UNIT_CFLAGS) $(LMDB_CFLAGS)
tests_unit_test_message_LDADD = $(MG_UNIT_LDADD)
tests_unit_test_daemon_SOURCES = tests/unit/test_daemon.c
tests_unit_test_daemon_CFLAGS = $(MG_UNIT_CFLAGS)
tests_unit_test_daemon_LDADD = $(MG_UNIT_LDADD)
endif

EXTRA_DIST += tests/run-all.sh tests/cppcheck.cfg tests/quickstart_smoke.py \
	tests/unit/data \
	tests/modules/Makefile.ext tests/modules/testline.c tests/modules/hooktest.c \
	tests/modules/pop3hook.c \
	tests/integration

# whole SMTP and POP3 sessions through the core, the store and the real
# modules (dlopen'd from the build tree). The store is compiled in with
# MG_FUZZ_KDF_MIN (Argon2id at its minimum). `make check` replays the seed
# corpus; `make fuzz-session` builds the libFuzzer binary with clang
MG_FUZZ_STORE_SOURCES = store/vault.c store/vault_aes.c store/codec.c \
	store/store.c store/records.c store/message.c store/pagedrop.c \
	store/dedup.c store/module_api.c
check_PROGRAMS += tests/fuzz/fuzz_session
TESTS += tests/fuzz/run-corpus-session.sh
tests_fuzz_fuzz_session_SOURCES = tests/fuzz/fuzz_session.c \
	tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_replay.h \
	$(MG_FUZZ_STORE_SOURCES)
tests_fuzz_fuzz_session_CPPFLAGS = $(AM_CPPFLAGS) -DMG_FUZZ_KDF_MIN -DMG_FUZZ_OWN_MAIN \
	-DMG_FUZZ_SMTP_SO='"$(abs_top_builddir)/modules/smtp/.libs/smtp.so"' \
	-DMG_FUZZ_POP3_SO='"$(abs_top_builddir)/modules/pop3/.libs/pop3.so"'
tests_fuzz_fuzz_session_CFLAGS = $(MG_TOOL_CFLAGS)
tests_fuzz_fuzz_session_LDADD = libmgcore.la $(SODIUM_LIBS) $(LMDB_LIBS)
EXTRA_DIST += tests/fuzz/run-corpus-session.sh

# the libFuzzer build: the modules with coverage (fuzzer-no-link), the
# core, the store and the harness in one binary
MG_FUZZ_CC = clang -g -O1 -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined -DMG_LIBFUZZER \
	-I$(top_builddir) -I$(top_builddir)/include -I$(top_srcdir)/include
# the .c files of a source list, under top_srcdir
MG_FUZZ_C = sh -c 'for f; do case $$f in *.c) echo "$$0/$$f";; esac; done' \
	$(top_srcdir)
fuzz-session:
	$(MKDIR_P) tests/fuzz/session
	$(MG_FUZZ_CC) -fsanitize=fuzzer-no-link -fPIC -shared \
	  -I$(top_srcdir)/modules/smtp \
	  `$(MG_FUZZ_C) $(modules_smtp_smtp_la_SOURCES)` \
	  -o tests/fuzz/session/smtp.so
	$(MG_FUZZ_CC) -fsanitize=fuzzer-no-link -fPIC -shared \
	  -I$(top_srcdir)/modules/pop3 \
	  `$(MG_FUZZ_C) $(modules_pop3_pop3_la_SOURCES)` \
	  -o tests/fuzz/session/pop3.so
	$(MG_FUZZ_CC) -fsanitize=fuzzer -DMG_FUZZ_KDF_MIN \
	  -DMG_FUZZ_SMTP_SO='"$(abs_top_builddir)/tests/fuzz/session/smtp.so"' \
	  -DMG_FUZZ_POP3_SO='"$(abs_top_builddir)/tests/fuzz/session/pop3.so"' \
	  $(MG_CPPFLAGS) $(OPENSSL_CFLAGS) $(SODIUM_CFLAGS) $(LIBCONFIG_CFLAGS) \
	  $(LMDB_CFLAGS) $(top_srcdir)/tests/fuzz/fuzz_session.c \
	  `$(MG_FUZZ_C) $(libmgcore_la_SOURCES) $(MG_FUZZ_STORE_SOURCES)` \
	  $(EV_LIBS) $(OPENSSL_LIBS) $(SODIUM_LIBS) $(LIBCONFIG_LIBS) \
	  $(LMDB_LIBS) -ldl -lpthread -o tests/fuzz/fuzz_session_libfuzzer
.PHONY: fuzz-session
