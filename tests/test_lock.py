"""The run lock (runners/lock.py): refused while its owner lives, taken over when stale, refreshed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runners.lock import RunLock, pid_alive


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process (reuse within the test is vanishingly rare)
    return proc.pid


def plant(path: Path, host: str, pid: int, age_s: float = 0.0) -> None:
    """A lock file as another owner would have left it, last refreshed `age_s` ago."""
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs", "since": "earlier"}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_a_live_lock_is_refused_and_released(tmp_path: Path) -> None:
    path = tmp_path / "run.json.lock"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    owner = json.loads(path.read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid() and owner["since"]
    assert not second.acquire()
    assert f"pid {os.getpid()}" in second.holder()
    first.release()
    assert not path.exists()
    assert second.acquire()
    second.release()


def test_a_killed_but_unreaped_process_is_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert pid_alive(proc.pid)
    proc.kill()
    deadline = time.time() + 10
    while pid_alive(proc.pid) and time.time() < deadline:  # a zombie until wait() reaps it
        time.sleep(0.01)
    assert not pid_alive(proc.pid)
    proc.wait()


@pytest.mark.parametrize(("owner", "age_s", "taken"), [
    ("dead pid, this host", 0.0, True),         # killed run on this machine: no need to wait
    ("live pid, this host", 0.0, False),
    ("live pid, this host, no refresh", 700.0, True),  # hung (or a reused pid): stale by time
    ("other host, refreshed", 0.0, False),       # its pid cannot be checked from here
    ("other host, no refresh", 700.0, True),
])
def test_stale_locks_are_taken_over(tmp_path: Path, owner: str, age_s: float, taken: bool) -> None:
    path = tmp_path / "run.json.lock"
    host = "elsewhere.cluster" if owner.startswith("other") else socket.gethostname()
    pid = dead_pid() if owner.startswith("dead") else os.getppid()
    plant(path, host, pid, age_s)
    lock = RunLock(path, stale_after_s=600)
    assert lock.acquire() is taken
    assert (json.loads(path.read_text())["token"] == lock.owner["token"]) is taken
    lock.release()
    assert path.exists() is not taken  # a refused lock leaves the owner's file alone


def test_the_owner_refreshes_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "run.json.lock"
    lock = RunLock(path, stale_after_s=600, refresh_s=0.05)
    assert lock.acquire()
    old = time.time() - 1000
    os.utime(path, (old, old))  # as if the last refresh were long ago
    deadline = time.time() + 10
    while path.stat().st_mtime < time.time() - 60 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > time.time() - 60
    assert not RunLock(path, stale_after_s=600).acquire()
    lock.release()
    assert lock._thread is None and not path.exists()


def test_release_keeps_a_lock_taken_over_by_another(tmp_path: Path) -> None:
    path = tmp_path / "run.json.lock"
    lock = RunLock(path)
    assert lock.acquire()
    plant(path, "elsewhere.cluster", 1)  # ours went stale and another worker took it over
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"


def race(lock: RunLock, start: threading.Barrier, won: list[RunLock]) -> None:
    start.wait()
    if lock.acquire():
        won.append(lock)


def test_one_winner_when_many_take_over_at_once(tmp_path: Path) -> None:
    """Threads racing for one stale lock: exactly one owns it, every time."""
    for attempt in range(20):
        path = tmp_path / f"run{attempt}.json.lock"
        plant(path, socket.gethostname(), dead_pid())
        locks = [RunLock(path, refresh_s=60) for _ in range(6)]
        won: list[RunLock] = []
        start = threading.Barrier(len(locks))
        threads = [threading.Thread(target=race, args=(lock, start, won)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, attempt
        assert json.loads(path.read_text())["token"] == won[0].owner["token"]
        won[0].release()
