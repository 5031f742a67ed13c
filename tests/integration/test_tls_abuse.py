"""TLS abuse (reliability catalog items 35 and 36): a TLS session torn down
in the middle of DATA and followed by plaintext, and a flood of aborted and
garbage handshakes.
"""

import os
import socket
import ssl
import time

import pytest

from conftest import mailbox_create, mg_dump, split_trace
from smtp_helpers import addr, connect, sample_message

SENDER = "alice@sender.test"


def _smtps(d, certs):
    c = connect(d.smtps_port, tls="implicit", certs=certs)
    c.ehlo()
    return c


def _only_this_one_stored(d, box, certs, marker):
    """Deliver one message over implicit TLS; it must be all the mailbox
    holds."""
    c = _smtps(d, certs)
    m = sample_message(marker)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    c.data(m)
    c.expect("QUIT", 221)
    assert [split_trace(x["body"])[1] for x in mg_dump(d, box)] == [m]


def _peer_closed(sock, wait=3.0):
    """True once the peer has closed (EOF or reset) without sending a
    byte; fails if it sends anything."""
    sock.settimeout(wait)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    assert data == b"", "the server answered plaintext after TLS: %r" % data
    return True


def test_close_notify_mid_data_then_plaintext(make_smtp, certs):
    """close_notify in the middle of DATA, then a plaintext end of data and
    a whole transaction: the session ends, the plaintext is never parsed,
    nothing is stored (Exim CVE-2026-45185 class)."""
    d = make_smtp()
    box = mailbox_create(d)
    c = _smtps(d, certs)
    c.expect("MAIL FROM:<%s>" % SENDER, 250)
    c.expect("RCPT TO:<%s>" % addr(box), 250)
    c.expect("DATA", 354)
    c.send(b"Subject: torn\r\n\r\nfirst half\r\n")
    try:
        plain = c.sock.unwrap()  # sends close_notify
    except (ssl.SSLError, OSError):
        # the server closed at once: nothing more to try
        plain = None
    if plain is not None:
        try:
            plain.sendall(b".\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                          b"Subject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n"
                          % (SENDER.encode(), addr(box).encode()))
        except OSError:
            pass
        assert _peer_closed(plain), "the session stayed open after close_notify"
        plain.close()
    # the daemon is fine and stored nothing from that session
    _only_this_one_stored(d, box, certs, "after-teardown")


def _open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _client_hello_prefix(certs):
    """The first bytes of a real ClientHello (from Python's ssl with a
    memory BIO), to cut off at random points."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


ABORTS = 1500


@pytest.mark.watchdog(90)
def test_aborted_and_garbage_handshakes(make_smtp, certs, monkeypatch):
    """Many connections to the implicit-TLS port that send a truncated
    ClientHello, random bytes or nothing and then close or reset: the
    daemon keeps serving, its descriptors return to the baseline and its
    memory stays bounded (Dovecot CVE-2015-3420 class)."""
    # AddressSanitizer keeps freed memory in quarantine (256 MB): without
    # this, RSS would measure the quarantine, not the daemon
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get(
        "ASAN_OPTIONS", "detect_leaks=1") + ":quarantine_size_mb=0")
    d = make_smtp()
    box = mailbox_create(d)
    hello = _client_hello_prefix(certs)
    assert len(hello) > 100

    # warm up (TLS contexts, allocator arenas) before the baseline
    c = _smtps(d, certs)
    c.expect("QUIT", 221)
    time.sleep(0.3)
    fds0, rss0 = _open_fds(d.pid), _rss_kb(d.pid)

    for i in range(ABORTS):
        s = socket.create_connection(("127.0.0.1", d.smtps_port), timeout=5)
        kind = i % 4
        try:
            if kind == 0:
                s.sendall(hello[: 1 + (i * 7) % (len(hello) - 1)])
            elif kind == 1:
                s.sendall(os.urandom(1 + i % 300))
            elif kind == 2:
                # a TLS record header announcing a huge record, then EOF
                s.sendall(b"\x16\x03\x01\xff\xff" + os.urandom(64))
            if i % 3 == 0:
                # reset instead of a clean close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()

    # every aborted connection is gone again
    deadline = time.monotonic() + 20
    while _open_fds(d.pid) > fds0 + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _open_fds(d.pid) <= fds0 + 2, (fds0, _open_fds(d.pid))
    grown = _rss_kb(d.pid) - rss0
    assert grown < 64 * 1024, "RSS grew by %d KiB" % grown

    # and a real sender is served as before
    _only_this_one_stored(d, box, certs, "after-flood")
