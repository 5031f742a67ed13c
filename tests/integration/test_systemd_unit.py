"""The installed systemd unit (doc/mailgated.service.in): systemd itself
checks it (syntax, directives, that the programs it starts exist), and it
starts the installed daemon in the foreground with this build's paths,
checks the configuration first and reloads with SIGHUP."""

import os
import shutil
import subprocess

import pytest

from conftest import env_required


def _unit():
    prefix = env_required("MG_PREFIX")
    path = os.path.join(prefix, "lib", "systemd", "system", "mailgated.service")
    if not os.path.exists(path):
        pytest.fail("%s is missing (make install)" % path, pytrace=False)
    with open(path) as f:
        return path, f.read()


def test_systemd_accepts_the_unit():
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (./quickstart test installs "
                    "systemd)", pytrace=False)
    path, _ = _unit()
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_runs_the_installed_daemon():
    _, text = _unit()
    sbin = env_required("MG_SBINDIR")
    lines = dict(l.split("=", 1) for l in text.splitlines()
                 if "=" in l and not l.startswith("#"))
    daemon = os.path.join(sbin, "mailgated")
    assert lines["ExecStart"].startswith(daemon + " -c "), lines["ExecStart"]
    assert lines["ExecStart"].endswith(" --foreground")
    assert lines["ExecStartPre"].startswith(daemon + " -c ")
    assert lines["ExecStartPre"].endswith(" --check-config")
    assert "-HUP" in lines["ExecReload"]
    assert lines["LimitCORE"] == "0"
    # the configuration file it names is the one `make install` set up
    conf = lines["ExecStart"].split(" -c ", 1)[1].split()[0]
    assert os.path.exists(os.path.join(os.path.dirname(conf),
                                       "mailgate.conf.example")), conf
