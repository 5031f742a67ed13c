"""Plain sessions: the line protocol, HTTP on a mail port, line limits,
idle timeout and the worker pool."""

import time

from conftest import Closed, fnv_work, free_port, listener


def test_plain_session(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)])
    c = clients(port)
    assert c.greeting() == "220 testline ready"
    assert c.cmd("PING") == "250 PONG"
    assert c.cmd("ping") == "250 PONG"  # commands are case-insensitive
    assert c.cmd("ECHO hello world") == "250 hello world"
    assert c.cmd("NOOP") == "250 ok"
    assert c.cmd("BOGUS") == "500 unknown command"
    info = c.info()
    assert info["addr"] == "127.0.0.1"
    assert info["port"] == str(c.sock.getsockname()[1])
    assert info["proxied"] == "no"
    assert info["tls"] == "none"
    assert info["sni"] == "-"
    assert info["id"].isdigit()
    assert str(port) in info["listener"]
    assert c.cmd("QUIT") == "221 bye"
    assert c.expect_closed() == b""


def test_greeting_setting_and_pipelining(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], settings={"greeting": "hello there"})
    c = clients(port)
    assert c.greeting() == "220 hello there"
    # several commands in one segment are answered in order
    c.send("PING\r\nECHO a\r\nECHO b\r\n")
    assert [c.reply_line() for _ in range(3)] == ["250 PONG", "250 a", "250 b"]


def test_http_request_on_mail_port_is_dropped(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    c = clients(port)
    assert c.greeting() == "220 testline ready"
    c.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    # the core closes without any reply ("500 unknown command" would mean
    # the request line reached the protocol)
    assert c.expect_closed() == b""
    assert d.alive()


def test_line_too_long(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], settings={"line_max": 64})
    c = clients(port)
    c.greeting()
    assert c.cmd("ECHO " + "x" * 93) == "500 line too long"  # 100 bytes
    assert c.cmd("PING") == "250 PONG"
    # exactly at the limit (62 + CRLF = 64) is fine
    assert c.cmd("ECHO " + "y" * 57) == "250 " + "y" * 57


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    return 0


def test_huge_line_without_newline_is_bounded(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)], settings={"line_max": 1002})
    c = clients(port)
    c.greeting()
    assert c.cmd("PING") == "250 PONG"
    rss0 = _rss_kb(d.pid)
    chunk = b"x" * 65536
    closed = False
    try:
        for _ in range(16 * 16):  # 16 MB without a line end
            c.send(chunk)
        c.send("\r\nPING\r\n")
    except (BrokenPipeError, ConnectionResetError):
        closed = True  # the core may close an abusive peer: also fine
    if not closed:
        try:
            assert c.reply_line() == "500 line too long"
            assert c.reply_line() == "250 PONG"
        except Closed:
            closed = True
    grown = _rss_kb(d.pid) - rss0
    assert grown < 12 * 1024, "RSS grew by %d kB for a 16 MB line" % grown
    assert d.alive()
    c2 = clients(port)
    assert c2.greeting() == "220 testline ready"
    assert c2.cmd("PING") == "250 PONG"


def test_idle_timeout(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], settings={"idle_timeout": 1000})
    c = clients(port)
    t0 = time.monotonic()
    assert c.greeting() == "220 testline ready"
    c.sock.settimeout(3.0)
    assert c.reply_line() == "421 idle timeout"
    assert time.monotonic() - t0 < 3.0
    assert c.expect_closed(timeout=2.0) == b""


def test_idle_timeout_is_reset_by_input(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], settings={"idle_timeout": 1000})
    c = clients(port)
    c.greeting()
    for _ in range(4):  # 2 s of activity, never 1 s idle
        time.sleep(0.5)
        assert c.cmd("NOOP") == "250 ok"
    assert c.reply_line() == "421 idle timeout"


def test_work(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)])
    c = clients(port)
    c.greeting()
    assert c.cmd("WORK 1000") == "250 worked " + fnv_work(1000)
    # the session reads on after the job
    assert c.cmd("PING") == "250 PONG"


def test_work_concurrent(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], top={"worker_threads": 2})
    n = 200000
    expect = "250 worked " + fnv_work(n)
    cs = [clients(port) for _ in range(20)]
    for c in cs:
        assert c.greeting() == "220 testline ready"
    for c in cs:
        c.send("WORK %d\r\n" % n)
    # the loop stays responsive while the pool works
    probe = clients(port)
    assert probe.greeting() == "220 testline ready"
    assert probe.cmd("PING") == "250 PONG"
    for c in cs:
        assert c.reply_line() == expect
    # and a session may queue jobs back to back
    cs[0].send("WORK 10\r\nWORK 20\r\nPING\r\n")
    assert cs[0].reply_line() == "250 worked " + fnv_work(10)
    assert cs[0].reply_line() == "250 worked " + fnv_work(20)
    assert cs[0].reply_line() == "250 PONG"


def test_work_done_after_client_left(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    c = clients(port)
    c.greeting()
    c.send("WORK 5000000\r\n")
    c.close()  # the job finishes for a conn that is gone
    time.sleep(0.5)
    c2 = clients(port)
    assert c2.greeting() == "220 testline ready"
    assert c2.cmd("WORK 10") == "250 worked " + fnv_work(10)
    assert d.alive()


def test_too_many_errors(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)])
    c = clients(port)
    c.greeting()
    for _ in range(9):
        assert c.cmd("NOPE") == "500 unknown command"
    assert c.cmd("NOPE") == "500 unknown command"
    assert c.reply_line() == "421 too many errors"
    assert c.expect_closed() == b""
