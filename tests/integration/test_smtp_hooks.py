"""SMTP module: the hooks of doc/hooks.md work for real (issue 4).

The test-only module tests/modules/hooktest.c (built out of tree against
the installed headers, like testline) registers handlers chosen by its
settings and logs what it sees ("hooktest: ..."); these tests drive the
smtp engine with a raw client and check the replies, the daemon log and
the store (mg-dump).
"""

import base64
import time

import pytest

from conftest import (SMTP_DOMAIN, cfg_value, mailbox_create, mg_dump,
                      split_trace, tls_client_ctx)
from smtp_helpers import Smtp, addr, connect, dot_stuff, sample_message, session

SENDER = "alice@sender.test"
TEMPFAIL_SENDER = "grey@sender.test"
ACCEPT_DOMAIN = "upstream.test"


def hooktest_text(so, settings):
    parts = ['name = "hooktest";', "path = %s;" % cfg_value(so)]
    for k, v in settings.items():
        parts.append("%s = %s;" % (k, cfg_value(v)))
    return "{ " + " ".join(parts) + " }"


@pytest.fixture
def make_hooks(make_smtp, hooktest_so):
    """make_hooks(**settings): a daemon with the smtp module and the
    hooktest module with these settings (none: loaded, no handlers)."""

    def make(smtp=None, **settings):
        d = make_smtp(smtp=smtp, modules=[hooktest_text(hooktest_so, settings)])
        d.wait_log(r"hooktest: started")
        return d

    return make


def test_probe(make_hooks, certs):
    d = make_hooks(auth=True)
    c = session(d.smtp_port, certs)
    print(d.log())
