"""mailgatectl: mailbox administration, backup and restore (CONTRACT.md,
"Programs"), against the real binaries, with and without a running daemon.

Non-empty mailboxes (delete/reset-password refused because messages are
stored) need a tool that stores a message; until one is merged only the
"active" refusal is tested here.
"""

import json
import math
import os
import pwd
import re
import shutil
import tempfile

import pytest

from conftest import free_port, listener, sanitizer_lines

DOMAIN = "example.test"
ID_RE = re.compile(r"^[a-z0-9]{8,32}$")
MAILBOX_KEYS = {"id", "address", "name", "description", "status", "messages",
                "bytes", "oldest"}
POLICY_KEYS = {"accept_journal", "accept_proxy", "require_tls",
               "proxy_targets", "sender_networks"}


def ok(r):
    assert r.returncode == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (
        r.returncode, r.stdout, r.stderr)
    assert not sanitizer_lines(r.stderr), r.stderr
    return r


def fails(r, *needles):
    """A refusal: non-zero exit, nothing on stdout, a message on stderr
    that contains every needle (what went wrong and what to do)."""
    assert r.returncode != 0, "expected a failure:\n" + r.stdout
    assert r.stdout == ""
    assert r.stderr.startswith("mailgatectl: "), r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return r


def jctl(d, *args):
    return json.loads(ok(d.ctl("--json", *args)).stdout)


def create(d, name="Archive", *extra):
    return jctl(d, "mailbox", "create", "--name", name, *extra)


@pytest.fixture
def inst(make_daemon):
    """An instance with email_domain, not started."""
    return make_daemon(start=False, listen=[listener(free_port())],
                       top={"email_domain": DOMAIN})


# ------------------------------------------------------------ create


def check_password(pw):
    # groups of an unambiguous alphabet, >= 128 random bits
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", pw), pw
    symbols = pw.replace("-", "")
    assert not set(symbols) & set("01lio"), pw
    assert len(symbols) * math.log2(31) >= 128, pw


def test_create_without_daemon(inst):
    m = create(inst, "Journal of Ltd.", "--description", "from exchange")
    assert ID_RE.match(m["id"])
    assert m["address"] == m["id"] + "@" + DOMAIN
    assert m["name"] == "Journal of Ltd."
    assert m["description"] == "from exchange"
    assert m["status"] == "active"
    assert (m["messages"], m["bytes"], m["oldest"]) == (0, 0, None)
    check_password(m["password"])
    # the CONTRACT.md defaults
    assert m["accept_journal"] is True and m["accept_proxy"] is True
    assert m["require_tls"] is False
    assert m["proxy_targets"] == [] and m["sender_networks"] == []
    m2 = create(inst, "Second")
    assert m2["id"] != m["id"] and m2["password"] != m["password"]


def test_create_human_output(inst):
    r = ok(inst.ctl("mailbox", "create", "--name", "Box"))
    mid = re.search(r"^id:\s+([a-z0-9]+)$", r.stdout, re.M).group(1)
    assert re.search(r"^address:\s+%s@%s$" % (mid, DOMAIN), r.stdout, re.M)
    pw = re.search(r"^password:\s+(\S+)$", r.stdout, re.M).group(1)
    check_password(pw)
    assert "not stored" in r.stdout and "cannot be recovered" in r.stdout


def test_create_while_daemon_runs(make_daemon):
    d = make_daemon(listen=[listener(free_port())],
                    top={"email_domain": DOMAIN})
    m = create(d)
    assert ID_RE.match(m["id"])
    assert [x["id"] for x in jctl(d, "mailbox", "list")] == [m["id"]]
    st = jctl(d, "status")
    assert st["running"] is True and st["mailboxes"] == 1
    assert d.alive()


def test_create_needs_email_domain(make_daemon):
    d = make_daemon(start=False, listen=[listener(free_port())])
    fails(d.ctl("mailbox", "create", "--name", "x"), "email_domain",
          d.conf)
    assert not os.path.exists(os.path.join(d.data_dir, "store"))


def test_create_usage_errors(inst):
    r = inst.ctl("mailbox", "create")
    assert r.returncode == 2 and "--name" in r.stderr
    assert inst.ctl("mailbox", "create", "--name", "").returncode == 2
    assert inst.ctl("mailbox", "create", "--name", "a\nb").returncode == 2
    assert inst.ctl("mailbox", "frobnicate").returncode == 2
    assert inst.ctl("mailbox").returncode == 2


# ------------------------------------------------------- list, show


def test_list_and_show(inst):
    r = ok(inst.ctl("mailbox", "list"))
    assert "no mailboxes" in r.stdout
    assert jctl(inst, "mailbox", "list") == []
    a = create(inst, "A")
    b = create(inst, "B")
    items = jctl(inst, "mailbox", "list")
    assert sorted(x["id"] for x in items) == sorted([a["id"], b["id"]])
    for x in items:
        assert set(x) >= MAILBOX_KEYS | POLICY_KEYS
        assert "password" not in x
        assert (x["messages"], x["bytes"], x["oldest"]) == (0, 0, None)
    s = jctl(inst, "mailbox", "show", a["id"])
    assert set(s) >= MAILBOX_KEYS | POLICY_KEYS and "password" not in s
    assert s["id"] == a["id"] and s["name"] == "A"
    assert s["address"] == a["id"] + "@" + DOMAIN
    human = ok(inst.ctl("mailbox", "show", a["id"])).stdout
    assert re.search(r"^status:\s+active$", human, re.M)
    assert re.search(r"^messages:\s+0$", human, re.M)
    table = ok(inst.ctl("mailbox", "list")).stdout.splitlines()
    assert table[0].split()[:2] == ["ID", "STATUS"]
    assert len(table) == 3


def test_show_unknown(inst):
    create(inst)
    fails(inst.ctl("mailbox", "show", "zzzzzzzzzzzz"), "no mailbox",
          "mailbox list")
    fails(inst.ctl("mailbox", "show", "NOT-AN-ID"), "not a mailbox id")


def test_show_without_store(inst):
    fails(inst.ctl("mailbox", "show", "abcdefgh12345678"), "create")
    assert not os.path.exists(os.path.join(inst.data_dir, "store"))


# -------------------------------------------------------------- edit


def test_edit_every_field(inst):
    mid = create(inst)["id"]
    m = jctl(inst, "mailbox", "edit", mid, "--name", "New name",
             "--description", "new text", "--status", "suspended",
             "--accept-journal", "no", "--accept-proxy", "no",
             "--require-tls", "yes",
             "--proxy-targets", "imap.example.com:995, 192.0.2.7,10.0.0.0/8",
             "--sender-networks", "192.0.2.0/24,2001:db8::/32")
    assert m["name"] == "New name" and m["description"] == "new text"
    assert m["status"] == "suspended"
    assert m["accept_journal"] is False and m["accept_proxy"] is False
    assert m["require_tls"] is True
    assert m["proxy_targets"] == ["imap.example.com:995", "192.0.2.7",
                                  "10.0.0.0/8"]
    assert m["sender_networks"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert jctl(inst, "mailbox", "show", mid) == m
    m = jctl(inst, "mailbox", "edit", mid, "--status", "active",
             "--proxy-targets", "none", "--sender-networks", "any",
             "--accept-journal", "yes")
    assert m["status"] == "active" and m["accept_journal"] is True
    assert m["proxy_targets"] == [] and m["sender_networks"] == []
    assert m["name"] == "New name" and m["require_tls"] is True


def test_edit_validation(inst):
    mid = create(inst)["id"]
    before = jctl(inst, "mailbox", "show", mid)
    bad = [
        (["--status", "paused"], "active or suspended"),
        (["--accept-journal", "maybe"], "yes or no"),
        (["--accept-proxy", "1"], "yes or no"),
        (["--require-tls", "true"], "yes or no"),
        (["--sender-networks", "192.0.2.0/33"], "--sender-networks"),
        (["--sender-networks", "example.com"], "--sender-networks"),
        (["--sender-networks", ","], "empty list"),
        (["--proxy-targets", "10.0.0.0/99"], "--proxy-targets"),
        (["--proxy-targets", "a b"], "--proxy-targets"),
        (["--name", ""], "name"),
        ([], "nothing to change"),
    ]
    for args, needle in bad:
        r = inst.ctl("mailbox", "edit", mid, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
    assert jctl(inst, "mailbox", "show", mid) == before
    fails(inst.ctl("mailbox", "edit", "abcdefgh12345678", "--name", "x"),
          "no mailbox")


def test_edit_while_daemon_runs(make_daemon):
    d = make_daemon(listen=[listener(free_port())],
                    top={"email_domain": DOMAIN})
    mid = create(d)["id"]
    m = jctl(d, "mailbox", "edit", mid, "--status", "suspended")
    assert m["status"] == "suspended"


# ------------------------------------------- delete, reset-password


def test_delete_and_reset_refused_while_active(inst):
    mid = create(inst)["id"]
    for cmd in ("delete", "reset-password"):
        fails(inst.ctl("mailbox", cmd, mid), "active",
              "--status suspended")
    assert jctl(inst, "mailbox", "show", mid)["status"] == "active"


def test_reset_password_suspended_empty(inst):
    m = create(inst)
    jctl(inst, "mailbox", "edit", m["id"], "--status", "suspended")
    r = jctl(inst, "mailbox", "reset-password", m["id"])
    assert r["id"] == m["id"] and r["status"] == "suspended"
    check_password(r["password"])
    assert r["password"] != m["password"]
    human = ok(inst.ctl("mailbox", "reset-password", m["id"])).stdout
    assert "password:" in human and "cannot be recovered" in human


def test_delete_suspended_empty(inst):
    m = create(inst)
    keep = create(inst, "Keep")
    jctl(inst, "mailbox", "edit", m["id"], "--status", "suspended")
    r = jctl(inst, "mailbox", "delete", m["id"])
    assert r == {"id": m["id"], "deleted": True}
    assert [x["id"] for x in jctl(inst, "mailbox", "list")] == [keep["id"]]
    fails(inst.ctl("mailbox", "delete", m["id"]), "no mailbox")
    fails(inst.ctl("mailbox", "show", m["id"]), "no mailbox")


# ----------------------------------------------------- file ownership


def test_files_owned_by_configured_user(make_daemon):
    if os.geteuid() != 0:
        pytest.fail("needs root (mailgatectl drops to `user` only as root)")
    nobody = pwd.getpwnam("nobody")
    base = tempfile.mkdtemp(prefix="mg-ctl-owner-", dir="/tmp")
    try:
        os.chmod(base, 0o755)  # nobody must reach the data directory
        data = os.path.join(base, "data")
        d = make_daemon(start=False, data_dir=data,
                        listen=[listener(free_port())],
                        top={"email_domain": DOMAIN, "user": "nobody"})
        for f in ("cert.pem", "key.pem"):  # the operator's part
            os.chown(os.path.join(data, f), nobody.pw_uid, nobody.pw_gid)
        mid = create(d)["id"]  # creates the store
        jctl(d, "mailbox", "edit", mid, "--status", "suspended")
        jctl(d, "mailbox", "list")
        assert d.ctl("status").returncode == 3  # reads the store too
        d.start()
        create(d, "while running")
        bk = os.path.join(base, "backup")
        ok(d.ctl("backup", bk))
        d.stop()
        ok(d.ctl("restore", bk))
        for top, dirs, files in os.walk(data):
            for n in [top] + [os.path.join(top, f) for f in dirs + files]:
                st = os.lstat(n)
                assert st.st_uid == nobody.pw_uid, (n, st.st_uid)
        # the backup is root's: it holds the TLS key
        assert os.stat(os.path.join(bk, "key.pem")).st_uid == 0
        assert os.stat(os.path.join(bk, "key.pem")).st_mode & 0o077 == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------- backup, restore


def backup_info(path):
    out = {}
    with open(os.path.join(path, "BACKUP-INFO")) as f:
        for line in f:
            if ":" in line and not line.startswith("#"):
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    return out


def test_backup_while_running_then_restore(make_daemon, tmp_path):
    src = make_daemon(listen=[listener(free_port())],
                      top={"email_domain": DOMAIN}, name="src")
    a = create(src, "A")
    b = create(src, "B", "--description", "second")
    jctl(src, "mailbox", "edit", b["id"], "--sender-networks",
         "198.51.100.0/24")
    epoch = jctl(src, "status")["epoch"]
    assert re.fullmatch(r"[0-9a-f]{16}", epoch)
    bk = str(tmp_path / "bk")
    r = jctl(src, "backup", bk)
    assert r["epoch"] == epoch and r["mailboxes"] == 2
    info = backup_info(bk)
    assert info["epoch"] == epoch and info["mailboxes"] == "2"
    assert info["messages"] == "0" and "version" in info and "time" in info
    assert os.path.isfile(os.path.join(bk, "store", "data.mdb"))
    assert open(os.path.join(bk, "mailgate.conf")).read() == \
        open(src.conf).read()
    assert open(os.path.join(bk, "cert.pem"), "rb").read() == \
        open(os.path.join(src.data_dir, "cert.pem"), "rb").read()
    assert os.stat(os.path.join(bk, "key.pem")).st_mode & 0o777 == 0o600
    # a backup never goes into a non-empty directory
    fails(src.ctl("backup", bk), "not empty")
    assert src.alive()

    # a fresh, stopped instance: restore refused while it runs
    dst = make_daemon(listen=[listener(free_port())],
                      top={"email_domain": DOMAIN}, name="dst")
    create(dst, "old")
    conf_before = open(dst.conf).read()
    fails(dst.ctl("restore", bk), "running", "stop")
    dst.stop()
    r = jctl(dst, "restore", bk)
    assert r["mailboxes"] == 2 and r["epoch"] != epoch
    assert r["previous_store"] and os.path.isdir(r["previous_store"])
    assert open(dst.conf).read() == conf_before  # -c file untouched
    assert open(dst.conf + ".from-backup").read() == open(src.conf).read()
    r2 = dst.ctl("--json", "status")
    assert r2.returncode == 3
    st = json.loads(r2.stdout)
    assert st["running"] is False
    assert st["epoch"] == r["epoch"] != epoch
    items = {x["id"]: x for x in jctl(dst, "mailbox", "list")}
    assert set(items) == {a["id"], b["id"]}
    assert items[b["id"]]["description"] == "second"
    assert items[b["id"]]["sender_networks"] == ["198.51.100.0/24"]
    # the restored instance runs, and mailboxes can be added
    dst.stopped = None
    dst.proc = None
    dst.start()
    create(dst, "after restore")
    assert len(jctl(dst, "mailbox", "list")) == 3


def test_restore_rejects_non_backup(inst, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    fails(inst.ctl("restore", str(empty)), "BACKUP-INFO")


def test_backup_without_store(inst, tmp_path):
    fails(inst.ctl("backup", str(tmp_path / "bk")), "nothing to back up")
