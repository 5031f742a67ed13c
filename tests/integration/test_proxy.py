"""PROXY protocol v2 on a listener (load balancers in front)."""

from conftest import (free_port, listener, proxy_v2_header, proxy_v2_local,
                      tls_client_ctx)


def _proxy_listener(port, trusted, tls="none"):
    return listener(port, tls=tls, proxy_protocol=True, trusted_proxies=trusted)


def test_proxy_v2_trusted(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[_proxy_listener(port, ["127.0.0.0/8"])])
    c = clients(port)
    c.send(proxy_v2_header("192.0.2.7", 4242, "127.0.0.1", port))
    assert c.greeting() == "220 testline ready"
    info = c.info()
    assert info["addr"] == "192.0.2.7"
    assert info["port"] == "4242"
    assert info["proxied"] == "yes"
    assert c.cmd("PING") == "250 PONG"


def test_proxy_v2_header_and_command_in_one_segment(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[_proxy_listener(port, ["127.0.0.0/8"])])
    c = clients(port)
    c.send(proxy_v2_header("192.0.2.8", 1111, "127.0.0.1", port) + b"PING\r\n")
    assert c.greeting() == "220 testline ready"
    assert c.reply_line() == "250 PONG"
    assert c.info()["addr"] == "192.0.2.8"


def test_proxy_v2_untrusted_source_closed(make_daemon, clients):
    port = free_port()
    d = make_daemon(listen=[_proxy_listener(port, ["10.0.0.0/8"])])
    c = clients(port)
    try:
        c.send(proxy_v2_header("192.0.2.7", 4242, "127.0.0.1", port))
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before the header went out: fine
    assert c.expect_closed() == b""  # no greeting
    assert d.alive()


def test_proxy_v2_missing_header_closed(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[_proxy_listener(port, ["127.0.0.0/8"])])
    c = clients(port)
    c.send("PING\r\n")
    assert c.expect_closed() == b""


def test_proxy_v2_local_command(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[_proxy_listener(port, ["127.0.0.0/8"])])
    c = clients(port)
    c.send(proxy_v2_local())
    assert c.greeting() == "220 testline ready"
    info = c.info()
    assert info["addr"] == "127.0.0.1"
    assert info["proxied"] == "no"


def test_proxy_v2_then_implicit_tls(make_daemon, clients, certs):
    port = free_port()
    make_daemon(listen=[_proxy_listener(port, ["127.0.0.0/8"], tls="implicit")])
    c = clients(port)
    c.send(proxy_v2_header("198.51.100.9", 5555, "127.0.0.1", port))
    c.sock = tls_client_ctx(certs).wrap_socket(c.sock, server_hostname="localhost")
    assert c.greeting() == "220 testline ready (tls)"
    info = c.info()
    assert info["addr"] == "198.51.100.9"
    assert info["proxied"] == "yes"
    assert info["tls"] != "none"

