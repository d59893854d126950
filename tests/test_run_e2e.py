"""A job end to end: records, skipping, bad input; in process, and through run.py where the CLI is
the point (the record path printed last, one error line and the exit code per kind of failure)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, last_line

pytestmark = pytest.mark.slow
QUICK = ["trainer.max_steps=3", "trainer.batch_size=8", "data.max_train_samples=64", "data.max_eval_samples=32",
         "data.max_seq_len=64"]


def record_of(proc) -> dict:
    line = last_line(proc.stdout)
    assert line.startswith("record: "), proc.stdout
    return json.loads(Path(line.removeprefix("record: ")).read_text())


@pytest.mark.parametrize(("task", "metric"), [("rte", "accuracy"), ("mrpc", "accuracy"),
                                              ("cola", "matthews_correlation"), ("stsb", "pearson")])
def test_task_produces_a_record(job, task: str, metric: str) -> None:
    run = job(f"task={task}", "method=lora", *QUICK)
    assert last_line(run.out) == f"record: {run.result['record']}"
    rec = run.record
    assert rec["status"] == "finished" and rec["metric"] == metric and rec["task"] == task
    assert rec["sizes"] == {"train": 64, "validation": 32, "test": 32}
    assert list(rec["baselines"]) == ["test"] and metric in rec["baselines"]["test"]  # values: test_learning
    assert rec["trainable_params"] == 73728  # LoRA r=8 on MiniLM's 6 x (query, value), 384 wide
    point = rec["history"][-1]
    assert point["step"] == 3 and set(point) >= {"epoch", "train_loss", "validation", "test"}
    assert rec["selected"] in rec["history"]
    assert rec["config"]["task"]["metric"] == metric and rec["environment"]["packages"]["torch"]
    assert rec["wall_time_s"] > 0 and rec["peak_memory_kind"]  # the peak itself: the first job of a process


UNLOADED = ["model", "method", "task", "training", "device"]  # the summary's lines that need neither data nor model


def summary(lines: list[str]) -> dict[str, str]:
    """The start-of-run summary block at the top of `lines`, {label: value}: its values start in
    one column, after the widest label (`trainable: `)."""
    matches = map(re.compile(r"([a-z]+): +(\S.*)").fullmatch, lines)
    return {m[1]: m[2] for m in itertools.takewhile(lambda m: m and m.start(2) == len("trainable: "), matches)}


def test_finished_run_is_skipped_unless_forced(run_cli) -> None:
    """Also the summary: printed before the progress bar (with it on, stderr merged), `record:` last;
    a finished run is skipped before data or model load, its summary without their lines."""
    proc = run_cli("task=rte", "method=bitfit", *QUICK, progress=True)
    first, lines = record_of(proc), proc.stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model:"))
    shown = summary(lines[start:])
    # `estimate` where a calibration of this device and thread count has this model and method
    assert [k for k in shown if k != "estimate"] == [*UNLOADED, "trainable", "data", "steps", "record"]
    bar = next(i for i, line in enumerate(lines) if "bitfit/rte:" in line)  # tqdm's desc: method/task
    assert start + len(shown) <= bar and lines[-1] == f"record: {shown['record']}"
    assert shown["trainable"].startswith(f"{first['trainable_params']:,} parameters")
    assert shown["data"].startswith(" / ".join(f"{split} {n}" for split, n in first["sizes"].items()))
    history = first["history"]
    assert re.match(rf"{history[-1]['step']} .*, {len(history)} evaluation points? ", shown["steps"])

    again = run_cli("task=rte", "method=bitfit", *QUICK)
    assert record_of(again) == first
    lines = again.stdout.strip().splitlines()
    assert list(summary(lines)) == UNLOADED and lines[len(UNLOADED):] == [
        "skipped: an identical finished run exists (force=true re-runs it)", f"record: {shown['record']}"]
    forced = record_of(run_cli("task=rte", "method=bitfit", "force=true", *QUICK))
    assert forced["started_at"] != first["started_at"]


def test_same_seed_same_metrics_and_the_record_of_run_py(run_cli) -> None:
    """Two run.py processes with one seed give the same history; the record path is printed
    last and the record keeps the command line (hydra.* excluded) and this checkout's commit."""
    a = record_of(run_cli("task=mrpc", "method=lora", *QUICK))
    b = record_of(run_cli("task=mrpc", "method=lora", "force=true", *QUICK))
    assert a["history"] == b["history"]
    assert a["peak_memory_gb"] > 0  # the process's first job: a valid CPU peak
    assert a["overrides"][:2 + len(QUICK)] == ["task=mrpc", "method=lora", *QUICK]  # hydra.* excluded
    commit = a["code_version"]["commit"]  # a commit of this checkout
    assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT).returncode == 0
    assert isinstance(a["code_version"]["dirty"], bool)


def test_unknown_choice_lists_allowed_values(run_cli) -> None:
    """A config group's unknown value through run.py: exit 1, no traceback, the value and every allowed one named."""
    proc = run_cli("task=mnlx", "mode=count", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    allowed = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
    assert "mnlx" in proc.stderr and all(name in proc.stderr for name in allowed), proc.stderr


def test_missing_data_dir_is_named(job, tmp_path: Path) -> None:
    run = job("task=rte", f"data.dir={tmp_path}/no_glue", *QUICK)
    assert run.result["status"] == "failed" and "Traceback" not in run.err
    assert run.errors == [f"error: GLUE data directory not found: {tmp_path}/no_glue (set data.dir=PATH or GLUE_DIR)"]
    assert run.record["reason"] == run.errors[0].removeprefix("error: ")


def test_malformed_tsv_names_file_and_line(run_cli, tmp_path: Path, glue_dir: Path) -> None:
    """The CLI contract for a data error."""
    bad = tmp_path / "glue" / "RTE"
    bad.mkdir(parents=True)
    lines = (glue_dir / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (bad / "train.tsv").write_text("\n".join(lines[:40] + ["41\tno label here"] + lines[40:]) + "\n")
    (bad / "dev.tsv").write_text((glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8"))
    proc = run_cli("task=rte", f"data.dir={tmp_path / 'glue'}", *QUICK, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: {bad / 'train.tsv'} line 41: expected 4 tab-separated fields, got 2" in proc.stderr


def test_non_finite_loss_is_recorded_as_failed(run_cli) -> None:
    """The CLI contract for a failure in training."""
    proc = run_cli("task=rte", "method=full", "trainer.lr=1e30", "trainer.lr_head=1e30", *QUICK, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    rec = record_of(proc)
    assert rec["status"] == "failed" and "non-finite training loss" in rec["reason"]
    assert "error: run failed: non-finite training loss" in proc.stdout


def test_bad_option_value_lists_allowed(job) -> None:
    run = job("mode=fly")
    assert run.result["status"] == "failed" and "Traceback" not in run.err
    assert run.errors == ["error: mode='fly'; allowed: train, count, memory, identity"]


# 96 rows / batch 16, evaluated every 2 steps for 8 steps: 4 points. RTE's validation accuracy at this
# learning rate is 46.9, 54.7, 53.1, 54.7 (CPU, one thread, deterministic): the best is tied between
# the second and the last point, so "the last point" and "the last of the best" are both wrong answers.
SELECT = ["task=rte", "method=lora", "data.max_train_samples=96", "data.max_eval_samples=64", "data.max_seq_len=32",
          "trainer.batch_size=16", "trainer.eval_every_steps=2", "trainer.max_steps=8", "trainer.num_threads=1",
          "trainer.lr=5e-3", "trainer.lr_head=5e-3"]


def test_selected_is_the_first_best_validation_point(job) -> None:
    """runners/train.py selects the point of highest validation score, the first one on ties."""
    rec = job(*SELECT).record
    history = rec["history"]
    assert [p["step"] for p in history] == [2, 4, 6, 8]
    scores = [p["validation"] for p in history]
    best = scores.index(max(scores))  # list.index: the first of equal maxima
    assert rec["selected"] == history[best], (scores, rec["selected"]["step"])
    # the setting must tell the rule from "last point" and from "last of the best" for the test to mean anything
    assert best != len(history) - 1 and scores.count(max(scores)) > 1, f"setting no longer discriminates: {scores}"
