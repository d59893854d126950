"""run.py end to end as a subprocess: records, skipping, bad input (slow: CI runs them)."""

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
def test_task_produces_a_record(run_cli, task: str, metric: str) -> None:
    rec = record_of(run_cli(f"task={task}", "method=lora", *QUICK))
    assert rec["status"] == "finished" and rec["metric"] == metric and rec["task"] == task
    assert rec["sizes"] == {"train": 64, "validation": 32, "test": 32}
    assert list(rec["baselines"]) == ["test"] and metric in rec["baselines"]["test"]  # values: test_learning
    assert rec["trainable_params"] == 73728  # LoRA r=8 on MiniLM's 6 x (query, value), 384 wide
    point = rec["history"][-1]
    assert point["step"] == 3 and set(point) >= {"epoch", "train_loss", "validation", "test"}
    assert rec["selected"] in rec["history"]
    assert rec["config"]["task"]["metric"] == metric and rec["environment"]["packages"]["torch"]
    assert rec["peak_memory_gb"] > 0 and rec["wall_time_s"] > 0
    assert rec["overrides"][:2 + len(QUICK)] == [f"task={task}", "method=lora", *QUICK]  # hydra.* excluded
    commit = rec["code_version"]["commit"]  # a commit of this checkout
    assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT).returncode == 0
    assert isinstance(rec["code_version"]["dirty"], bool)


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
    assert list(shown) == [*UNLOADED, "trainable", "data", "steps", "record"]
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


def test_same_seed_same_metrics(run_cli, tmp_path: Path) -> None:
    a = record_of(run_cli("task=mrpc", "method=lora", *QUICK))
    b = record_of(run_cli("task=mrpc", "method=lora", "force=true", *QUICK))
    assert a["history"] == b["history"]


@pytest.mark.parametrize(("group", "value", "allowed"), [("task", "mnlx", "rte"), ("method", "lorax", "bitfit"),
                                                          ("model", "gpt5", "roberta-base")])
def test_unknown_choice_lists_allowed_values(run_cli, group: str, value: str, allowed: str) -> None:
    proc = run_cli(f"{group}={value}", "mode=count", check=False)
    assert proc.returncode != 0
    assert f"Could not find '{group}/{value}'" in proc.stderr and allowed in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_dir_is_named(run_cli, tmp_path: Path) -> None:
    proc = run_cli("task=rte", f"data.dir={tmp_path}/no_glue", *QUICK, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr) == f"error: GLUE data directory not found: {tmp_path}/no_glue " \
                                      "(set data.dir=PATH or GLUE_DIR)"


def test_malformed_tsv_names_file_and_line(run_cli, tmp_path: Path, glue_dir: Path) -> None:
    bad = tmp_path / "glue" / "RTE"
    bad.mkdir(parents=True)
    lines = (glue_dir / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (bad / "train.tsv").write_text("\n".join(lines[:40] + ["41\tno label here"] + lines[40:]) + "\n")
    (bad / "dev.tsv").write_text((glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8"))
    proc = run_cli("task=rte", f"data.dir={tmp_path / 'glue'}", *QUICK, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: {bad / 'train.tsv'} line 41: expected 4 tab-separated fields, got 2" in proc.stderr


def test_non_finite_loss_is_recorded_as_failed(run_cli) -> None:
    proc = run_cli("task=rte", "method=full", "trainer.lr=1e30", "trainer.lr_head=1e30", *QUICK, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    rec = record_of(proc)
    assert rec["status"] == "failed" and "non-finite training loss" in rec["reason"]
    assert "error: run failed: non-finite training loss" in proc.stdout


def test_bad_option_value_lists_allowed(run_cli) -> None:
    proc = run_cli("mode=fly", check=False)
    assert proc.returncode != 0 and "error: mode='fly'; allowed: train, count, memory, identity" in proc.stderr


# 96 rows / batch 16, evaluated every 2 steps for 8 steps: 4 points. RTE's validation accuracy at this
# learning rate is 46.9, 54.7, 53.1, 54.7 (CPU, one thread, deterministic): the best is tied between
# the second and the last point, so "the last point" and "the last of the best" are both wrong answers.
SELECT = ["task=rte", "method=lora", "data.max_train_samples=96", "data.max_eval_samples=64", "data.max_seq_len=32",
          "trainer.batch_size=16", "trainer.eval_every_steps=2", "trainer.max_steps=8", "trainer.num_threads=1",
          "trainer.lr=5e-3", "trainer.lr_head=5e-3"]


def test_selected_is_the_first_best_validation_point(run_cli) -> None:
    """runners/train.py selects the point of highest validation score, the first one on ties."""
    rec = record_of(run_cli(*SELECT))
    history = rec["history"]
    assert [p["step"] for p in history] == [2, 4, 6, 8]
    scores = [p["validation"] for p in history]
    best = scores.index(max(scores))  # list.index: the first of equal maxima
    assert rec["selected"] == history[best], (scores, rec["selected"]["step"])
    # the setting must tell the rule from "last point" and from "last of the best" for the test to mean anything
    assert best != len(history) - 1 and scores.count(max(scores)) > 1, f"setting no longer discriminates: {scores}"
