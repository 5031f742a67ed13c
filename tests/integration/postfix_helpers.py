"""A private Postfix on loopback that journals to the gateway, for the
tests that need a real MTA in front of it (test_smtp_postfix.py,
test_pop3_postfix.py).

Each test starts its own Postfix from its own configuration directory
under /tmp (`postfix -c DIR start`), listening on a free loopback port, and
stops it at the end. It never reads or changes /etc/postfix's settings
(the system Postfix that the package installs stays stopped; quickstart
disables it). Postfix's daemons run as root and the `postfix` user, as
packaged.

Journaling setup: every message Postfix accepts gets a copy for the
journal address through `always_bcc = <id>@example.test`. A transport
map sends mail for example.test to the gateway (`smtp:[127.0.0.1]:PORT`);
every other destination goes to the `discard:` transport (the "real"
recipients, e.g. user@remote.test, need no server in the test, and no
bounce or relay traffic reaches the gateway). Nothing is local
(`mydestination` empty). The Postfix SMTP client must use STARTTLS and
verify the gateway's certificate against the test CA
(`smtp_tls_security_level = verify` with a per-destination policy
`match=localhost`: the certificate's name, since the next hop is an IP
literal).
"""

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, listening_ports, wait_for

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {top}/queue
data_directory = {top}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtputf8_enable = yes
maillog_file = {top}/maillog
maillog_file_prefixes = {top}
default_transport = discard:
relay_transport = discard:
transport_maps = inline:{{ {domain}=smtp:[127.0.0.1]:{gw} }}
always_bcc = {journal}
smtp_tls_security_level = verify
smtp_tls_CAfile = {ca}
smtp_tls_policy_maps = inline:{{ {{[127.0.0.1]:{gw} = verify match=localhost}} }}
smtp_tls_loglevel = 1
smtp_host_lookup = native
minimal_backoff_time = 1s
maximal_backoff_time = 10s
queue_run_delay = 1s
biff = no
"""


class Postfix:
    def __init__(self, gw_port, ca, journal, domain="example.test"):
        if not shutil.which("postfix"):
            pytest.fail("postfix is not installed (quickstart installs it)",
                        pytrace=False)
        # under /tmp with a searchable path: Postfix's daemons drop to the
        # postfix user (they chdir to the queue as root first)
        self.top = tempfile.mkdtemp(prefix="mg-postfix-", dir="/tmp")
        os.chmod(self.top, 0o755)
        self.conf = os.path.join(self.top, "conf")
        self.port = free_port()
        self.started = False
        os.makedirs(self.conf)
        os.makedirs(os.path.join(self.top, "queue"))
        data = os.path.join(self.top, "data")
        os.makedirs(data)
        shutil.chown(data, "postfix", "postfix")
        # the CA file is read by the smtp client as the postfix user
        self.ca = os.path.join(self.top, "ca.pem")
        shutil.copyfile(ca, self.ca)
        os.chmod(self.ca, 0o644)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(top=self.top, domain=domain, gw=gw_port,
                                   journal=journal, ca=self.ca))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen="127.0.0.1:%d" % self.port))
        self.logfile = os.path.join(self.top, "maillog")

    def run(self, *args, timeout=30):
        return subprocess.run(args, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)

    def start(self):
        # creates the queue directories with their owners, then starts
        r = self.run("postfix", "-c", self.conf, "start")
        assert r.returncode == 0, "postfix start:\n%s\n%s" % (r.stdout, self.log())
        self.started = True
        wait_for(lambda: self.port in listening_ports(), 10,
                 "postfix smtpd on port %d" % self.port)

    def master_pid(self):
        try:
            with open(os.path.join(self.top, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        if not self.started:
            return
        pid = self.master_pid()
        r = self.run("postfix", "-c", self.conf, "stop")
        if r.returncode != 0:
            self.run("postfix", "-c", self.conf, "abort")
        # the master (and with it every Postfix daemon) has exited
        deadline = time.monotonic() + 10
        while pid and os.path.exists("/proc/%d" % pid) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.started = False

    def flush(self):
        r = self.run("postqueue", "-c", self.conf, "-f")
        assert r.returncode == 0, r.stdout

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.log())
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError("no /%s/ in the Postfix log within %d s:\n%s"
                             % (pattern, timeout, self.log()[-4000:]))

    def submit(self, sender, rcpts, msg):
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                         timeout=10)
        try:
            assert s.sendmail(sender, rcpts, msg) == {}
        finally:
            s.quit()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)
