"""Checkpoints inside a run: a real run.py killed with SIGKILL after its second evaluation and
relaunched ends with the uninterrupted run's record; the selected model, saved on request,
loads back in its own format and reproduces the selected point's scores."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import GLUE, cli, compose, last_line, launch, run_command, run_dirs

# 96 rows / batch 16 = 6 batches an epoch: the kill lands mid-epoch and the relaunch crosses epochs.
# MiniLM's dropout draws from the global torch RNG, LengthGroupedSampler from the loader's generator.
ARGS = ["model=minilm", "task=rte", "method=lora", "data.max_train_samples=96", "data.max_eval_samples=64",
        "data.max_seq_len=32", "trainer.batch_size=16", "trainer.eval_every_steps=4", "trainer.max_steps=16",
        "trainer.num_threads=1", "trainer.lr=5e-3", "trainer.lr_head=5e-3", "trainer.save_model=true",
        "trainer.progress=false"]
SAME = ("history", "selected", "sizes", "trainable_params", "metric", "metrics", "test_sets")


def command(results: Path, cache_dir: Path, tmp_path: Path) -> list[str]:
    return cli(*ARGS, *run_dirs(tmp_path, cache_dir, results))


def finish_run(cmd: list[str], cwd: Path) -> tuple[dict, str]:
    """The finished run's record and what it printed."""
    out = run_command(cmd, cwd, timeout=600).stdout
    line = last_line(out)
    assert line.startswith("record: "), out
    return json.loads(Path(line.removeprefix("record: ")).read_text()), out


def adapter_tensors(directory: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.needs_glue
def test_killed_run_continues_to_the_uninterrupted_record(tmp_path: Path, cache_dir: Path) -> None:
    """~60 s: three run.py processes of 16 LoRA steps on 96 real RTE rows."""
    reference, out = finish_run(command(tmp_path / "ref", cache_dir, tmp_path), tmp_path)
    assert reference["resumed_from_step"] is None and "continuing from step" not in out
    assert reference["selected"]["step"] != reference["history"][-1]["step"]  # the kept model is not the last

    cmd = command(tmp_path / "runs", cache_dir, tmp_path)
    proc = launch(cmd, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dirs = (tmp_path / "runs").glob("train/minilm/lora/rte/*.ckpt")
    deadline, state = time.monotonic() + 300, None
    try:
        while state is None or state["step"] < 8:  # the second evaluation's checkpoint
            assert proc.poll() is None, f"run ended before its second checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no second checkpoint within 300 s"
            time.sleep(0.02)
            files = [d / "state.pt" for d in (tmp_path / "runs").glob("train/minilm/lora/rte/*.ckpt")]
            if files and files[0].is_file():
                state = torch.load(files[0], weights_only=False)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    (ckpt,) = ckpt_dirs
    killed = torch.load(ckpt / "state.pt", weights_only=False)  # a later one may have landed
    killed_at = killed["step"]
    assert 8 <= killed_at < 16
    assert not list((tmp_path / "runs").glob("train/minilm/lora/rte/*.json"))  # killed: no record yet

    resumed, out = finish_run(cmd, tmp_path)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == killed_at
    assert f"\nresume:    continuing from step {killed_at}\n" in out  # the summary says so before training
    # the killed process's time up to its checkpoint counts in the run's wall time
    assert 0 < resumed["wall_time_before_resume_s"] == killed["elapsed_s"] < resumed["wall_time_s"]
    for key in SAME:
        assert resumed[key] == reference[key], key
    assert not ckpt.exists()  # removed once the record is written (trainer.checkpoint.keep=false)
    kept, ref_kept = adapter_tensors(resumed["saved_model"]), adapter_tensors(reference["saved_model"])
    assert kept.keys() == ref_kept.keys() and all(torch.equal(kept[k], ref_kept[k]) for k in kept)


def scores_of(model: torch.nn.Module, cfg, sets: list[str]) -> dict:
    """{set: {metric: value}} recomputed from a reloaded model."""
    from runners.data import loader, prepare
    from runners.models import build_tokenizer
    from runners.train import evaluate

    tokenizer = build_tokenizer(cfg.model)
    data, _ = prepare(cfg, tokenizer)
    return {name: evaluate(model, loader(data[name], tokenizer, cfg.trainer.eval_batch_size, False, False, cfg.seed),
                           list(cfg.task.metrics), torch.device("cpu"), "fp32")
            for name in sets}


@pytest.mark.slow
@pytest.mark.needs_glue
# qGOFT at 0.2 collapses to a constant output (Pearson 0, a tie the first point wins) within 16
# steps, so its best point comes before the last on any machine; at 0.1 the order was noise
@pytest.mark.parametrize(("method", "task", "lr"), [("lora", "rte", "5e-3"), ("qgoft", "stsb", "0.2")])
def test_saved_model_reproduces_the_selected_point(tmp_path: Path, cache_dir: Path, method: str, task: str,
                                                   lr: str) -> None:
    """~15 s each, in process: LoRA reloads as a PEFT adapter, qGOFT as merged full weights."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from runners import paths, record
    from runners.job import run_job
    from runners.models import build_model

    overrides = [a for a in ARGS if not a.startswith(("method=", "task=", "trainer.lr"))]
    cfg = compose(*overrides, f"method={method}", f"task={task}", f"trainer.lr={lr}", f"trainer.lr_head={lr}",
                  f"results_dir={tmp_path}",
                  f"data.cache_dir={cache_dir}", f"data.dir={GLUE}")
    ok = run_job(cfg)["status"] == "finished"
    rec = record.read(paths.record_path(cfg))
    assert ok and rec["saved_model"]
    selected = rec["selected"]
    assert selected["step"] != rec["history"][-1]["step"], "the test needs a best point before the last"
    saved = Path(rec["saved_model"])
    if (saved / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(build_model(cfg.model, cfg.task.num_labels), saved)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(saved)
    scores = scores_of(model, cfg, ["validation", *rec["test_sets"]])
    for name, values in selected["metrics"].items():
        assert scores[name] == pytest.approx(values, abs=1e-6), name


@pytest.mark.parametrize("method", ["lora", "vera", "boft", "ia3", "c3a", "qgoft", "goft", "bitfit", "full"])
def test_every_method_saves_a_model_that_loads_back(tmp_path: Path, method: str) -> None:
    """Adapted.save on trained-like state (every trainable tensor moved off its init), reloaded
    with PEFT (adapter methods, C3A) or transformers (merged weights): the same outputs."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from runners.job import adapted_model
    from runners.models import build_model

    cfg = compose("model=minilm", f"method={method}")
    adapted = adapted_model(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapted.method + adapted.method_no_decay + adapted.head:
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    saved = adapted.save(tmp_path / "model")
    if (saved / "adapter_config.json").is_file():
        loaded = PeftModel.from_pretrained(build_model(cfg.model, cfg.task.num_labels), saved)
    else:
        loaded = AutoModelForSequenceClassification.from_pretrained(saved)
    ids = torch.randint(1000, 5000, (2, 12), generator=gen)
    adapted.model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, adapted.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.needs_glue
def test_kept_checkpoint_stays_and_a_forced_rerun_starts_over(tmp_path: Path, cache_dir: Path) -> None:
    """~20 s, in process: trainer.checkpoint.keep=true leaves <record>.ckpt/ in place; force=true
    then trains from step 0 instead of continuing from it."""
    from runners import paths, record
    from runners.job import run_job
    from runners.paths import RunPaths

    quick = [a for a in ARGS if not a.startswith(("trainer.max_steps", "data.max_eval", "trainer.save_model"))]
    args = [*quick, "trainer.max_steps=8", "data.max_eval_samples=16", "trainer.checkpoint.keep=true",
            f"results_dir={tmp_path}", f"data.cache_dir={cache_dir}", f"data.dir={GLUE}"]
    cfg = compose(*args)
    run_job(cfg)
    path = paths.record_path(cfg)
    first = record.read(path)
    assert torch.load(RunPaths(path).checkpoint / "state.pt", weights_only=False)["step"] == 4
    run_job(compose(*args, "force=true"))
    again = record.read(path)
    assert again["started_at"] != first["started_at"] and again["resumed_from_step"] is None
    assert again["history"] == first["history"]


@pytest.mark.slow
@pytest.mark.needs_glue
def test_a_continued_run_records_the_code_of_each_segment(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    """~35 s, one run in process and two run.py processes of 8 LoRA steps: the checkpoint holds
    the code version that wrote it; a checkpoint from other code is refused with
    trainer.checkpoint.same_code=true (one error line, a failed record, the checkpoint kept)
    and continued by default, the record listing both code segments."""
    from runners import paths, record
    from runners.job import run_job
    from runners.paths import RunPaths

    quick = [a for a in ARGS if not a.startswith(("trainer.max_steps", "data.max_eval", "trainer.save_model"))]
    args = [*quick, "trainer.max_steps=8", "data.max_eval_samples=16", "trainer.checkpoint.keep=true"]
    cfg = compose(*args, f"results_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}", f"data.dir={GLUE}")
    assert run_job(cfg)["status"] == "finished"
    path = paths.record_path(cfg)
    first, state_file = record.read(path), RunPaths(path).checkpoint / "state.pt"
    state, now = torch.load(state_file, weights_only=False), first["code_version"]
    assert state["step"] == 4 and state["code_version"] == now
    assert first["code_segments"] == [{"code_version": now, "from_step": 0}]

    # as if another commit had trained the first 4 steps and the run had stopped there
    other = {"commit": "0123456789ab" + "0" * 28, "dirty": False}
    torch.save({**state, "code_version": other, "code_segments": [{"code_version": other, "from_step": 0}]},
               state_file)
    path.unlink()
    refused = run_cli(*args, "trainer.checkpoint.same_code=true", check=False)
    shown = "unknown" if now is None else now["commit"][:12] + (" (dirty)" if now["dirty"] else "")
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if line.startswith("error:")]
    assert refused.returncode == 1 and errors == [
        f"error: run failed: trainer.checkpoint.same_code=true: {state_file} was written by code 0123456789ab, "
        f"this is {shown}; the checkpoint is kept (trainer.checkpoint.same_code=false continues it)"]
    failed = record.read(path)
    assert failed["status"] == "failed" and errors[0].endswith(failed["reason"])
    assert torch.load(state_file, weights_only=False)["code_version"] == other  # kept as it was

    run_cli(*args)
    resumed = record.read(path)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == 4
    assert resumed["code_segments"] == [{"code_version": other, "from_step": 0}, {"code_version": now, "from_step": 4}]
    assert resumed["history"] == first["history"]
