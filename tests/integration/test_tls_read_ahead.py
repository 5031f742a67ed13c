"""TLS read-ahead (core/tls.c, core/conn.c): OpenSSL may read several
records in one read() and keep what the caller has not taken yet. Records
held inside OpenSSL wake no epoll, so the core must decrypt them all when
it reads, and deliver the ones left behind when it stops at its input cap
once reading resumes; otherwise a pipelining client's last commands are
never answered."""

import threading
import time

from conftest import free_port, listener, tls_client_ctx

NOOP = b"NOOP " + b"x" * 990 + b"\r\n"


def _implicit(make_daemon, clients, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    c = clients(port, ssl_context=tls_client_ctx(certs))
    assert c.greeting() == "220 testline ready (tls)"
    return c


def test_commands_in_one_record_all_answered(make_daemon, clients, certs):
    c = _implicit(make_daemon, clients, certs)
    c.send(b"PING\r\n" * 50 + b"ECHO last\r\n")  # one TLS record
    for _ in range(50):
        assert c.reply_line() == "250 PONG"
    assert c.reply_line() == "250 last"


def test_burst_past_the_input_cap_is_not_stranded(make_daemon, clients,
                                                  certs):
    c = _implicit(make_daemon, clients, certs)
    # SLEEP: the session stops taking commands, and past 64 KiB waiting,
    # reading; the second SLEEP stops it again once the first 80 lines are
    # answered, while what follows already waits in the sockets
    c.send(b"SLEEP 300\r\n" + NOOP * 80 + b"SLEEP 300\r\n")
    time.sleep(0.1)
    # More than the core's 256 KiB input cap, but less than what its read
    # calls take up to the cap: the core stops at the cap, the rest of the
    # last read() stays inside OpenSSL, PING in it, and no more bytes come
    # to wake the socket. Sent from a thread: the sockets may not hold it
    # all before the session reads.
    burst = NOOP * 289 + b"PING\r\n"
    sender = threading.Thread(target=c.send, args=(burst,))
    sender.start()
    sender.join(20)
    assert not sender.is_alive()
    assert c.reply_line() == "250 slept 300"
    for i in range(80):
        assert c.reply_line() == "250 ok", i
    assert c.reply_line() == "250 slept 300"
    for i in range(289):
        assert c.reply_line() == "250 ok", i
    assert c.reply_line() == "250 PONG"
    assert c.cmd("QUIT") == "221 bye"
