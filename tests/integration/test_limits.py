"""Connection limits: per IP, exemptions, global."""

from conftest import free_port, listener


def _open(clients, port, n):
    cs = []
    for _ in range(n):
        c = clients(port)
        assert c.greeting() == "220 testline ready"
        cs.append(c)
    return cs


def test_per_ip_limit(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], top={"max_connections_per_ip": 2})
    cs = _open(clients, port, 2)
    third = clients(port)
    assert third.reply_line() == "421 too many connections"
    assert third.expect_closed() == b""
    # the admitted sessions are unaffected
    for c in cs:
        assert c.cmd("PING") == "250 PONG"
    # a slot that frees up is usable again
    assert cs[0].cmd("QUIT") == "221 bye"
    cs[0].expect_closed()
    again = None
    for _ in range(20):  # the core notices the close asynchronously
        again = clients(port)
        line = again.reply_line()
        if line == "220 testline ready":
            break
        again.close()
    assert line == "220 testline ready"


def test_per_ip_limit_exempt(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)],
                top={"max_connections_per_ip": 2,
                     "limit_exempt": ["127.0.0.0/8"]})
    cs = _open(clients, port, 3)
    for c in cs:
        assert c.cmd("PING") == "250 PONG"


def test_global_limit(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port)], top={"max_connections": 3})
    cs = _open(clients, port, 3)
    fourth = clients(port)
    assert fourth.reply_line() == "421 too many connections"
    assert fourth.expect_closed() == b""
    for c in cs:
        assert c.cmd("PING") == "250 PONG"


def test_listener_limit(make_daemon, clients):
    a, b = free_port(), free_port()
    make_daemon(listen=[listener(a, max_connections=1), listener(b)])
    _open(clients, a, 1)
    second = clients(a)
    assert second.reply_line() == "421 too many connections"
    assert second.expect_closed() == b""
    # the other listener is not affected
    _open(clients, b, 2)
