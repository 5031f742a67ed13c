## doc/: administrator and module documentation, man pages
man8_MANS += doc/man/mailgated.8 doc/man/mailgatectl.8
EXTRA_DIST += $(man8_MANS)
dist_doc_DATA += README.md doc/modules.md doc/hooks.md doc/security.md \
	doc/administration.md doc/configuration.md doc/journaling.md doc/mailgate.conf.example

## the systemd unit, with this build's paths
if MG_SYSTEMD_UNIT
systemdunitdir = @mg_unitdir@
nodist_systemdunit_DATA = mailgated.service
endif
EXTRA_DIST += doc/mailgated.service.in
CLEANFILES += mailgated.service
mailgated.service: $(srcdir)/doc/mailgated.service.in Makefile
	$(AM_V_GEN)sed -e 's|@sbindir[@]|$(sbindir)|g' \
	  -e 's|@confdir[@]|$(confdir)|g' -e 's|@statedir[@]|$(statedir)|g' \
	  $(srcdir)/doc/mailgated.service.in > $@.tmp && mv $@.tmp $@
