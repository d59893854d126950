"""One run, one worker: a lock file next to the record, safe on shared (NFS-like) filesystems.

`flock` is unreliable on many cluster filesystems, so the lock is a plain file created with
O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+) that names its owner. The owner
refreshes its modification time from a daemon thread while it lives; a lock is stale, and
may be taken over, when its owner is on this host and its pid is dead, or when it has not
been refreshed for `stale_after_s` (owners on other hosts, hung processes). Staleness by
time compares the file's modification time with this host's clock: keep clocks in sync (NTP)
and `stale_after_s` well above `refresh_s` and any clock skew."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def lock_path(record_path: Path) -> Path:
    return record_path.with_name(record_path.name + ".lock")


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
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        """The current owner, {} when the file is unreadable or half-written, None when absent."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("host") == self.owner["host"] and isinstance(owner.get("pid"), int):
            if not pid_alive(owner["pid"]):
                return True
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after_s

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
                self.path.unlink(missing_ok=True)
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

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                os.utime(self.path)
            except OSError:  # removed by a takeover or a cleanup: nothing left to refresh
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if (self.read() or {}).get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)

    def holder(self) -> str:
        """Who holds the lock, for the 'skipped' line."""
        owner = self.read() or {}
        return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} since {owner.get('since', '?')}"
