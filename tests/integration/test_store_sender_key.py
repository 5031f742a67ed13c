"""Message encryption schemes 2 and 3 in the running daemon: the sender
key.

Messages delivered over SMTP are encrypted with the mailbox's current
sender key (store.sender_key_lifetime, default 60 s): two messages in
quick succession share it, and both are retrieved over POP3. The sender
key lives in the daemon's memory only: after a restart the next message
gets a new one (were it written anywhere and loaded again, it would
repeat). With sender_key_lifetime = 0 every message gets its own. mg-dump
--keys shows each message's scheme and sender public key; no file under
the data directory holds the messages' text.
"""

import os

from conftest import mg_dump_keys
from pop3_helpers import (deliver, login, mailbox_create, make_pop3,
                          sample_message, strip_trace)

assert make_pop3  # a fixture, used by name



def sender_keys(d, mailbox):
    """{message id: (alg, sender key hex)} from mg-dump --keys (which
    also decrypts every message)."""
    return {i: (alg, key) for i, alg, key, _ in mg_dump_keys(d, mailbox)}


def retrieve_all(d, mb, certs):
    p = login(d, mb, certs)
    count, _ = p.stat()
    got = [strip_trace(p.retr(i)[1]) for i in range(1, count + 1)]
    p.quit()
    return got


def not_on_disk(d, needles):
    found = []
    for root, _, files in os.walk(d.data_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            found += [(path, n) for n in needles if n in data]
    assert not found, "on disk: %r" % found


def test_quick_succession_shares_sender_key(make_pop3, certs):
    d = make_pop3()
    mb = mailbox_create(d)
    markers = ["SKMARK-%s" % os.urandom(8).hex() for _ in range(2)]
    msgs = [sample_message(m) for m in markers]
    deliver(d, mb, msgs, certs)  # one session, back to back
    assert retrieve_all(d, mb, certs) == msgs
    keys = sender_keys(d, mb)
    assert len(keys) == 2, keys
    (a1, e1), (a2, e2) = (keys[i] for i in sorted(keys))
    assert a1 == a2 and a1 in (2, 3)  # scheme 3 where the CPU has AES
    assert e1 == e2 and len(e1) == 64, keys

    # a restart ends the sender key: it was never stored
    d.stop()
    d.stopped = None
    d.proc = None
    d.start()
    later = sample_message("after-restart")
    deliver(d, mb, [later], certs)
    keys = sender_keys(d, mb)
    assert len(keys) == 3, keys
    assert keys[max(keys)][0] == a1 and keys[max(keys)][1] != e1, keys
    assert retrieve_all(d, mb, certs) == msgs + [later]
    not_on_disk(d, [m.encode() for m in markers] + [mb["password"].encode()])


def test_lifetime_zero_key_per_message(make_pop3, certs):
    d = make_pop3(top={"store": {"sender_key_lifetime": 0}})
    mb = mailbox_create(d)
    msgs = [sample_message("k%d" % i) for i in range(3)]
    deliver(d, mb, msgs, certs)
    assert retrieve_all(d, mb, certs) == msgs
    keys = sender_keys(d, mb)
    assert len(keys) == 3
    assert all(alg in (2, 3) for alg, _ in keys.values()), keys
    assert len({e for _, e in keys.values()}) == 3, keys
