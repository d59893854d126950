"""The measurements of benchmarks/device_check.sh that are not a command of their own; each
prints one line `WHAT {json}` and writes it to --out.

    python benchmarks/device_check.py syncs  --work DIR [--smoke]   # host syncs in the step
    python benchmarks/device_check.py ratios --work DIR [--smoke]   # step time per method / LoRA
    python benchmarks/device_check.py concurrency --work DIR --jobs 1 2 4 [--smoke]
    python benchmarks/device_check.py resume --work DIR [--smoke]   # kill, relaunch, compare

On CUDA the model is the named one with random weights (model.pretrained=false); `--smoke`
makes every measurement tiny (2-layer RoBERTa, short inputs, few steps) so the whole check
runs on a CPU in seconds: it proves the code paths, not the speed.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["model.config.num_hidden_layers=2", "model.config.hidden_size=48",
        "model.config.num_attention_heads=2", "model.config.intermediate_size=96"]
# the paper's tables' methods, for the step-time ratios: (method, its reference)
RATIOS = {"c3a_b1": "lora", "c3a_b6": "lora", "qgoft": "lora_r2"}
SAME = ("history", "selected", "sizes", "trainable_params", "metric", "metrics", "test_sets")


def step_of(method: str, smoke: bool, precision: str):
    """The runner's step (runners.train.Step) for roberta-base, random weights, `method`."""
    from runners.job import adapted_model, device_of
    from runners.sweep import selected_configs
    from runners.train import Step

    (cfg,) = selected_configs(None, ["model=roberta-base", "model.pretrained=false", f"method={method}", "task=rte",
                                     f"trainer.precision={precision}", *(TINY if smoke else [])])
    device = device_of(cfg)
    adapted = adapted_model(cfg)
    adapted.model.to(device).train()
    return Step.of(adapted, cfg.trainer, device, 10**6), adapted.model.config.vocab_size, device


def batch(vocab: int, size: int, length: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    b = {"input_ids": torch.randint(3, vocab, (size, length), generator=gen),
         "attention_mask": torch.ones(size, length, dtype=torch.long), "labels": torch.zeros(size, dtype=torch.long)}
    return {k: v.pin_memory() for k, v in b.items()} if __import__("torch").cuda.is_available() else b


def keep(args: argparse.Namespace, what: str, result: dict) -> None:
    """Write what is measured so far: a section cut off at its budget still leaves its first parts."""
    (args.work / f"{what}.json").write_text(json.dumps({**result, "partial": True}, indent=1, default=str))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def syncs(args: argparse.Namespace) -> dict:
    """Steps under torch.cuda.set_sync_debug_mode("warn"): every host sync in the step (an
    .item(), a pageable copy, a data-dependent shape, in this code or in transformers') is a
    warning, counted with its first message. CPU: not measurable (the steps still run)."""
    import warnings

    import torch

    out = {}
    for method in ("lora", "c3a_b6", "qgoft"):
        for precision in ("bf16",) if args.smoke else ("fp32", "bf16"):
            step, vocab, device = step_of(method, args.smoke, precision)
            b = batch(vocab, 4 if args.smoke else 32, 32 if args.smoke else 128)
            step(b)  # warm-up: lazy initialisation (cuBLAS handles, optimizer state) may sync once
            sync(device)
            if device.type != "cuda":
                step(b)
                out[f"{method}/{precision}"] = "not measurable on cpu (ran)"
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(3):
                        step(b)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            found = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
            out[f"{method}/{precision}"] = {"host_syncs_in_3_steps": len(found), "first": found[:1]}
            keep(args, "syncs", out)
    return out


def ratios(args: argparse.Namespace) -> dict:
    """Step time of each method over its reference, at the paper's 64 x 256, interleaved round
    by round (median of per-round ratios), fp32 and bf16."""
    size, length, rounds = (4, 32, 2) if args.smoke else (64, 256, 10)
    out = {}
    for precision in ("fp32",) if args.smoke else ("fp32", "bf16"):
        steps, times = {}, {}
        for method in {*RATIOS, *RATIOS.values()}:
            step, vocab, device = step_of(method, args.smoke, precision)
            b = batch(vocab, size, length)
            step(b)
            step(b)
            steps[method], times[method] = (step, b), []
        for _ in range(rounds):
            for method, (step, b) in steps.items():
                sync(device)
                start = time.perf_counter()
                step(b)
                sync(device)
                times[method].append(time.perf_counter() - start)
        out[precision] = {
            "step_ms": {m: 1000 * statistics.median(t) for m, t in times.items()},
            **{f"{m}/{ref}": statistics.median(a / b for a, b in zip(times[m], times[ref]))
               for m, ref in RATIOS.items()},
        }
        del steps
        keep(args, "ratios", {"batch": size, "length": length, "rounds": rounds, **out})
    return {"batch": size, "length": length, "rounds": rounds, **out}


def run_py(*overrides: str, results: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *overrides, f"results_dir={results}", "trainer.progress=false",
            f"hydra.run.dir={results / 'hydra'}"]


def record_of(stdout: str) -> dict:
    line = stdout.strip().splitlines()[-1]
    if not line.startswith("record: "):
        raise RuntimeError(f"no record: {stdout[-2000:]}")
    return json.loads(Path(line.removeprefix("record: ")).read_text())


def concurrency(args: argparse.Namespace) -> dict:
    """N MRPC-size jobs at once (one epoch of MRPC, roberta-base random weights, LoRA, batch 32,
    MiniLM's tokenizer as a proxy for RoBERTa's; each with a 1/N share of the GPU's memory):
    aggregate training examples/s over the span from the first job's start to the last one's end
    (records' started_at/finished_at: after data preparation, evaluation included)."""
    from datetime import datetime

    from runners.config import minilm_path

    work = args.work / "runs"
    # MiniLM's tokenizer marks a pair's second sentence with token type 1: RoBERTa gets a second type
    model = ["model=roberta-base", "model.pretrained=false", f"model.local_dir={minilm_path()}",
             "model.config.type_vocab_size=2", *(TINY if args.smoke else [])]
    sizes = ["data.max_train_samples=64", "data.max_eval_samples=32", "data.max_seq_len=64"] if args.smoke else []
    out = {}
    for n in args.jobs:
        procs = [subprocess.Popen(run_py("task=mrpc", "method=lora", *model, *sizes, "trainer.epochs=1",
                                         "trainer.batch_size=32", f"seed={i}", "trainer.checkpoint.enabled=false",
                                         f"trainer.gpu_memory_fraction={0.95 / n:.3f}",
                                         results=work / f"concurrency{n}"),
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(n)]
        recs = [record_of(p.communicate()[0]) for p in procs]
        start = min(datetime.fromisoformat(r["started_at"]) for r in recs)
        end = max(datetime.fromisoformat(r["finished_at"]) for r in recs)
        examples = sum(r["history"][-1]["step"] * 32 for r in recs)
        out[n] = {"examples_per_s": examples / (end - start).total_seconds(), "span_s": (end - start).total_seconds(),
                  "wall_time_s": [r["wall_time_s"] for r in recs],
                  "peak_memory_gb": [r.get("peak_memory_gb") for r in recs]}
        keep(args, "concurrency", {"jobs": out})
    one = out[args.jobs[0]]["examples_per_s"]
    return {"jobs": out, "speedup": {n: v["examples_per_s"] / one for n, v in out.items()}}


def resume(args: argparse.Namespace) -> dict:
    """The offline MiniLM (pretrained) on RTE, killed (SIGKILL) after its second checkpoint and
    relaunched, against the same run uninterrupted, both on deterministic kernels; records
    compared key by key."""
    work = args.work / "runs"
    sizes = ["data.max_train_samples=96", "data.max_eval_samples=32", "data.max_seq_len=32", "trainer.max_steps=12",
             "trainer.eval_every_steps=4", "trainer.batch_size=16"] if args.smoke else [
             "data.max_seq_len=128", "trainer.max_steps=120", "trainer.eval_every_steps=40",
             "trainer.batch_size=32"]  # long enough on a GPU for the kill to land mid-run
    # deterministic kernels: on CUDA the default ones need not repeat a run bit for bit
    args_ = ["model=minilm", "task=rte", "method=lora", *sizes, "trainer.checkpoint.every_steps=2",
             "trainer.deterministic=true"]
    ref = subprocess.Popen(run_py(*args_, results=work / "resume_ref"), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    cmd = run_py(*args_, results=work / "resume_run")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import torch

    deadline, killed_at = time.monotonic() + 240, None
    while killed_at is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the run ended (or stalled) before its second checkpoint")
        time.sleep(0.02)
        for f in (work / "resume_run").glob("train/**/*.ckpt/state.pt"):
            try:
                step = torch.load(f, map_location="cpu", weights_only=False)["step"]
            except Exception:  # being replaced
                continue
            if step >= 4:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = torch.load(f, map_location="cpu", weights_only=False)["step"]
    reference = record_of(ref.communicate()[0])
    relaunched = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    resumed = record_of(relaunched.stdout)
    differ = [k for k in SAME if resumed[k] != reference[k]]
    gap = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(resumed["history"], reference["history"]))
    return {"device": resumed["device"], "killed_at_step": killed_at, "resumed_from_step": resumed["resumed_from_step"],
            "equal": not differ, "differing_keys": differ, "max_train_loss_gap": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="+", choices=["syncs", "ratios", "concurrency", "resume"])
    parser.add_argument("--work", type=Path, required=True, help="the result and the runs' records go here")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU: the code paths, not the speed")
    args = parser.parse_args()
    for what in args.what:  # in one process: each costs the imports once
        result = {"syncs": syncs, "ratios": ratios, "concurrency": concurrency, "resume": resume}[what](args)
        (args.work / f"{what}.json").write_text(json.dumps(result, indent=1, default=str))
        print(what, json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
