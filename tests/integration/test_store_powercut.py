"""The store across a power cut (reliability catalog item 2), in user space.

The catalog asks for the data directory on dm-log-writes, replayed to each
FLUSH/FUA; these machines have no device-mapper, so the same is built one
level up. mg-crashtest writes with 4 threads under tests/tools/powerlog.so,
which logs in order every write to data.mdb, every fdatasync of it and
every "ACK" line printed; it is killed with SIGKILL after some dozens of
ACKs. powercut_replay.py then rebuilds, from a copy of data.mdb taken
before the writer started, the file a power cut at many points of that
log could have left: every write made durable before the cut (synced by
an fdatasync that completed, or written O_DSYNC) is on disk, every other
write is there or not, per 4 KiB page: all lost, all kept, and seeded
random mixes (see powercut_replay.py for the model and what it leaves
out). At each point `mg-crashtest verify` with the ACKs printed before
the cut must pass: the store opens, every acknowledged message is there
and decrypts to its hash, nothing half-written is left.

The cuts: every sync point (after each completed fdatasync and after each
O_DSYNC meta write: the FLUSH and FUA of dm-log-writes), where only one
state is possible, and TORN_CUTS random points where writes are in flight
or not yet synced, each with the variants "none" (all of them lost, with
the file cut short or keeping its size), "all", and RANDOM_VARIANTS seeded
random mixes per page.
MG_POWERCUT_SEED=<n> replays the same choices.

It can fail: test_lying_disk_is_detected records with MG_POWERLOG_LIE=1,
a shim whose fdatasync does nothing and returns 0 (a disk that lies about
its cache); after the last ACK, the cut that drops every write not made
durable fails verify, while the cut that keeps them all passes (so the
failure is the lost data, not the replay). test_replay_ignoring_syncs_
is_detected takes an honest recording and replays it as if no fdatasync
had completed (what a store that forgot to sync before its meta write
would leave): verify fails the same way. By hand, a replay whose ACKs
were moved before the fdatasync of their commit (a store acknowledging
one sync early) failed verify at 11 of 16 ACK cuts.
"""

import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import daemon_env, sanitizer_lines, shim_so, tail
from powercut_replay import Replay, choose_all, choose_none, choose_random
from test_store_crash import init, tool

WANT_ACKS = 40  # verify decrypts every ACKed message: keep them few
RECORD_MAX_S = 5.0
TORN_CUTS = 20
RANDOM_VARIANTS = 2
VERIFY_TIMEOUT_S = 30


def _count_acks(path):
    with open(path) as f:
        return sum(1 for line in f if line.startswith("ACK "))


def record(tmp_path, lie=False, want_acks=WANT_ACKS):
    """Init a store, copy its data file, run the writer under the shim
    until want_acks ACKs (or RECORD_MAX_S), SIGKILL it; the Replay."""
    crashtest = tool("mg-crashtest")
    data = str(tmp_path / "data")
    init(crashtest, data)
    base = str(tmp_path / "base.mdb")
    shutil.copyfile(os.path.join(data, "store", "data.mdb"), base)
    log = str(tmp_path / "power.log")
    out = str(tmp_path / "stdout")
    env = daemon_env()
    env["LD_PRELOAD"] = shim_so("powerlog")
    env["MG_POWERLOG"] = log
    if lie:
        env["MG_POWERLOG_LIE"] = "1"
    # libasan must come first unless told not to check (sanitized builds)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    with open(out, "w") as stdout:
        p = subprocess.Popen([crashtest, data, "write", "4"], stdout=stdout,
                             stderr=subprocess.PIPE, env=env)
        start = time.monotonic()
        while (_count_acks(out) < want_acks and p.poll() is None
               and time.monotonic() - start < RECORD_MAX_S):
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=10)
    err = err.decode(errors="replace")
    assert p.returncode == -signal.SIGKILL, err
    assert not sanitizer_lines(err), tail(err)
    replay = Replay(base, log)
    # the log misses no write: replayed in full, it is the file as left
    with open(os.path.join(data, "store", "data.mdb"), "rb") as f:
        off = replay.explains(f.read())
    assert off is None, "a write to data.mdb at %d escaped the shim" % off
    # every ACK the program printed is in the log, in the order printed
    with open(out) as f:
        printed = [l for l in f if l.startswith("ACK ") and l.endswith("\n")]
    assert replay.acks(len(replay.log)).splitlines(True) == printed
    assert printed, "nothing acknowledged in %.1f s" % RECORD_MAX_S
    return replay, data


def verify_cut(tmp_path, data, replay, cut, choose, keep_size=False):
    """Write the data directory a power cut at `cut` leaves; run verify.
    The CompletedProcess (the directory stays for a look on failure)."""
    crashed = tmp_path / "crashed"
    if crashed.exists():
        shutil.rmtree(str(crashed))
    os.makedirs(str(crashed / "store"))
    with open(str(crashed / "store" / "data.mdb"), "wb") as f:
        f.write(replay.image(cut, choose, keep_size))
    shutil.copyfile(os.path.join(data, "crashtest.mailbox"),
                    str(crashed / "crashtest.mailbox"))
    acks = str(tmp_path / "acks")
    with open(acks, "w") as f:
        f.write(replay.acks(cut))
    return subprocess.run([tool("mg-crashtest"), str(crashed), "verify", acks],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=VERIFY_TIMEOUT_S,
                          env=daemon_env())


def pick_cuts(replay, rng):
    """Every sync point (each FLUSH/FUA: every write before it is durable,
    one state) and a sample of torn points (writes not yet durable:
    several states), and the end of the log."""
    torn = replay.torn_points()
    cuts = set(replay.sync_points())
    cuts.update(rng.sample(torn, min(len(torn), TORN_CUTS)))
    cuts.add(len(replay.log))
    return sorted(cuts), set(torn)


def variants(rng, torn):
    """The disk states to try at one cut."""
    if not torn:
        return [("durable only", choose_none, False)]
    out = [("none", choose_none, False), ("none, size kept", choose_none, True),
           ("all", choose_all, False)]
    for v in range(RANDOM_VARIANTS):
        s = rng.randrange(1 << 30)
        out.append(("random %d%s" % (s, ", size kept" if v % 2 else ""),
                    choose_random(s), v % 2 == 1))
    return out


# Under ASan one verify of ~40 messages takes about 0.05 s; the ~180
# verifies take about 10 s on this 2-core machine with other builds
# running; the watchdog leaves room for a slower, loaded one.
@pytest.mark.watchdog(60)
def test_power_cut_keeps_every_acknowledged_message(tmp_path):
    seed = int(os.environ.get("MG_POWERCUT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    replay, data = record(tmp_path)
    cuts, torn = pick_cuts(replay, rng)
    assert torn, "no write was ever in flight: the recording is too short"
    checked = 0
    for cut in cuts:
        for name, choose, keep_size in variants(rng, cut in torn):
            r = verify_cut(tmp_path, data, replay, cut, choose, keep_size)
            where = ("power cut at record %d of %d (%d ACKs before it), "
                     "variant %s, MG_POWERCUT_SEED=%d, left in %s"
                     % (cut, len(replay.log), replay.acks(cut).count("\n"),
                        name, seed, tmp_path / "crashed"))
            assert not sanitizer_lines(r.stderr), where + "\n" + tail(r.stderr)
            assert r.returncode == 0 and "ok" in r.stdout, (
                where + "\n" + r.stdout + tail(r.stderr))
            checked += 1
    acked = replay.acks(len(replay.log)).count("\n")
    print("power cut: %d cuts (%d torn), %d verifies, %d ACKs, seed %d"
          % (len(cuts), len(torn & set(cuts)), checked, acked, seed))


def test_lying_disk_is_detected(tmp_path):
    replay, data = record(tmp_path, lie=True, want_acks=3)
    cut = max(i + 1 for i, (t, _, _) in enumerate(replay.log) if t == "A")
    # lost pages past the end of the file (SIGBUS in LMDB), or zeros in it
    for keep_size in (False, True):
        r = verify_cut(tmp_path, data, replay, cut, choose_none, keep_size)
        assert r.returncode != 0 or "FAILED" in r.stdout, (
            "acknowledged messages survived a disk that ignored fdatasync:\n"
            + r.stdout + r.stderr)
    # the same cut with every write kept is the state the writer saw
    r = verify_cut(tmp_path, data, replay, cut, choose_all)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + tail(r.stderr)


def test_replay_ignoring_syncs_is_detected(tmp_path):
    replay, data = record(tmp_path, want_acks=3)
    cut = max(i + 1 for i, (t, _, _) in enumerate(replay.log) if t == "A")
    r = verify_cut(tmp_path, data, replay, cut, choose_none)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + tail(r.stderr)
    # only the O_DSYNC meta writes stay durable
    replay.durable = {j: d for j, d in replay.durable.items()
                      if replay.log[j][0] == "D"}
    r = verify_cut(tmp_path, data, replay, cut, choose_none)
    assert r.returncode != 0 or "FAILED" in r.stdout, (
        "acknowledged messages survived the loss of every synced write:\n"
        + r.stdout + r.stderr)
