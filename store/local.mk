## store/: the LMDB store and the vault (libsodium, OpenSSL's AES-GCM)
noinst_LTLIBRARIES += libmgstore.la
libmgstore_la_SOURCES = \
	store/store.h \
	store/vault.c \
	store/vault_aes.h \
	store/vault_aes.c \
	store/codec.c \
	store/store.c \
	store/records.c \
	store/message.c \
	store/pagedrop.c \
	store/dedup.h \
	store/dedup.c \
	store/module_api.c
libmgstore_la_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(SODIUM_CFLAGS) \
	$(LMDB_CFLAGS) $(LIBCONFIG_CFLAGS)
libmgstore_la_LIBADD = $(OPENSSL_LIBS) $(SODIUM_LIBS) $(LMDB_LIBS)
