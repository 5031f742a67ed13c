"""The proxy when the store cannot take a copy (fsync failing with EIO
through tests/tools/failsync.so): a DELE of a message without a copy is
refused with -ERR [SYS/TEMP] and nothing is deleted upstream; a RETR is
broken off before its terminating dot. Once the disk is back, both work."""

import os
import poplib

import pytest

from conftest import failsync_env
from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (login_name, mailbox_create, proxy_login,
                                recorded, sample_messages)


@pytest.mark.watchdog(40)
def test_store_failure_refuses_dele_and_breaks_off_retr(gateway, dovecot,
                                                        certs, tmp_path):
    dv = dovecot()
    dv.add(sample_messages(2, tag="x"))
    d = gateway(start=False)
    flag = str(tmp_path / "fail-now")
    d.extra_env = failsync_env(flag)
    d.start()
    mb = mailbox_create(d)
    open(flag, "w").close()
    p = proxy_login(d, certs, login_name(dv.port, mb))
    with pytest.raises(poplib.error_proto) as e:
        p.dele(1)
    assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]"), e.value.args
    # a RETR gets its data but never its end: the client retries later
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    p.close()
    d.wait_log(r"could not be recorded .*DELE refused")
    os.unlink(flag)
    assert dv.messages_left() == 2
    # the disk is back
    p = proxy_login(d, certs, login_name(dv.port, mb))
    assert p.dele(1).startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    assert dv.messages_left() == 1
    assert len(recorded(d, mb)) == 1
