"""Message encryption scheme 3 in the running daemon: store.cipher.

New messages get scheme 3 (AES-256-GCM chunks, OpenSSL) where the CPU
has AES instructions and scheme 2 (XChaCha20-Poly1305 secretstream)
elsewhere; store.cipher forces either. Whatever the setting, every
scheme reads: a mailbox holding messages of schemes 1 (stored with the
test tool mg-legacy, as versions before scheme 2 did), 2 and 3 is
retrieved and emptied in one POP3 session. mg-dump --keys names each
message's scheme and chunk cipher; no file under the data directory holds
the messages' text.
"""

import os
import platform
import subprocess

import pytest

from conftest import build_tool, daemon_env, mg_dump_keys, sanitizer_lines
from pop3_helpers import (deliver, login, mailbox_create, make_pop3,
                          sample_message, strip_trace)
from test_store_sender_key import not_on_disk

assert make_pop3  # a fixture, used by name

CIPHER_OF = {1: "xchacha20poly1305", 2: "xchacha20poly1305", 3: "aes256gcm"}


def cpu_has_aes():
    """What libsodium's crypto_aead_aes256gcm_is_available() looks for:
    AES-NI and PCLMULQDQ on x86."""
    if platform.machine() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return "aes" in flags and "pclmulqdq" in flags
    return False


def schemes(d, mailbox):
    """{message id: alg} from mg-dump --keys (which also decrypts every
    message); each line's cipher must be its scheme's."""
    out = {}
    for msg_id, alg, sender_key, cipher in mg_dump_keys(d, mailbox):
        assert cipher == CIPHER_OF[alg], (msg_id, alg, cipher)
        assert (sender_key == "-") == (alg == 1), (msg_id, alg, sender_key)
        out[msg_id] = alg
    return out


def big_message(marker):
    """Three chunks and a bit: the chunk numbers count."""
    line = b"%s line of a long body, with enough text to fill it\r\n" % (
        marker.encode())
    return sample_message(marker, extra=line * (200 * 1024 // len(line)))


@pytest.mark.parametrize("cipher", ["auto", "aes256gcm", "xchacha20poly1305"])
def test_cipher_setting(make_pop3, certs, cipher):
    d = make_pop3(top={"store": {"cipher": cipher}})
    want = {"aes256gcm": 3, "xchacha20poly1305": 2,
            "auto": 3 if cpu_has_aes() else 2}[cipher]
    d.wait_log(r"writing scheme %d \(%s\)" % (want, CIPHER_OF[want]))
    mb = mailbox_create(d)
    marker = "CIPHERMARK-%s" % os.urandom(8).hex()
    msgs = [sample_message(marker), big_message(marker)]
    deliver(d, mb, msgs, certs)
    p = login(d, mb, certs)
    assert p.stat()[0] == 2
    assert [strip_trace(p.retr(i)[1]) for i in (1, 2)] == msgs
    p.quit()
    assert sorted(schemes(d, mb).values()) == [want, want]
    not_on_disk(d, [marker.encode(), mb["password"].encode()])


def test_mixed_schemes_one_session(make_pop3, certs):
    d = make_pop3(top={"store": {"cipher": "xchacha20poly1305"}})
    mb = mailbox_create(d)
    m2 = big_message("scheme-two")
    deliver(d, mb, [m2], certs)
    d.stop()

    # what a version before scheme 2 stored (the daemon is stopped)
    m1 = sample_message("scheme-one")
    r = subprocess.run([build_tool("mg-legacy"), d.data_dir, mb["id"]],
                       input=m1, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, env=daemon_env())
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert not sanitizer_lines(r.stderr.decode(errors="replace"))

    with open(d.conf) as f:
        conf = f.read()
    assert '"xchacha20poly1305"' in conf
    with open(d.conf, "w") as f:
        f.write(conf.replace('"xchacha20poly1305"', '"aes256gcm"'))
    d.restart()
    m3 = big_message("scheme-three")
    deliver(d, mb, [m3], certs)

    by_id = schemes(d, mb)
    assert sorted(by_id.values()) == [1, 2, 3], by_id

    # one session (one unlocked key, one reader cache) reads all three in
    # the order they were stored, twice, then empties the mailbox
    order = [by_id_alg for _, by_id_alg in sorted(by_id.items())]
    want = {1: m1, 2: m2, 3: m3}
    p = login(d, mb, certs)
    assert p.stat()[0] == 3
    for _ in range(2):
        for i, alg in enumerate(order, 1):
            lines = p.retr(i)[1]
            if alg == 1:  # stored as it was, without trace fields
                got = b"".join(l + b"\r\n" for l in lines)
            else:
                got = strip_trace(lines)
            assert got == want[alg], "scheme %d" % alg
    for i in range(1, 4):
        p.dele(i)
    p.quit()
    p = login(d, mb, certs)
    assert p.stat()[0] == 0
    p.quit()
    not_on_disk(d, [b"scheme-one", b"scheme-two", b"scheme-three"])
