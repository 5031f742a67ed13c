"""DELE through the recording proxy: the upstream deletes a message only
once the gateway holds a copy; a DELE of a message nobody retrieved
records it first. And fetchmail, which retrieves and deletes."""

from fetchmail_helpers import Fetchmail
from proxy_pop3_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_pop3_helpers import (DOVECOT_PASS, crlf, login_name,
                                mailbox_create, proxy_login, recorded, retr,
                                sample_messages, strip_received)


def test_dele_after_retr_and_without(gateway, dovecot, certs):
    dv = dovecot()
    msgs = sample_messages(3, size=5000, tag="d")
    dv.add(msgs)
    # without record-ahead, which would record 2 and 3 after RETR 1
    # (test_proxy_pop3_ahead.py)
    d = gateway(proxy={"prefetch_max_size": 0})
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    first = retr(p, 1)
    assert p.dele(1).startswith(b"+OK")
    # message 2 was never retrieved: the DELE records it first
    assert p.dele(2).startswith(b"+OK")
    copies = recorded(d, mb)
    assert len(copies) == 2
    bodies = sorted(strip_received(c["body"]) for c in copies)
    assert first in bodies
    # nothing is deleted upstream before QUIT, and the copies exist
    assert dv.messages_left() == 3
    assert p.quit().startswith(b"+OK")
    assert dv.messages_left() == 1
    expected = sorted(crlf(m) for m in msgs)
    assert all(b in expected for b in bodies)
    # the one left upstream is the one neither retrieved nor deleted
    p = proxy_login(d, certs, login_name(dv.port, mb))
    left = retr(p, 1)
    p.quit()
    assert left not in bodies and left in expected
    assert len(recorded(d, mb)) == 3
    d.wait_log(r"ended \(QUIT\): 1 retrieved, 2 recorded, 1 already "
               r"stored, 2 deleted, 0 failures; 0 recorded ahead")


def test_dele_twice_and_rset(gateway, dovecot, certs):
    dv = dovecot()
    dv.add(sample_messages(2, tag="r"))
    d = gateway()
    mb = mailbox_create(d)
    p = proxy_login(d, certs, login_name(dv.port, mb))
    assert p.dele(1).startswith(b"+OK")
    try:
        p.dele(1)
        raise AssertionError("second DELE accepted")
    except Exception as e:  # poplib.error_proto
        assert b"-ERR" in e.args[0]
    assert p.rset().startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    assert dv.messages_left() == 2  # RSET undid the DELE
    assert len(recorded(d, mb)) == 1


@__import__("pytest").mark.watchdog(60)
@__import__("pytest").mark.parametrize("ahead", [False, True])
def test_fetchmail_through_the_proxy(gateway, dovecot, certs, tmp_path, ahead):
    dv = dovecot()
    msgs = sample_messages(6, size=20000, tag="f")
    dv.add(msgs)
    d = gateway(proxy={"prefetch_max_size": 1048576 if ahead else 0})
    mb = mailbox_create(d)
    who = {"id": login_name(dv.port, mb), "password": DOVECOT_PASS}
    fm = Fetchmail(str(tmp_path), who, certs["cert"])
    r = fm.run(d.pop3s_port, "implicit")
    assert r.returncode == 0, r.stdout
    got = sorted(fm.delivered())
    assert got == sorted(crlf(m) for m in msgs)
    copies = recorded(d, mb)
    assert sorted(strip_received(c["body"]) for c in copies) == got
    assert dv.messages_left() == 0  # fetchmail deleted them, after the copies
    # nothing left: a second poll retrieves and records nothing
    r = fm.run(d.pop3s_port, "implicit")
    assert r.returncode in (0, 1), r.stdout  # 1: no mail
    assert len(recorded(d, mb)) == 6
    # fetchmail's TOP n 99999999 (the whole message), DELE n, TOP n + 1 …:
    # all but the first recorded ahead
    d.wait_log(r"ended \(QUIT\): 0 retrieved, 6 recorded, .* 0 failures; "
               r"%d recorded ahead" % (5 if ahead else 0))
