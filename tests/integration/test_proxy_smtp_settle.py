"""The SMTP proxy's lazy settle: the publish after the upstream's 250 (or
the discard after its refusal) starts no commit of its own; it rides with
the store's next commit, or is committed alone within 100 ms, and always
before a clean shutdown ends. The client is answered once it is queued.

- At one message at a time, every copy ends published (visible, not
  unconfirmed) and the messages cost fewer than two durable commits each
  (the publish of one shares the held commit of the next); counted with
  the store's last transaction id (mg-dump --stat).
- SIGTERM right after the client's 250: the publish is on disk when the
  daemon has exited (read without a restart, so no recovery helps).
- SIGKILL right after the client's 250: the copy is there after the
  restart, published or flagged unconfirmed, never lost.
"""

import smtplib

from proxy_smtp_helpers import *  # noqa: F401,F403 (fixtures)
from proxy_smtp_helpers import (copies, copy_body, login_name, mailbox_create,
                                message, proxy_client, settled, store_stat)

def test_one_at_a_time_published_with_fewer_commits(gateway, upstream,
                                                     certs):
    n = 10
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    msgs = [message("settle-%d" % i, size=4000) for i in range(n)]
    before = store_stat(d, mb)
    for m in msgs:
        assert s.sendmail("alice@upstream.test", ["bob@example.org"], m) == {}
    # one refused at the end of the data: its copy is discarded (lazily)
    try:
        s.sendmail("alice@upstream.test", ["bob@example.org"],
                   message("settle-refused", extra=b"REJECT-ME\r\n"))
        raise AssertionError("the upstream's 554 did not reach the client")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 554, e
    s.quit()
    # the last publish and the discard come alone, after the delay
    settled(d, mb)
    after = store_stat(d, mb)
    assert (after["visible"], after["unconfirmed"], after["writing"]) == \
        (n, 0, 0), after
    commits = after["txnid"] - before["txnid"]
    # two per message without the lazy settle (held commit, publish);
    # with it, the publish of each rides with the next one's commit
    assert commits <= 1.5 * (n + 1), (commits, before, after)
    assert [m["content"] for m in up.messages] == msgs
    assert sorted(copy_body(r) for r in copies(d, mb)) == sorted(msgs)


def test_sigterm_right_after_250_publishes(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    s = proxy_client(d, certs, login_name(up.port, mb))
    msg = message("settle-term", size=6000)
    assert s.sendmail("alice@upstream.test", ["bob@example.org"], msg) == {}
    # with no session left the daemon exits within a few ms, well inside
    # the lazy delay (100 ms): the publish is written by the store's close
    s.close()
    rc, _ = d.stop()
    assert rc == 0, d.log()
    # no start in between: what the stopped daemon left on disk
    st = store_stat(d, mb)
    assert (st["visible"], st["held"], st["unconfirmed"]) == (1, 0, 0), st
    assert [copy_body(r) for r in copies(d, mb)] == [msg]


def test_sigkill_right_after_250_keeps_the_copy(gateway, upstream, certs):
    up = upstream()
    d = gateway()
    mb = mailbox_create(d)
    sent = []
    for i in range(3):
        s = proxy_client(d, certs, login_name(up.port, mb))
        msg = message("settle-kill-%d" % i, size=5000 + 20000 * i)
        assert s.sendmail("alice@upstream.test", ["bob@example.org"],
                          msg) == {}
        d.kill9()
        s.close()
        sent.append(msg)
        st = store_stat(d, mb)
        # held (the publish was not on disk yet) or already visible
        assert st["held"] + st["visible"] == len(sent), st
        assert st["writing"] == 0, st
        d.restart()
        # the next start publishes a held copy flagged unconfirmed (it
        # cannot know whether the upstream has it)
        want = st["unconfirmed"] + st["held"]
        st = store_stat(d, mb)
        assert (st["held"], st["visible"], st["unconfirmed"]) == \
            (0, len(sent), want), st
    assert [m["content"] for m in up.messages] == sent
    assert sorted(copy_body(r) for r in copies(d, mb)) == sorted(sent)
