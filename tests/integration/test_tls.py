"""TLS: STARTTLS, implicit TLS, protocol versions, SNI, the STARTTLS
injection defence and ALPN (ALPACA)."""

import ssl
import subprocess

import pytest

from conftest import (Client, free_port, listener, tls11_ctx,
                      tls_client_ctx)

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3


def test_starttls(make_daemon, clients, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="starttls")])
    c = clients(port)
    assert c.greeting() == "220 testline ready"
    assert c.info()["tls"] == "none"
    c.starttls(tls_client_ctx(certs))
    # the client speaks first after the handshake
    assert c.cmd("PING") == "250 PONG"
    assert c.cmd("ECHO secure") == "250 secure"
    info = c.info()
    version, _, cipher = info["tls"].partition(" ")
    assert version in ("TLSv1.2", "TLSv1.3")
    assert version == c.sock.version()
    assert cipher == c.sock.cipher()[0]
    assert c.cmd("STARTTLS") == "503 already in TLS"
    assert c.cmd("QUIT") == "221 bye"


def test_starttls_not_offered_on_plain_listener(make_daemon, clients):
    port = free_port()
    make_daemon(listen=[listener(port, tls="none")])
    c = clients(port)
    c.greeting()
    assert c.cmd("STARTTLS") == "502 STARTTLS not offered"
    assert c.cmd("PING") == "250 PONG"


def test_starttls_injection_is_discarded(make_daemon, clients, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="starttls")])
    c = clients(port)
    c.greeting()
    # plaintext sent behind STARTTLS must never be executed inside TLS
    c.send(b"STARTTLS\r\nPING\r\n")
    assert c.reply_line() == "220 ready to start TLS"
    assert c.buf == b""
    c.sock = tls_client_ctx(certs).wrap_socket(c.sock, server_hostname="localhost")
    c.send("ECHO after\r\n")
    assert c.reply_line() == "250 after"
    assert c.cmd("PING") == "250 PONG"


def _s_client(port, certs, *extra, stdin="PING\nQUIT\n"):
    return subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
         "-servername", "localhost", "-CAfile", certs["cert"],
         "-verify_return_error", "-crlf", "-quiet", *extra],
        input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=8,
    )


def test_openssl_s_client_implicit(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    r = _s_client(port, certs)
    assert "220 testline ready (tls)" in r.stdout, r.stderr
    assert "250 PONG" in r.stdout
    assert "221 bye" in r.stdout


def test_openssl_s_client_tls11_refused(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    r = _s_client(port, certs, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert r.returncode != 0
    assert "220 testline" not in r.stdout


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["tls1.3", "tls1.2"])
def test_implicit_tls_versions(make_daemon, certs, version):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    ctx = tls_client_ctx(certs, minv=version, maxv=version)
    with Client(port, ssl_context=ctx) as c:
        assert c.greeting() == "220 testline ready (tls)"
        info = c.info()
        v, _, cipher = info["tls"].partition(" ")
        assert v == c.sock.version() == ("TLSv1.3" if version == TLS13 else "TLSv1.2")
        assert cipher == c.sock.cipher()[0]
        if version == TLS12:
            # intermediate profile: forward secrecy and AEAD only
            assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
        assert info["sni"] == "localhost"
        assert c.cmd("STARTTLS") == "503 already in TLS"


def test_implicit_tls11_refused(make_daemon, certs, tls11_client_works):
    port = free_port()
    d = make_daemon(listen=[listener(port, tls="implicit")])
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        Client(port, ssl_context=tls11_ctx(certs))
    # the daemon serves on
    with Client(port, ssl_context=tls_client_ctx(certs)) as c:
        assert c.greeting() == "220 testline ready (tls)"
    assert d.alive()


def test_implicit_tls_sni_by_ip(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    # an IP literal sends no SNI
    ctx = tls_client_ctx(certs)
    with Client(port, ssl_context=ctx, server_hostname="127.0.0.1") as c:
        c.greeting()
        assert c.info()["sni"] == "-"


def test_alpn_foreign_protocol_refused(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    with pytest.raises(ssl.SSLError) as e:
        Client(port, ssl_context=tls_client_ctx(certs, alpn=["http/1.1"]))
    assert "NO_APPLICATION_PROTOCOL" in str(e.value).upper().replace(" ", "_")


def test_alpn_own_protocol_selected(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    ctx = tls_client_ctx(certs, alpn=["http/1.1", "testline"])
    with Client(port, ssl_context=ctx) as c:
        assert c.sock.selected_alpn_protocol() == "testline"
        assert c.greeting() == "220 testline ready (tls)"


def test_alpn_absent_is_fine(make_daemon, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="implicit")])
    with Client(port, ssl_context=tls_client_ctx(certs)) as c:
        assert c.sock.selected_alpn_protocol() is None
        assert c.greeting() == "220 testline ready (tls)"
        assert c.cmd("PING") == "250 PONG"


def test_alpn_on_starttls(make_daemon, clients, certs):
    port = free_port()
    make_daemon(listen=[listener(port, tls="starttls")])
    c = clients(port)
    c.greeting()
    assert c.cmd("STARTTLS") == "220 ready to start TLS"
    with pytest.raises(ssl.SSLError):
        tls_client_ctx(certs, alpn=["h2"]).wrap_socket(c.sock, server_hostname="localhost")
