"""Run Debian's fetchmail against the gateway's POP3 listeners (the tests
test_pop3_fetchmail.py and test_pop3_postfix.py).

Each run has its own FETCHMAILHOME (run control file with the password,
lock file, .fetchids) and delivers every message through `--mda` into a
file of its own, so a test reads back exactly what fetchmail handed on.
fetchmail is told `--invisible` (no Received field of its own) and
`--norewrite` (no address rewriting): what it delivers is what the
gateway served, with LF line ends."""

import os
import shutil
import subprocess

import pytest


def fetchmail_path():
    path = shutil.which("fetchmail")
    if not path:
        pytest.fail("fetchmail is not installed (quickstart installs it)",
                    pytrace=False)
    return path


class Fetchmail:
    def __init__(self, workdir, mailbox, cafile):
        self.home = os.path.join(workdir, "fetchmail")
        self.out = os.path.join(workdir, "fetched")
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        self.mailbox = mailbox
        self.cafile = cafile
        # the password comes from the run control file (never argv); the
        # rest from the command line, which overrides it
        rc = os.path.join(self.home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 proto pop3 user "%s" password "%s"\n'
                    % (mailbox["id"], mailbox["password"]))
        os.chmod(rc, 0o600)
        self.seq = 0

    def run(self, port, tls, keep=False, timeout=60, extra=()):
        """One poll: tls="implicit" (--ssl) or "stls" (--sslproto
        TLS1.2+ on the plain port). Returns the CompletedProcess (stdout
        and stderr merged)."""
        self.seq += 1
        mda = "cat > %s/%d.$$" % (self.out, self.seq)
        args = [fetchmail_path(), "--nosyslog", "--verbose",
                "--protocol", "pop3", "--service", str(port),
                "--sslcertck", "--sslcertfile", self.cafile,
                "--sslcommonname", "localhost",
                "--mda", mda, "--invisible", "--norewrite",
                "--timeout", "20", "--nodetach"]
        if tls == "implicit":
            args += ["--ssl"]
        elif tls == "stls":
            args += ["--sslproto", "TLS1.2+"]
        else:
            raise ValueError(tls)
        if keep:
            args.append("--keep")
        args += list(extra)
        args.append("127.0.0.1")
        env = dict(os.environ, FETCHMAILHOME=self.home, HOME=self.home,
                   FETCHMAILUSER="root", LC_ALL="C")
        return subprocess.run(args, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, env=env)

    def delivered(self):
        """Every message the MDA wrote, as bytes with CRLF line ends
        (fetchmail hands them on with LF)."""
        out = []
        for name in sorted(os.listdir(self.out)):
            with open(os.path.join(self.out, name), "rb") as f:
                data = f.read()
            out.append(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        return out

    def clear(self):
        for name in os.listdir(self.out):
            os.unlink(os.path.join(self.out, name))
