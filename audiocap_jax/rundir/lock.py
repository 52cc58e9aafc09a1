"""One training per workdir at a time: `<workdir>/train.lock`, taken at start and removed at exit.

Two runs writing one workdir log every step twice and delete each other's checkpoints, so the second one must
stop before it writes anything. The lock file holds JSON naming its holder (host, pid, start time and a random
token) and is created with `O_CREAT | O_EXCL`, atomic on local disks and NFS: of two runs starting together
exactly one gets it; the other fails with a `UserError` naming the holder (exit 2). While the run lives, a
daemon thread touches the file every `HEARTBEAT_SECONDS`; its modification time is the heartbeat. On a pod,
process 0 takes the lock for every process (train.py shares the outcome).

A run killed by SIGKILL, or on a host that died, leaves its lock behind. Such a lock is stale, named in a
warning and taken over when its holder ran on this host and its pid no longer runs, or when its heartbeat is
older than `STALE_SECONDS` (the only sign of life a process on another host gives; a live run touches the file
every minute). Taking over renames the stale file to a name of our own first, so of two runs that found the
same stale lock only one removes it; the other then meets the winner's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from absl import logging

from audiocap_jax.cli import UserError
from audiocap_jax.rundir.layout import LOCK_FILE

HEARTBEAT_SECONDS = 60.0  # how often a running training touches its lock
STALE_SECONDS = 10 * 60.0  # a lock not touched for this long belongs to a dead run, whatever its host
_ATTEMPTS = 3  # a stale lock removed, or a holder that just finished, lets us try again


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: what the lock file says, and what a refusal names."""

    host: str
    pid: int
    started: str  # UTC, ISO 8601
    token: str  # tells this holder's file from a later one of the same host and pid

    @classmethod
    def this_process(cls) -> Holder:
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, uuid.uuid4().hex)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"


def _read(path: Path) -> tuple[Holder | None, bytes, float]:
    """(holder, the file's bytes, seconds since its heartbeat); holder None when the file does not parse.

    Raises:
      FileNotFoundError: the lock was released (or taken over) meanwhile.
    """
    content = path.read_bytes()
    age = time.time() - path.stat().st_mtime
    try:
        holder = Holder(**json.loads(content))
    except (ValueError, TypeError):  # being written this instant, or not ours
        holder = None
    return holder, content, age


def _running_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_reason(holder: Holder | None, age_seconds: float, host: str) -> str | None:
    """Why a lock's holder cannot be running any more, or None while it may be (the lock is respected)."""
    if age_seconds > STALE_SECONDS:
        return f"its heartbeat is {age_seconds / 60:.0f} minutes old (a live run renews it every minute)"
    if holder is not None and holder.host == host and not _running_here(holder.pid):
        return f"process {holder.pid} no longer runs on this host"
    return None


def _remove_stale(path: Path, content: bytes) -> None:
    """Removes the lock at `path` if it still holds `content` (the lock judged stale)."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)  # atomic: of two runs removing the same lock, one succeeds
    except FileNotFoundError:
        return
    if aside.read_bytes() != content:  # a racing run had already replaced it with its own: put that back
        os.rename(aside, path)
        return
    aside.unlink()


class WorkdirLock:
    """The held lock of one workdir: `acquire` it, then `release` it (or use it as a context manager)."""

    def __init__(self, path: Path, holder: Holder):
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    @classmethod
    def acquire(cls, workdir: str | os.PathLike) -> WorkdirLock:
        """Takes `<workdir>/train.lock` (creating the workdir), taking over a stale one with a warning.

        Raises:
          UserError: a run that may be alive holds it; the message names its host, pid and start time.
        """
        workdir = Path(workdir).expanduser().absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / LOCK_FILE
        me = Holder.this_process()
        for _ in range(_ATTEMPTS):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder, content, age = _read(path)
                except FileNotFoundError:  # released meanwhile
                    continue
                reason = stale_reason(holder, age, me.host)
                who = holder.describe() if holder is not None else "a holder not named in the file"
                if reason is None:
                    raise UserError(
                        f"--workdir={workdir} is in use by another training run ({who}; its lock {path} "
                        f"was renewed {age:.0f} s ago).",
                        "wait for that run to end or stop it, or train into another --workdir; if no run uses "
                        f"this workdir (e.g. its host is gone), delete {path}",
                    ) from None
                logging.warning("Taking over the stale lock %s (%s): %s.", path, who, reason)
                _remove_stale(path, content)
                continue
            with os.fdopen(descriptor, "w") as file:
                json.dump(dataclasses.asdict(me), file)
            return cls(path, me)
        raise UserError(
            f"--workdir={workdir}: the lock {path} changed hands {_ATTEMPTS} times while this run tried to take it.",
            "make sure one training runs into this workdir, then start it again",
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):  # the next beat tries again; a lost file is found at release
                os.utime(self.path)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock, unless another run took it over meanwhile."""
        self._stop.set()
        self._heartbeat.join()
        try:
            holder, _, _ = _read(self.path)
        except FileNotFoundError:
            holder = None
        if holder == self.holder:
            self.path.unlink(missing_ok=True)
        else:
            logging.warning("The lock %s is no longer this run's; left as it is.", self.path)

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
