"""The run lock (runners/lock.py): refused while its owner lives, taken over when stale, refreshed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import cli, last_line, launch, run_dirs
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


# A run suspended past stale_after_s (SIGSTOP, SLURM suspend, a paused VM) and taken over.

def test_refresh_never_touches_a_lock_taken_over(tmp_path: Path) -> None:
    """<1 s: a lock now holding another token keeps its age; the old owner learns it lost."""
    path = tmp_path / "run.json.lock"
    lock = RunLock(path, stale_after_s=600, refresh_s=0.05)
    assert lock.acquire()
    plant(path, "elsewhere.cluster", 1, age_s=700)  # taken over while we slept; its owner hung too
    time.sleep(0.5)  # ten refresh periods
    assert path.stat().st_mtime < time.time() - 600, "the old owner refreshed the new owner's lock"
    from runners.lock import LockLost

    with pytest.raises(LockLost, match=f"lost the lock {path}: it is now held by elsewhere.cluster pid 1"):
        lock.check()
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"


def test_release_never_removes_a_lock_taken_over_meanwhile(tmp_path: Path, monkeypatch) -> None:
    """<1 s: another worker takes the lock over right after release has read it (still ours):
    release must leave the new owner's lock in place."""
    path = tmp_path / "run.json.lock"
    lock = RunLock(path, refresh_s=60)
    assert lock.acquire()
    read = RunLock.read

    def read_then_taken_over(self: RunLock, *args) -> dict | None:
        owner = read(self, *args)
        if not args and (owner or {}).get("token") == self.owner["token"]:
            plant(path, "elsewhere.cluster", 1)  # the takeover lands between the read and the removal
        return owner

    monkeypatch.setattr(RunLock, "read", read_then_taken_over)
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no private copy left behind


def test_release_still_removes_its_own_lock(tmp_path: Path) -> None:
    path = tmp_path / "run.json.lock"
    lock = RunLock(path, refresh_s=60)
    assert lock.acquire()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def lock_args(results: Path, cache_dir: Path, tmp_path: Path) -> list[str]:
    return cli("model=minilm", "task=rte", "method=lora", "data.max_train_samples=64", "data.max_eval_samples=16",
               "data.max_seq_len=32", "trainer.batch_size=8", "trainer.eval_every_steps=4", "trainer.max_steps=8",
               "trainer.num_threads=1", "trainer.lr=5e-3", "trainer.lr_head=5e-3", "lock.stale_after_s=2",
               "lock.refresh_s=0.2", *run_dirs(tmp_path, cache_dir, results))


def wait_for(what: str, done, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert proc.poll() is None, f"run.py ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.needs_glue
def test_a_run_suspended_past_its_lock_stops_when_it_wakes(tmp_path: Path, cache_dir: Path) -> None:
    """~30 s (65 s on a busy 2-core machine), three run.py processes of 8 LoRA steps on 64 RTE rows: the first is
    SIGSTOPped after its first checkpoint until its lock goes stale; a second takes the run
    over and continues it; the first, woken while the second trains, exits 1 with one error
    line and writes nothing; the one record equals an uninterrupted run's."""
    from test_resume import SAME, finish_run

    reference, _ = finish_run(lock_args(tmp_path / "ref", cache_dir, tmp_path), tmp_path)
    runs = tmp_path / "runs"
    cmd = lock_args(runs, cache_dir, tmp_path)
    run_dir = runs / "train" / "minilm" / "lora" / "rte"
    first = launch(cmd, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        wait_for("a checkpoint", lambda: any(run_dir.glob("*.ckpt/state.pt")), first)
        first.send_signal(signal.SIGSTOP)
        (lock,) = run_dir.glob("*.lock")
        while time.time() - lock.stat().st_mtime < 2.5:  # stale by age (its pid is alive: stopped)
            time.sleep(0.05)
        second = launch(cmd, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for("the takeover", lambda: (RunLock(lock).read() or {}).get("pid") == second.pid, second)
        first.send_signal(signal.SIGCONT)  # the second is loading its data and model: far from done
        out, err = first.communicate(timeout=120)
        assert first.returncode == 1, f"the woken run went on:\n{out}\n{err}"
        assert not re.search(r"^record: \S", out, re.M), f"the woken run wrote a record:\n{out}"  # its closing line
        errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: lost the lock {lock}: it is now held by "
                                                         f"{socket.gethostname()} pid {second.pid} since "), errors
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, f"{out}\n{err}"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.communicate()
    (path,) = run_dir.glob("*.json")  # exactly one record
    assert last_line(out) == f"record: {path}"
    resumed = json.loads(path.read_text())
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == 4  # the first's checkpoint
    for key in SAME:
        assert resumed[key] == reference[key], key
    assert sorted(p.name for p in run_dir.iterdir()) == [path.name]  # no lock, checkpoint or private copy left
