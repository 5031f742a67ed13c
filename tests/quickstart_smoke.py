"""Smoke test of `./quickstart run` as a new user runs it: it builds, makes a
development instance (here in a temporary MAILGATE_VAR), and the daemon
answers on its SMTP port; a mailbox created with mailgatectl receives a
message over STARTTLS verified against the instance's own certificate,
and the archiver retrieves and deletes it over POP3 on port 2995.
Prints one line 'quickstart-run: ok' or fails with the log."""

import json
import os
import poplib
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time

top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
var = tempfile.mkdtemp(prefix="mailgate-quickstart-")
log = open(os.path.join(var, "run.log"), "wb")
env = dict(os.environ, MAILGATE_VAR=var)
p = subprocess.Popen([os.path.join(top, "quickstart"), "run"], cwd=top,
                     env=env, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)


def fail(why):
    log.flush()
    with open(os.path.join(var, "run.log"), "rb") as f:
        sys.stderr.write(f.read().decode(errors="replace")[-4000:])
    sys.stderr.write("\nquickstart-run: FAILED: %s\n" % why)
    os.killpg(p.pid, signal.SIGKILL)
    sys.exit(1)


try:
    deadline = time.monotonic() + 900  # includes a full build
    while True:
        if p.poll() is not None:
            fail("quickstart run exited %s" % p.returncode)
        try:
            with smtplib.SMTP("127.0.0.1", 2525, timeout=5) as s:
                code, _ = s.ehlo()
                if code == 250:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            fail("no SMTP answer on 127.0.0.1:2525")
        time.sleep(1)
    conf = os.path.join(var, "mailgate.conf")
    ctl = os.path.join(var, "install", "sbin", "mailgatectl")
    r = subprocess.run([ctl, "-c", conf, "--json", "mailbox", "create",
                        "--name", "smoke"], capture_output=True, text=True)
    if r.returncode != 0:
        fail("mailbox create: " + r.stderr)
    box = json.loads(r.stdout)
    ctx = ssl.create_default_context(cafile=os.path.join(var, "data",
                                                         "cert.pem"))
    with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
        s.starttls(context=ctx)
        refused = s.sendmail("someone@example.org", [box["address"]],
                             b"Subject: smoke\r\n\r\nhello\r\n")
        if refused:
            fail("refused: %r" % refused)
    r = subprocess.run([ctl, "-c", conf, "--json", "mailbox", "show",
                        box["id"]], capture_output=True, text=True)
    if json.loads(r.stdout)["messages"] != 1:
        fail("the message is not in the mailbox: " + r.stdout)
    # the archiver's path of the README: POP3 over implicit TLS on 2995
    pop = poplib.POP3_SSL("127.0.0.1", 2995, context=ctx, timeout=10)
    pop.user(box["id"])
    pop.pass_(box["password"])
    lines = pop.retr(1)[1]
    if b"hello" not in lines:
        fail("RETR over POP3 did not return the message: %r" % lines)
    pop.dele(1)
    pop.quit()
    r = subprocess.run([ctl, "-c", conf, "--json", "mailbox", "show",
                        box["id"]], capture_output=True, text=True)
    if json.loads(r.stdout)["messages"] != 0:
        fail("the message was not deleted over POP3: " + r.stdout)
    os.killpg(p.pid, signal.SIGTERM)
    if p.wait(timeout=15) != 0:
        fail("mailgated exited %s after SIGTERM" % p.returncode)
    print("quickstart-run: ok")
finally:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", var])
