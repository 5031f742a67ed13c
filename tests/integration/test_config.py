"""mailgated --check-config: good files pass, bad ones are named by file,
line and setting."""

import re
import subprocess

import pytest

from conftest import (RawCfg, daemon_env, free_port, line_of, listener,
                      sanitizer_lines, sbin)


def check_config(conf):
    return subprocess.run(
        [sbin("mailgated"), "-c", conf, "--check-config"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=10, env=daemon_env(),
    )


def test_check_config_good(daemon_files):
    d = daemon_files
    d.write_config(listen=[listener(free_port(), tls="starttls"),
                           listener(free_port(), tls="implicit")],
                   settings={"greeting": "hi", "idle_timeout": 5000,
                             "line_max": 512},
                   top={"drain_timeout": 2, "max_connections": 100,
                        "limit_exempt": ["127.0.0.0/8", "::1"]})
    r = check_config(d.conf)
    assert r.returncode == 0, r.stderr
    assert not sanitizer_lines(r.stderr), r.stderr


def test_check_config_starts_nothing(make_daemon):
    # with the same ports and data directory in use by a running daemon:
    # a check that bound a port or locked the directory would fail
    port = free_port()
    d = make_daemon(listen=[listener(port)])
    r = check_config(d.conf)
    assert r.returncode == 0, r.stderr
    assert d.alive()


# (case id, config_text kwargs, marker of the offending line, word the
# message must contain or None)
def _cases(so):
    p = 2525
    return [
        ("unknown-top-level",
         dict(listen=[listener(p)], top_extra_lines=["no_such_setting = 1;"]),
         "no_such_setting", "no_such_setting"),
        ("port-out-of-range",
         dict(listen=[listener(70000)]), "port = 70000", "port"),
        ("port-overflow",
         dict(listen=[listener(RawCfg("5000000000"))]), "port = 5000000000",
         "port"),
        # libconfig 1.5 wraps a literal beyond 32 bits silently:
        # 4294967321 reads as 25, a valid port, unless the core notices
        ("port-overflow-wraps",
         dict(listen=[listener(RawCfg("4294967321"))]), "port = 4294967321",
         "port"),
        ("port-int64",
         dict(listen=[listener(RawCfg("5000000000L"))]), "port = 5000000000L",
         "port"),
        ("tls-bogus",
         dict(listen=[listener(p, tls="bogus")]), 'tls = "bogus"', "tls"),
        ("unknown-module",
         dict(listen=[listener(p)],
              extra_modules=['{ name = "nosuchmod"; }']),
         '"nosuchmod"', "nosuchmod"),
        ("duplicate-module",
         dict(listen=[listener(p)],
              extra_modules=['{ name = "testline"; path = "%s"; }' % so]),
         '{ name = "testline"', "testline"),
        ("unknown-module-setting",
         dict(listen=[listener(p)], module_extra_lines=["bogus_knob = 1;"]),
         "bogus_knob", "bogus_knob"),
        ("module-setting-range",
         dict(listen=[listener(p)], settings={"line_max": 15}),
         "line_max", "line_max"),
        ("sender-key-lifetime-range",
         dict(listen=[listener(p)],
              top={"store": {"sender_key_lifetime": 3601}}),
         "sender_key_lifetime", "sender_key_lifetime"),
        ("store-cipher-unknown",
         dict(listen=[listener(p)], top={"store": {"cipher": "rot13"}}),
         '"rot13"', "cipher"),
        ("drop-written-pages-type",
         dict(listen=[listener(p)],
              top={"store": {"drop_written_pages": 1}}),
         "drop_written_pages", "drop_written_pages"),
        ("syntax-error",
         dict(listen=[listener(p)], top_extra_lines=["this is broken"]),
         "this is broken", None),
    ]


CASE_IDS = [c[0] for c in _cases("x")]


@pytest.mark.parametrize("case", CASE_IDS)
def test_check_config_errors(daemon_files, testline_so, case):
    d = daemon_files
    _, kw, marker, word = [c for c in _cases(testline_so) if c[0] == case][0]
    text = d.write_config(text=d.config_text(**kw))
    line = line_of(text, marker)
    r = check_config(d.conf)
    msg = r.stderr
    assert r.returncode != 0, "accepted:\n" + text
    assert re.search(re.escape(d.conf) + r":%d\b" % line, msg), \
        "expected %s:%d in stderr:\n%s\nconfig:\n%s" % (d.conf, line, msg, text)
    if word is not None:
        assert word in msg, msg
    assert not sanitizer_lines(msg), msg
