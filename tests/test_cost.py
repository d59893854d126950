"""A plan's hours (docs/cost.md): `estimate` against a hand computation on a synthetic calibration,
the length-grouped batches against transformers' sampler, `plan --calibration` and `--json`, the
unknown-calibration error, matching a device, and `runners.calibrate` on a tiny random BERT.
Cost (2-core CPU shared with other work): the calibration 5.5 s, the plan 3 s, the rest under 1 s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers.trainer_pt_utils import LengthGroupedSampler

from conftest import GLUE, NO_GLUE, compose
from runners import calibrate, lengths, summary
from runners.analysis import plan
from runners.cost import estimate, load_calibration, matching_calibration
from runners.errors import HarnessError

TRAIN = [{"batch": 32, "length": 8, "seconds": 1.0}, {"batch": 32, "length": 16, "seconds": 2.0},
         {"batch": 32, "length": 128, "seconds": 30.0}, {"batch": 8, "length": 16, "seconds": 99.0}]
EVAL = [{"batch": 64, "length": 8, "seconds": 0.2}, {"batch": 64, "length": 64, "seconds": 1.3}]


def synthetic(name: str = "synthetic", concurrency: int = 2, **head) -> dict:
    return {"name": name, "device": "Some CPU", "threads": 1, "concurrency": concurrency, "precision": "fp32", **head,
            "entries": [{"model": "minilm", "method": "lora", "build_s": 5.0, "train": TRAIN, "eval": EVAL}]}


@pytest.fixture
def flat_rte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RTE's length statistics replaced: every train row 20 tokens, every test row 30."""
    stats = {"splits": {"train": {"rows": 2490, "percentiles": [20] * 101},
                        "test": {"rows": 277, "percentiles": [30] * 101}}}
    (tmp_path / "rte.yaml").write_text(yaml.safe_dump(stats))
    monkeypatch.setattr(lengths, "STATS", tmp_path)
    monkeypatch.setattr(lengths, "_CACHE", {})


def test_estimate_is_the_hand_computation(flat_rte: None) -> None:
    cfg = compose("task=rte", "method=lora", "data.dir=null", "trainer.epochs=2", "trainer.batch_size=32",
                  "trainer.eval_batch_size=64", "data.max_seq_len=128")
    train_rows, val_rows, test_rows = 2490 - 249, 249, 277  # the protocol carves 10% as validation
    per_train_batch = 2.0 + (20 - 16) * (30.0 - 2.0) / (128 - 16)  # linear between 16 and 128 tokens: 3.0 s
    train = 2 * per_train_batch * train_rows / 32  # the last batch of an epoch has 1 row: rows / 32 of a batch
    per_eval = 0.2 + (20 - 8) * 1.1 / 56, 0.2 + (30 - 8) * 1.1 / 56  # validation (train's lengths), test
    evaluation = 2 * (per_eval[0] * val_rows / 64 + per_eval[1] * test_rows / 64)  # one point per epoch
    assert estimate(cfg, synthetic()) == pytest.approx(5.0 + train + evaluation, rel=1e-9)

    cfg.trainer.max_steps, cfg.trainer.eval_every_steps = 100, 30  # points at 30, 60, 90 and 100
    steps = math.ceil(train_rows / 32)
    train = per_train_batch * train_rows / 32 * 100 / steps
    evaluation = 4 * (per_eval[0] * val_rows / 64 + per_eval[1] * test_rows / 64)
    assert estimate(cfg, synthetic()) == pytest.approx(5.0 + train + evaluation, rel=1e-9)

    cfg.data.max_seq_len = 16  # truncation: every row at 16 tokens
    train = 2.0 * train_rows / 32 * 100 / steps
    evaluation = 4 * (0.2 + 8 * 1.1 / 56) * (val_rows + test_rows) / 64
    assert estimate(cfg, synthetic()) == pytest.approx(5.0 + train + evaluation, rel=1e-9)

    cfg.data.max_seq_len, cfg.trainer.compile, cfg.trainer.compile_bucket = 128, True, 64  # the loader pads to 64
    train = (2.0 + (64 - 16) * 28.0 / 112) * train_rows / 32 * 100 / steps  # 20-token batches padded to 64: 14 s
    evaluation = 4 * (per_eval[0] * val_rows / 64 + per_eval[1] * test_rows / 64)  # evaluation stays eager, unpadded
    compiled = synthetic()
    compiled["entries"][0]["step"] = {"grad_accum_steps": 1, "gradient_checkpointing": False, "compile": True}
    assert estimate(cfg, compiled) == pytest.approx(5.0 + train + evaluation, rel=1e-9)


def test_batches_longer_than_the_calibration_measured_are_refused(flat_rte: None) -> None:
    """A guess past the longest measured length is not an estimate: one error naming the fix."""
    cfg = compose("task=rte", "method=lora", "data.dir=null", "data.max_seq_len=128")
    short = synthetic()
    short["entries"][0]["eval"] = [EVAL[0], {"batch": 64, "length": 16, "seconds": 0.4}]
    with pytest.raises(HarnessError, match="measured minilm/lora eval batches up to 16 tokens, this run pads them "
                                           "up to 20; calibrate its runs: python -m runners.calibrate synthetic "
                                           "model=minilm method=lora task=rte"):
        estimate(cfg, short)


def test_length_grouped_batches_pad_as_transformers_sampler_does() -> None:
    lens = np.random.default_rng(1).lognormal(3.5, 0.6, 5000).astype(int) + 3
    rows, padded = lengths.padded(lens, 32, True, True)
    assert rows.sum() == 5000 and len(rows) == math.ceil(5000 / 32)
    order = list(LengthGroupedSampler(32, lengths=lens.tolist(), generator=torch.Generator().manual_seed(0)))
    theirs = sum(max(lens[order[i:i + 32]]) * len(order[i:i + 32]) for i in range(0, 5000, 32))
    assert float(np.sum(padded * rows)) == pytest.approx(theirs, rel=0.02)  # another shuffle: close, not equal
    shuffled = lengths.padded(lens, 32, False, True)
    assert np.sum(padded * rows) < 0.8 * np.sum(shuffled[0] * shuffled[1])  # grouping pads much less


def test_plan_hours_last_line_and_json(flat_rte: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(synthetic()))
    out = tmp_path / "cells.json"
    args = ["minilm_glue", "task=rte", "method=lora", "data.dir=null"]
    assert plan.main([*args, "--calibration", str(path), "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cfg = compose("+plan=minilm_glue", "task=rte", "method=lora", "data.dir=null")
    hours = 3 * estimate(cfg, synthetic()) / 3600  # three seeds, the same estimate
    examples = 3 * 2 * (2490 - 249)
    assert lines[-1] == (f"runs: 3, examples: {examples}, hours: {hours:.2f}, elapsed: {hours / 2:.2f} "
                         "(synthetic, 2 at once)")
    cells = json.loads(out.read_text())
    assert len(cells) == 1 and cells[0].pop("hours") == pytest.approx(hours)
    assert cells[0] == {"model": "minilm", "method": "lora", "task": "rte", "runs": 3, "examples": examples}

    assert plan.main(args) == 0  # without a calibration: as before, and how to calibrate
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"runs: 3, examples: {examples}"
    assert lines[-2].startswith("hours: add --calibration NAME") and "python -m runners.calibrate NAME" in lines[-2]


def test_unknown_calibration_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert plan.main(["minilm_glue", "task=rte", "--calibration", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: calibration 'nope' not found")
    assert "calibrations: cpu" in err[0]  # the committed one is listed


def test_a_step_measured_otherwise_is_not_the_runs(flat_rte: None) -> None:
    """Accumulation, checkpointing and compile change what a step costs: an entry prices only
    runs at the settings it was measured at (an entry without them was measured at the defaults)."""
    cfg = compose("task=rte", "method=lora", "data.dir=null", "data.max_seq_len=128", "trainer.grad_accum_steps=2")
    with pytest.raises(HarnessError, match="has no minilm/lora trainer.grad_accum_steps=2 .*calibrate it: python -m "
                                           "runners.calibrate synthetic model=minilm method=lora "
                                           "trainer.grad_accum_steps=2"):
        estimate(cfg, synthetic())
    accumulated = synthetic()
    accumulated["entries"][0]["step"] = {"grad_accum_steps": 2, "gradient_checkpointing": False, "compile": False}
    assert estimate(cfg, accumulated) == estimate(compose("task=rte", "method=lora", "data.dir=null",
                                                          "data.max_seq_len=128"), synthetic())


def test_matching_calibration_by_device_and_threads(tmp_path: Path) -> None:
    for name, device, threads in (("a", "CPU X", 1), ("b", "CPU X", 2), ("c", "GPU Y", 2)):
        (tmp_path / f"{name}.json").write_text(json.dumps(synthetic(name, device=device, threads=threads)))
    assert matching_calibration("CPU X", 2, tmp_path)["name"] == "b"
    assert matching_calibration("GPU Y", 2, tmp_path)["name"] == "c"
    assert matching_calibration("CPU X", 4, tmp_path) is None


def test_calibrate_a_tiny_bert(tmp_path: Path) -> None:
    tiny = "{model_type: bert, vocab_size: 30522, hidden_size: 32, num_hidden_layers: 2, " \
           "num_attention_heads: 2, intermediate_size: 64}"
    data = f"data.dir={GLUE}" if NO_GLUE is None else "data.dir=null"  # no data: the statistics, no preparation
    assert calibrate.main(["tiny", "model=minilm", "model.pretrained=false", "model.num_layers=2",
                           f"model.config={tiny}", "method=lora", "task=rte", data, "data.max_seq_len=32",
                           "data.max_train_samples=64", "data.max_eval_samples=64", f"data.cache_dir={tmp_path}",
                           "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.num_threads=1",
                           "--steps", "1", "--out", str(tmp_path)]) == 0
    cal = load_calibration("tiny", tmp_path)
    assert {k: cal[k] for k in ("name", "device", "threads", "concurrency", "precision")} == {
        "name": "tiny", "device": summary.device_name(torch.device("cpu")), "threads": 1, "concurrency": 1,
        "precision": "fp32"}
    (entry,) = cal["entries"]
    assert (entry["model"], entry["method"]) == ("minilm", "lora") and entry["build_s"] > 0
    assert entry["step"] == {"grad_accum_steps": 1, "gradient_checkpointing": False, "compile": False}
    for kind, batch in (("train", 8), ("eval", 16)):
        points = entry[kind]
        assert {p["batch"] for p in points} == {batch} and all(p["seconds"] > 0 for p in points)
        assert [p["length"] for p in points] == sorted({p["length"] for p in points})
        assert points[-1]["length"] == 32  # RTE's longest batches are truncated at max_seq_len
    (prep,) = cal["prepare"]
    assert prep["task"] == "rte" and (("cold_s" in prep) == (NO_GLUE is None))
    cfg = compose("task=rte", "method=lora", data, "data.max_seq_len=32", "trainer.batch_size=8",
                  "trainer.eval_batch_size=16")
    assert estimate(cfg, cal) > 0
    # a run on this device at this thread count prints the estimate in its summary; another does not
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert summary.estimate(cfg, torch.device("cpu"), tmp_path) == (estimate(cfg, cal), "tiny, 1 at once")
        assert summary.estimate(compose("task=rte", "method=c3a_b6"), torch.device("cpu"), tmp_path) is None
    finally:
        torch.set_num_threads(threads)
    if threads != 1:
        assert summary.estimate(cfg, torch.device("cpu"), tmp_path) is None


def test_a_calibration_cut_short_keeps_what_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is written after each (model, method): killed at its budget (here: the second
    method fails), a calibration still holds the first method's entry."""
    measure = calibrate.measure

    def first_only(item: dict, *args) -> dict:
        if item["config"]["method"]["name"] != "lora":
            raise RuntimeError("cut off")
        return measure(item, *args)

    monkeypatch.setattr(calibrate, "measure", first_only)
    tiny = "{model_type: bert, vocab_size: 30522, hidden_size: 32, num_hidden_layers: 2, " \
           "num_attention_heads: 2, intermediate_size: 64}"
    with pytest.raises(RuntimeError, match="cut off"):
        calibrate.main(["cut", "model=minilm", "model.pretrained=false", "model.num_layers=2", f"model.config={tiny}",
                        "method=lora,bitfit", "task=rte", "data.dir=null", "data.max_seq_len=32",
                        "data.max_train_samples=64", "data.max_eval_samples=64", "trainer.num_threads=1",
                        "--steps", "1", "--out", str(tmp_path)])
    assert [e["method"] for e in load_calibration("cut", tmp_path)["entries"]] == ["lora"]
