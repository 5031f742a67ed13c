## doc/: administrator and module documentation, man pages
man8_MANS += doc/man/mailgated.8 doc/man/mailgatectl.8
EXTRA_DIST += $(man8_MANS)
dist_doc_DATA += README.md doc/modules.md doc/hooks.md doc/security.md \
	doc/administration.md doc/configuration.md doc/mailgate.conf.example
