"""Online backup under continuous writes, and the mailbox rules that need
stored messages (delete and reset-password only when empty).

The writer is the test tool mg-crashtest (4 threads storing and printing
ACK lines once each message is durable); mailgatectl backs the store up
while it writes, then restores into a fresh instance."""

import json
import os
import signal
import subprocess
import time

from conftest import daemon_env, sbin, sanitizer_lines, tail
from test_store_crash import init, run, tool


def _conf(path, data_dir):
    with open(path, "w") as f:
        f.write('data_dir = "%s";\nemail_domain = "example.test";\n'
                % data_dir)
    return path


def _ctl(conf, *args, check=True):
    r = subprocess.run([sbin("mailgatectl"), "-c", conf, *args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30,
                       env=daemon_env())
    assert not sanitizer_lines(r.stderr), tail(r.stderr)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _acks(path):
    with open(path) as f:
        return [line for line in f if line.startswith("ACK ")]


def test_backup_during_writes_restores_every_acked_message(tmp_path):
    crashtest = tool("mg-crashtest")
    src = str(tmp_path / "src")
    mailbox, _ = init(crashtest, src)
    conf = _conf(str(tmp_path / "src.conf"), src)
    epoch0 = json.loads(_ctl(conf, "--json", "status", check=False).stdout)[
        "epoch"]
    ackfile = str(tmp_path / "acks")
    with open(ackfile, "w") as acks:
        writer = subprocess.Popen([crashtest, src, "write", "4"],
                                  stdout=acks, stderr=subprocess.PIPE,
                                  env=daemon_env())
    try:
        deadline = time.monotonic() + 5
        while len(_acks(ackfile)) < 20:
            assert time.monotonic() < deadline, "the writer acknowledged nothing"
            time.sleep(0.05)
        # everything acknowledged now was committed before the backup began
        before = _acks(ackfile)
        backup = str(tmp_path / "backup")
        _ctl(conf, "backup", backup)
        after_backup = len(_acks(ackfile))
    finally:
        writer.send_signal(signal.SIGKILL)
        _, err = writer.communicate(timeout=10)
    assert not sanitizer_lines(err.decode(errors="replace"))
    # the writer kept going while the copy was taken
    assert after_backup > len(before)

    dst = str(tmp_path / "dst")
    os.makedirs(dst, mode=0o700)
    dconf = _conf(str(tmp_path / "dst.conf"), dst)
    _ctl(dconf, "restore", backup)
    # the tool finds its mailbox by this file; the store came from the copy
    with open(os.path.join(dst, "crashtest.mailbox"), "w") as f:
        f.write(mailbox + "\n")
    ackpart = str(tmp_path / "acks-before")
    with open(ackpart, "w") as f:
        f.writelines(before)
    r = run([crashtest, dst, "verify", ackpart], timeout=60)
    assert "ok" in r.stdout, r.stdout + r.stderr
    epoch1 = json.loads(_ctl(dconf, "--json", "status", check=False).stdout)[
        "epoch"]
    assert epoch1 and epoch1 != epoch0


def test_delete_and_reset_refused_while_not_empty(tmp_path):
    crashtest = tool("mg-crashtest")
    data = str(tmp_path / "data")
    mailbox, _ = init(crashtest, data)
    run([crashtest, data, "store", "marker", "someone@example.org"])
    conf = _conf(str(tmp_path / "mg.conf"), data)
    show = json.loads(_ctl(conf, "--json", "mailbox", "show", mailbox).stdout)
    assert show["messages"] == 3
    assert show["oldest"] is not None
    _ctl(conf, "mailbox", "edit", mailbox, "--status", "suspended")
    for cmd in ("delete", "reset-password"):
        r = _ctl(conf, "mailbox", cmd, mailbox, check=False)
        assert r.returncode != 0
        assert "still holds 3 message" in r.stderr, r.stderr
    # still there, still readable
    again = json.loads(_ctl(conf, "--json", "mailbox", "show", mailbox).stdout)
    assert again["messages"] == 3
