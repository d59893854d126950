"""One run, one worker: a lock file next to the record (`RunPaths.lock`), safe on shared (NFS-like)
filesystems.

`flock` is unreliable on many cluster filesystems, so the lock is a plain file created with
O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+) that names its owner. The owner
refreshes its modification time from a daemon thread while it lives; a lock is stale, and
may be taken over, when its owner is on this host and its pid is dead, or when it has not
been refreshed for `stale_after_s` (owners on other hosts, hung processes). Staleness by
time compares the file's modification time with this host's clock: keep clocks in sync (NTP)
and `stale_after_s` well above `refresh_s` and any clock skew.

A process suspended past `stale_after_s` (SLURM suspend, SIGSTOP, a paused VM) may wake up to
find its run taken over: the lock file gone or holding another token. It then no longer owns
the run: its refresh never touches the new owner's lock, training checks `check()` every step
and `verify()` before every checkpoint, model or record write, and both raise `LockLost`."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class LockLost(Exception):
    """This process no longer owns its run's lock: it must write nothing more for the run."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # Linux: a killed process nobody has reaped yet (a zombie) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """Claim `path` for this process: `acquire()` is True when this process owns it."""

    def __init__(self, path: Path, stale_after_s: float = 600.0, refresh_s: float = 30.0) -> None:
        self.path = Path(path)
        self.stale_after_s, self.refresh_s = stale_after_s, refresh_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": None}
        self._stop = threading.Event()
        self._lost = threading.Event()  # set by the refresh thread when the lock is no longer ours
        self._thread: threading.Thread | None = None

    def read(self, path: Path | None = None) -> dict[str, Any] | None:
        """The current owner, {} when the file is unreadable or half-written, None when absent."""
        try:
            return json.loads((path or self.path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def stale(self, owner: dict[str, Any], path: Path | None = None) -> bool:
        if owner.get("host") == self.owner["host"] and isinstance(owner.get("pid"), int):
            if not pid_alive(owner["pid"]):
                return True
        try:
            age = time.time() - (path or self.path).stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after_s

    def owns(self) -> bool:
        """Whether the lock file holds this process's token now (read afresh)."""
        return (self.read() or {}).get("token") == self.owner["token"]

    def verify(self) -> None:
        """Raise LockLost unless this process still owns the lock (read afresh): call it
        immediately before writing anything of the run."""
        if not self.owns():
            self._lost.set()
        self.check()

    def check(self) -> None:
        """Raise LockLost when a refresh has found the lock no longer ours (no file access:
        cheap enough for every training step)."""
        if self._lost.is_set():
            raise self.lost()

    def lost(self) -> LockLost:
        """The error that names the lock and who holds it now."""
        now = "the lock file is gone" if self.read() is None else f"it is now held by {self.holder()}"
        return LockLost(f"lost the lock {self.path}: {now}; this process stops and writes nothing for the run")

    def _remove(self, expected: Callable[[dict[str, Any], Path], bool]) -> bool:
        """Remove the lock file if `expected(owner, file)` holds for it; True when removed.

        A read followed by an unlink may delete a lock that another process created in between
        (POSIX has no "unlink if it still holds X"). So the file is first renamed to a name
        only this call uses: rename is atomic on local filesystems and on NFS, so exactly one
        file leaves the lock path and no other process can change what was taken. The taken
        file is then checked; if it is not the expected one, it is linked back (os.link, atomic
        on both, never replaces a lock created meanwhile; an NFS link that reports EEXIST after
        succeeding leaves the lock in place as well) and the private name removed.
        Callers read the lock first and call this only for the file they expect, so a restore
        happens only when the lock changed in the few microseconds between that read and the
        rename (a takeover of a stale lock at that very moment). While the file is away the path
        is empty: a process acquiring just then keeps its own lock, and the displaced owner (or
        an owner checking just then) finds its lock gone or foreign and stops (LockLost). So the
        remaining window can cost a run its owner (it is re-run once its lock goes stale), never
        give it two."""
        taken = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, taken)
        except FileNotFoundError:
            if not taken.exists():  # (on NFS a retransmitted rename that had succeeded says ENOENT)
                return False
        owner = self.read(taken)
        if owner is not None and expected(owner, taken):
            taken.unlink(missing_ok=True)
            return True
        try:
            os.link(taken, self.path)
        except FileExistsError:  # a lock created while the taken one was away: leave it to its owner
            pass
        taken.unlink(missing_ok=True)
        return False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _break(self, seen: dict[str, Any]) -> None:
        """Remove the stale lock `seen`. Breakers take turns through a second file, so none
        removes a lock that another breaker has just taken over (its token differs from the
        one judged stale); a breaker that finds the turn taken leaves the lock to its holder."""
        turn = self.path.with_name(self.path.name + ".break")
        try:
            os.close(os.open(turn, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - turn.stat().st_mtime > self.stale_after_s:  # its breaker died mid-break
                    turn.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        try:
            owner = self.read()
            if owner is not None and owner.get("token") == seen.get("token") and self.stale(owner):
                # re-checked on the file taken away: its owner may have refreshed it meanwhile
                self._remove(lambda o, f: o.get("token") == seen.get("token") and self.stale(o, f))
        finally:
            turn.unlink(missing_ok=True)

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner["since"] = datetime.now(timezone.utc).isoformat()
        for _ in range(2):  # the second try follows a stale lock broken (or a lock released meanwhile)
            if self._create():
                self._thread = threading.Thread(target=self._refresh, name=f"lock {self.path.name}", daemon=True)
                self._thread.start()
                return True
            owner = self.read()
            if owner is not None:
                if not self.stale(owner):
                    return False
                self._break(owner)
        return False

    def _touch(self) -> bool:
        """Refresh the lock if it is still ours; False when it is not (gone, or another token).

        The token is read and the time set through one open file descriptor, so the file
        touched is the very file whose token was read: a takeover between the read and the
        utime replaces the file at the path, and the utime lands on this process's old,
        unlinked file, never on the new owner's. No window remains. (On NFS, the old file
        removed by another client leaves a stale handle: an OSError, read as not ours.)"""
        try:
            with open(self.path) as f:
                if json.loads(f.read()).get("token") != self.owner["token"]:
                    return False
                os.utime(f.fileno())
        except (OSError, ValueError, AttributeError):
            return False
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if not self._touch():
                self._lost.set()  # training stops at its next check()
                return

    def release(self) -> None:
        """Remove the lock if it is ours; a lock holding another token is never removed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.owns():
            self._remove(lambda owner, _: owner.get("token") == self.owner["token"])

    def holder(self) -> str:
        """Who holds the lock, for the 'skipped' line."""
        owner = self.read() or {}
        return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} since {owner.get('since', '?')}"
