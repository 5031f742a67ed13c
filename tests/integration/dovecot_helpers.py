"""A private Dovecot POP3 server as the proxy's upstream (the tests
test_proxy_pop3_*.py): its own configuration in a temp dir, loopback
ports, a passwd-file user with a Maildir of messages, and a test CA whose
certificate for "localhost" and 127.0.0.1 it presents. The system's
dovecot service is never used (quickstart keeps it stopped).

A fake upstream (a Python socket server speaking just enough POP3) covers
what a real server would never do, e.g. bytes injected after STLS."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import SOCK_TIMEOUT_S, free_port, listening_ports, wait_for

DOVECOT_USER = "alice@upstream.test"
DOVECOT_PASS = "s3cret-upstream"


def _run(args, cwd=None):
    r = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    if r.returncode != 0:
        pytest.fail("%s failed:\n%s" % (" ".join(args), r.stdout),
                    pytrace=False)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    """A test CA and a server certificate it signed for localhost and
    127.0.0.1: {"ca": ca.pem, "cert": server.pem, "key": server.key,
    "cakey": ca.key} (ca_server_cert() signs more)."""
    d = str(tmp_path_factory.mktemp("testca"))
    ca, cakey = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    cert, key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
    csr, ext = os.path.join(d, "server.csr"), os.path.join(d, "ext.cnf")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _run(["openssl", "req", "-x509", *ec, "-keyout", cakey, "-out", ca,
          "-days", "2", "-subj", "/CN=mailgate test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr,
          "-subj", "/CN=localhost"])
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "extendedKeyUsage=serverAuth\n")
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey,
          "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])
    os.chmod(key, 0o644)  # Dovecot reads it as root; the dir is private
    return {"ca": ca, "cert": cert, "key": key, "cakey": cakey}


def ca_server_cert(ca, d, name, san):
    """A server certificate signed by the test CA `ca` (test_ca) in the
    folder d, CN=name and the given subjectAltName (e.g. "IP:127.0.0.2"):
    {"cert": path, "key": path}."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    csr, ext = os.path.join(d, name + ".csr"), os.path.join(d, name + ".cnf")
    _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
          "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
          "-subj", "/CN=" + name])
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth\n" % san)
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca["ca"], "-CAkey",
          ca["cakey"], "-CAcreateserial", "-out", cert, "-days", "2",
          "-extfile", ext])
    os.chmod(key, 0o644)
    return {"cert": cert, "key": key}


def sample_messages(n, size=2000, tag="m"):
    """n distinct RFC 5322 messages (LF line ends, as Maildir files hold
    them), with lines that need dot-stuffing and a long body."""
    out = []
    for i in range(n):
        body = []
        body.append(".a line starting with a dot %s-%d" % (tag, i))
        body.append("..two dots")
        body.append(".")
        k = 0
        while sum(len(l) + 1 for l in body) < size:
            body.append("line %d of message %s-%d: %s" % (k, tag, i, "x" * 60))
            k += 1
        msg = ("From: sender%d@example.org\nTo: %s\nSubject: proxy test %s-%d\n"
               "Message-ID: <%s-%d@example.org>\nDate: Mon, 1 Jan 2024 10:00:00 "
               "+0000\n\n" % (i, DOVECOT_USER, tag, i, tag, i)) + "\n".join(body) + "\n"
        out.append(msg.encode())
    return out


def crlf(msg):
    return msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Dovecot:
    """One private dovecot process (POP3 only)."""

    def __init__(self, ssl_mode, cert, key, address="127.0.0.1", port=None,
                 implicit=False, reuse_login=False):
        """implicit: one implicit-TLS (pop3s) listener on address:port
        instead of the plain one with STLS on a free port. reuse_login:
        one long-lived pop3-login process (Dovecot's "high-performance"
        mode), whose TLS context, and so its ticket keys, outlive a
        connection; by default each connection has a process of its own."""
        # not under pytest's 0700 tmp dir: the login processes run as
        # dovenull and must reach their sockets
        self.dir = tempfile.mkdtemp(prefix="mg-dovecot-")
        os.chmod(self.dir, 0o755)
        self.address = address
        self.port = port or free_port()
        self.implicit = implicit
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log = os.path.join(self.dir, "dovecot.log")
        self.home = os.path.join(self.dir, "home", DOVECOT_USER)
        self.maildir = os.path.join(self.home, "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub))
        os.chmod(os.path.join(self.dir), 0o755)
        self.chown()
        shutil.copyfile(cert, os.path.join(self.dir, "server.pem"))
        shutil.copyfile(key, os.path.join(self.dir, "server.key"))
        os.chmod(os.path.join(self.dir, "server.key"), 0o600)
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("%s:{PLAIN}%s::::::\n" % (DOVECOT_USER, DOVECOT_PASS))
        ssl = "ssl = no\n" if ssl_mode == "no" else (
            "ssl = %s\nssl_cert = <%s/server.pem\nssl_key = <%s/server.key\n"
            "ssl_min_protocol = TLSv1.2\n" % (ssl_mode, self.dir, self.dir))
        with open(self.conf, "w") as f:
            f.write("""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = pop3
listen = {address}
{ssl}disable_plaintext_auth = {dpa}
auth_mechanisms = plain
auth_verbose = yes
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%u
}}
service pop3-login {{
{login_mode}  inet_listener pop3 {{
    address = {address}
    port = {plain_port}
  }}
  inet_listener pop3s {{
    address = {address}
    port = {tls_port}
{tls_ssl}  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
""".format(d=self.dir, ssl=ssl, address=address,
           plain_port=0 if implicit else self.port,
           tls_port=self.port if implicit else 0,
           tls_ssl="    ssl = yes\n" if implicit else "",
           login_mode=("  service_count = 0\n  process_min_avail = 1\n"
                       "  process_limit = 1\n" if reuse_login else ""),
           dpa="no" if ssl_mode == "no" else "yes"))
        self.proc = None
        self.seq = 0

    def add(self, messages):
        """Deliver message files into the Maildir (new/)."""
        for m in messages:
            self.seq += 1
            name = "%d.M%dP%d.test" % (int(time.time()), self.seq, os.getpid())
            path = os.path.join(self.maildir, "new", name)
            with open(path, "wb") as f:
                f.write(m)
        self.chown()

    def chown(self):
        """The mail user (nobody) owns the Maildir (mail as root is
        refused by Dovecot)."""
        import pwd
        pw = pwd.getpwnam("nobody")
        for root, dirs, files in os.walk(os.path.join(self.dir, "home")):
            for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(n, pw.pw_uid, pw.pw_gid)

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("dovecot") or "/usr/sbin/dovecot", "-F",
             "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("dovecot exited: %s\n%s" % (
                    self.proc.stdout.read().decode(errors="replace"),
                    self.log_text()))
            return self.port in listening_ports()

        wait_for(up, 10, "dovecot on port %d" % self.port)
        return self

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def messages_left(self):
        return sum(len(os.listdir(os.path.join(self.maildir, s)))
                   for s in ("cur", "new"))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def dovecot(test_ca):
    """Factory: dovecot(ssl="required"|"no", cert=..., key=...) started."""
    made = []

    def make(ssl="required", cert=None, key=None, **kw):
        d = Dovecot(ssl, cert or test_ca["cert"], key or test_ca["key"], **kw)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


class OneShotServer:
    """A test server in a thread: it takes one connection on (addr, port)
    (port 0: a free one) and runs self.session(conn) on it; the peer going
    away ends it quietly. Subclasses set their own fields first, then call
    this __init__, which starts the thread."""

    def __init__(self, addr="127.0.0.1", port=0, timeout=SOCK_TIMEOUT_S):
        self.timeout = timeout
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(4)
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        c.settimeout(self.timeout)
        try:
            self.session(c)
        except OSError:  # ssl.SSLError included
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        self.thread.join(self.timeout)


class FakeUpstream(OneShotServer):
    """A POP3 server that offers STLS and answers it with `stls_reply`
    (e.g. "+OK go\\r\\n+OK injected\\r\\n"), then closes."""

    def __init__(self, stls_reply):
        self.stls_reply = stls_reply
        self.received = []
        super().__init__()

    def session(self, c):
        f = c.makefile("rb")
        c.sendall(b"+OK fake ready\r\n")
        for line in f:
            self.received.append(line)
            cmd = line.strip().upper()
            if cmd == b"CAPA":
                c.sendall(b"+OK\r\nUSER\r\nSTLS\r\nUIDL\r\n.\r\n")
            elif cmd == b"STLS":
                c.sendall(self.stls_reply)
                time.sleep(1)
                break
            else:
                c.sendall(b"-ERR no\r\n")
