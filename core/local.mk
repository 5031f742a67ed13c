## core/: the daemon mailgated, and libmgcore (shared with unit tests)
noinst_LTLIBRARIES += libmgcore.la
libmgcore_la_SOURCES = \
	core/mg.h \
	core/xalloc.c \
	core/log.c \
	core/buf.c \
	core/netaddr.c \
	core/proxyv2.c \
	core/cfg.c \
	core/loader.c \
	core/hooks.c \
	core/workers.c \
	core/tls.c \
	core/tls_resume.c \
	core/listener.c \
	core/limits.c \
	core/conn.c \
	core/outbound.c \
	core/generation.c \
	core/api.c \
	core/daemon.c
libmgcore_la_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(SODIUM_CFLAGS) \
	$(LIBCONFIG_CFLAGS)
libmgcore_la_LIBADD = $(EV_LIBS) $(OPENSSL_LIBS) $(SODIUM_LIBS) \
	$(LIBCONFIG_LIBS) $(LMDB_LIBS)

sbin_PROGRAMS += mailgated
mailgated_SOURCES = core/main.c
mailgated_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(LIBCONFIG_CFLAGS)
mailgated_LDADD = libmgstore.la libmgcore.la

sbin_PROGRAMS += mailgatectl
mailgatectl_SOURCES = core/ctl/ctl.h core/ctl/mailgatectl.c \
	core/ctl/ctl_util.c core/ctl/ctl_priv.c core/ctl/ctl_files.c \
	core/ctl/ctl_mailbox.c core/ctl/ctl_backup.c
mailgatectl_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(LIBCONFIG_CFLAGS) \
	$(LMDB_CFLAGS)
mailgatectl_LDADD = libmgstore.la libmgcore.la
