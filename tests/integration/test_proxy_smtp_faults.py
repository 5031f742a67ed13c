"""The SMTP proxy when the store cannot take the copy (fsync failing with
EIO through tests/tools/failsync.so): the final dot never goes upstream,
the client gets a 4xx and the upstream receives nothing. Once the disk is
back, the same message goes through and is recorded."""

import os
import smtplib

import pytest

from conftest import failsync_env
from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (copies, copy_body, login_name, mailbox_create,
                                message, proxy_client)


@pytest.mark.watchdog(40)
def test_store_failure_sends_nothing_upstream(gateway, upstream, certs,
                                              tmp_path):
    up = upstream()
    d = gateway(start=False)
    flag = str(tmp_path / "fail-now")
    d.extra_env = failsync_env(flag)
    d.start()
    mb = mailbox_create(d)
    msg = message("faults", size=20000)
    s = proxy_client(d, certs, login_name(up.port, mb))
    open(flag, "w").close()
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("alice@upstream.test", ["bob@example.org"], msg)
    finally:
        os.unlink(flag)
    assert e.value.smtp_code == 451, e.value
    assert b"4.3.0" in e.value.smtp_error and b"not sent" in \
        e.value.smtp_error, e.value
    d.wait_log(r"could not be committed .*not sent")
    assert up.messages == [] and up.refused == []
    s.close()
    # the disk is back
    s = proxy_client(d, certs, login_name(up.port, mb))
    assert s.sendmail("alice@upstream.test", ["bob@example.org"], msg) == {}
    s.quit()
    assert [m["content"] for m in up.messages] == [msg]
    assert [copy_body(r) for r in copies(d, mb)] == [msg]
