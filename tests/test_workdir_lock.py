"""The workdir lock: a second holder is refused with the holder named; a lock left by a dead run is detected as
stale (dead pid on this host, or an old heartbeat from any host), named in a warning and taken over; release
removes only this run's lock. Two real trainings into one workdir: tests/test_train.py."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from audiocap_jax import cli
from audiocap_jax.rundir import lock
from audiocap_jax.rundir.layout import LOCK_FILE
from audiocap_jax.rundir.lock import STALE_SECONDS, Holder, WorkdirLock


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(workdir, holder: Holder, age_seconds: float = 0.0):
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    path.write_text(json.dumps(dataclasses.asdict(holder)))
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_second_holder_is_refused_naming_the_first_and_release_frees_it(tmp_path):
    workdir = tmp_path / "new" / "run"
    with WorkdirLock.acquire(workdir) as held:  # creates the workdir
        saved = json.loads((workdir / LOCK_FILE).read_text())
        assert saved == dataclasses.asdict(held.holder) and saved["pid"] == os.getpid()
        with pytest.raises(cli.UserError) as refused:
            WorkdirLock.acquire(workdir)
        message = cli.format_user_error(refused.value)
        assert (
            f"--workdir={workdir} is in use by another training run (host {held.holder.host}, pid " in message
        )
        assert f"started {held.holder.started}; its lock {workdir / LOCK_FILE}" in message
        assert "\nfix: wait for that run to end or stop it, or train into another --workdir" in message
    assert list(workdir.iterdir()) == []
    WorkdirLock.acquire(workdir).release()


OLD = "its heartbeat is 12 minutes old (a live run renews it every minute)"


@pytest.mark.parametrize(
    "holder_host, pid, age, reason",
    [
        ("this", "dead", 0.0, "process {pid} no longer runs on this host"),
        ("other-host", "self", STALE_SECONDS + 120, OLD),
        ("this", "self", STALE_SECONDS + 120, OLD),  # alive, yet silent for 12 minutes: a reused pid
    ],
)
def test_stale_lock_is_named_and_taken_over(tmp_path, caplog, holder_host, pid, age, reason):
    me = Holder.this_process()
    pid = _dead_pid() if pid == "dead" else os.getpid()
    host = me.host if holder_host == "this" else holder_host
    stale = Holder(host, pid, "2026-01-01T00:00:00+00:00", "a" * 32)
    path = _write_lock(tmp_path, stale, age)
    assert lock.stale_reason(stale, age, me.host) == reason.format(pid=pid)
    with caplog.at_level("WARNING"), WorkdirLock.acquire(tmp_path) as held:
        assert json.loads(path.read_text())["token"] == held.holder.token
    warning = f"Taking over the stale lock {path} (host {host}, pid {pid}, started 2026-01-01T00:00:00+00:00)"
    assert f"{warning}: {reason.format(pid=pid)}." in caplog.text
    assert list(tmp_path.iterdir()) == []  # the stale file is gone, not left under another name


def test_live_lock_of_another_host_and_an_unreadable_fresh_lock_are_respected(tmp_path):
    me = Holder.this_process()
    other = Holder("other-host", _dead_pid(), "2026-01-01T00:00:00+00:00", "b" * 32)
    assert lock.stale_reason(other, 30.0, me.host) is None  # its pid means nothing here
    _write_lock(tmp_path, other, age_seconds=30.0)
    with pytest.raises(cli.UserError, match=r"in use by another training run \(host other-host"):
        WorkdirLock.acquire(tmp_path)
    (tmp_path / LOCK_FILE).write_text("")  # created, not yet written: a holder is starting
    with pytest.raises(cli.UserError, match="a holder not named in the file"):
        WorkdirLock.acquire(tmp_path)


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
    held = WorkdirLock.acquire(tmp_path)
    successor = Holder("other-host", 1, "2026-01-01T00:00:00+00:00", "c" * 32)
    _write_lock(tmp_path, successor)
    held.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == successor.token
