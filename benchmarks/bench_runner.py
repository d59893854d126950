"""Training throughput and peak memory of this runner, per method (ratios to LoRA), and the
same LoRA fine-tune through transformers' Trainer + PEFT (the peer a user would pick), with
its default sampling and with length-grouped batches.

Fixed input: the offline MiniLM encoder on real SST-2 rows (GLUE_DIR), batch 16, max length
128, fp32 on CPU, the same torch thread count in every measurement (--threads). A measurement
is one fine-tune in a fresh process: WARMUP untimed optimizer steps, then --steps timed ones
(examples/s = batch x steps / time from the end of the last warmup step to the end of the
last step, read from a global optimizer-step hook, so set-up and the final evaluation do not
count); peak memory = peak RSS minus RSS before the model is built.

Rounds: each round measures every configuration once (this runner per method, the two
Trainer + PEFT peers), in an order rotated and, on odd rounds, reversed from round to round,
so load drift on a shared machine hits all alike. Ratios are paired: per round, each method
over this runner's LoRA and this runner's LoRA over each Trainer configuration, all from the
same round; reported as the median over rounds with its min-max range, beside the median
absolute examples/s.

    python benchmarks/bench_runner.py                    # all methods
    python benchmarks/bench_runner.py --quick            # lora, c3a_b6, qgoft and the peers
    python benchmarks/bench_runner.py --rounds 7 --steps 80 --threads 2 --json out.json
    python benchmarks/bench_runner.py --device cuda --precision bf16 --methods lora   # a GPU

On CUDA both sides run at their best: this runner as configured (fused AdamW, pinned
batches), the Trainer with `bf16` (when --precision bf16), `optim="adamw_torch_fused"` and
pinned memory; the step hook synchronizes the device on both sides, so a stamp is a step's end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rounds import fmt_ratio, load_average, paired_ratios, round_order, spread  # noqa: E402

METHODS = ["lora", "bitfit", "ia3", "vera", "boft", "c3a_b1", "c3a_b6", "qgoft", "goft", "full"]
QUICK = ["lora", "c3a_b6", "qgoft"]
PEERS = {"trainer": "Trainer + PEFT (defaults)",
         "trainer_grouped": 'Trainer + PEFT (`train_sampling_strategy="group_by_length"`)'}
BATCH, MAX_LEN, LR = 16, 128, 5e-4
WARMUP = 2  # untimed optimizer steps at the start of every measurement
ROUNDS, STEPS = 5, 60


def overrides(method: str, total: int, device: str = "cpu", precision: str = "fp32") -> list[str]:
    glue = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "glue"))
    return [f"method={method}", "task=sst2", f"data.dir={glue}", f"data.max_train_samples={BATCH * total}",
            "data.max_eval_samples=16", f"data.max_seq_len={MAX_LEN}", f"trainer.batch_size={BATCH}",
            f"trainer.max_steps={total}", f"trainer.lr={LR}", f"trainer.lr_head={LR}", "trainer.progress=false",
            f"data.cache_dir={ROOT / '.cache' / 'bench'}", f"trainer.device={device}",
            f"trainer.precision={precision}"]


def worker(kind: str, method: str, steps: int, threads: int, device: str = "cpu", precision: str = "fp32") -> dict:
    """One measurement (run in a fresh process): WARMUP + `steps` optimizer steps, one epoch."""
    import torch
    from hydra import compose, initialize_config_dir
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from runners.config import register_resolvers
    from runners.data import prepare
    from runners.job import adapted_model
    from runners.memory import PeakMemory
    from runners.models import build_tokenizer, weights_source

    torch.set_num_threads(threads)
    total = WARMUP + steps
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides(method, total, device, precision))
    tokenizer = build_tokenizer(cfg.model)
    data, _ = prepare(cfg, tokenizer)
    cuda = device == "cuda"
    device = torch.device(device)
    stamps: list[float] = []  # the end of every optimizer step, whoever drives the optimizer
    register_optimizer_step_post_hook(lambda *_: (torch.cuda.synchronize() if cuda else None,
                                                  stamps.append(time.perf_counter())))
    peak = PeakMemory(device)
    if kind == "ours":
        from runners.train import train

        train(adapted_model(cfg), data, tokenizer, cfg, device)
    else:  # the peer: Trainer + PEFT with a user's usual settings
        from peft import LoraConfig, get_peft_model
        from transformers import (
            AutoModelForSequenceClassification,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
            set_seed,
        )

        set_seed(cfg.seed)
        model = AutoModelForSequenceClassification.from_pretrained(weights_source(cfg.model), num_labels=2,
                                                                   dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
        args = TrainingArguments(
            output_dir=str(ROOT / ".cache" / "bench_trainer"), per_device_train_batch_size=BATCH, max_steps=total,
            learning_rate=LR, warmup_steps=0.06, lr_scheduler_type="linear", weight_decay=0.0,
            eval_strategy="no", save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=not cuda,
            bf16=precision == "bf16", optim="adamw_torch_fused" if cuda else "adamw_torch",
            seed=cfg.seed, disable_tqdm=True,
            train_sampling_strategy="group_by_length" if kind == "trainer_grouped" else "random",
        )
        trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
    if len(stamps) != total:
        raise RuntimeError(f"{kind}/{method}: {len(stamps)} optimizer steps, expected {total}")
    timed = stamps[WARMUP - 1:]
    seconds = timed[-1] - timed[0]
    return {"examples_per_s": BATCH * steps / seconds, "seconds": seconds, "steps": steps,
            "step_s_median": statistics.median(b - a for a, b in zip(timed, timed[1:])),
            "threads": torch.get_num_threads(), **peak.read()}


def measure(kind: str, method: str, steps: int, threads: int, device: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, method, str(steps), str(threads), device, precision]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"error: {kind}/{method} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def label(config: tuple[str, str]) -> str:
    kind, method = config
    return method if kind == "ours" else kind


def summarise(rounds: list[dict], methods: list[str]) -> dict:
    """Per configuration: median (min-max) examples/s and peak memory, and the paired per-round ratios."""
    per = {c: [r["results"][c] for r in rounds] for c in rounds[0]["results"]}
    ex = {c: [x["examples_per_s"] for x in v] for c, v in per.items()}
    mem = {c: [x["peak_memory_gb"] for x in v] for c, v in per.items()}
    out = {c: {"examples_per_s": spread(ex[c]), "peak_memory_gb": spread(mem[c])} for c in per}
    for m in methods:
        out[m]["vs_lora"] = paired_ratios(ex[m], ex["lora"])
        out[m]["mem_vs_lora"] = paired_ratios(mem[m], mem["lora"])
    for k in PEERS:
        out[k]["runner_speedup"] = paired_ratios(ex["lora"], ex[k])
        out[k]["runner_mem_ratio"] = paired_ratios(mem["lora"], mem[k])
    return out


def tables(s: dict, methods: list[str]) -> list[str]:
    def ex(c: str) -> str:
        e = s[c]["examples_per_s"]
        return f"{e['median']:.1f} ({e['min']:.1f}-{e['max']:.1f})"

    def mem(c: str) -> str:
        return f"{s[c]['peak_memory_gb']['median']:.2f}"

    rows = ["| method | examples/s, median (min-max) | vs LoRA | peak mem GB | vs LoRA |", "|---|---|---|---|---|"]
    rows += [f"| {m} | {ex(m)} | {fmt_ratio(s[m]['vs_lora'])} | {mem(m)} "
             f"| {fmt_ratio(s[m]['mem_vs_lora'])} |" for m in methods]
    rows += ["", "| LoRA fine-tune | examples/s, median (min-max) | this runner's speed-up | peak mem GB |",
             "|---|---|---|---|", f"| this runner | {ex('lora')} | 1.00x | {mem('lora')} |"]
    rows += [f"| {name} | {ex(k)} | {fmt_ratio(s[k]['runner_speedup'])} | {mem(k)} |"
             for k, name in PEERS.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"methods {', '.join(QUICK)} only (and the peers)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds (default {ROUNDS})")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"timed optimizer steps per measurement, after {WARMUP} warmup steps (default {STEPS})")
    parser.add_argument("--threads", type=int, help="torch threads in every measurement (default: torch's default)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write settings, every round and the summary")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="this runner's methods, lora among them (default: all, or --quick's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, method, steps, threads, device, precision = args.worker
        print(json.dumps(worker(kind, method, int(steps), int(threads), device, precision)))
        return
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    methods = args.methods or (QUICK if args.quick else METHODS)
    configs = [("ours", m) for m in methods] + [(k, "lora") for k in PEERS]
    settings = {"model": "minilm", "task": "sst2", "batch": BATCH, "max_len": MAX_LEN, "warmup_steps": WARMUP,
                "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "methods": methods,
                "device": args.device, "precision": args.precision, "load_average_at_start": load_average()}
    print(f"MiniLM (offline), SST-2 rows, batch {BATCH}, max len {MAX_LEN}; {WARMUP} warmup + {args.steps} timed "
          f"steps per measurement; {args.rounds} interleaved rounds of {len(configs)} configurations; "
          f"torch threads {args.threads}; load average at start {settings['load_average_at_start']}", flush=True)
    start, rounds = time.perf_counter(), []
    for r in range(args.rounds):
        order = round_order(configs, r, args.rounds)
        results = {label(c): measure(*c, args.steps, args.threads, args.device, args.precision) for c in order}
        rounds.append({"order": [label(c) for c in order], "results": results})
        print(f"round {r + 1}/{args.rounds} ({time.perf_counter() - start:.0f} s), examples/s: "
              + ", ".join(f"{c} {x['examples_per_s']:.1f}" for c, x in results.items()), flush=True)
    threads = {x["threads"] for r in rounds for x in r["results"].values()}
    if threads != {args.threads}:
        sys.exit(f"error: measurements ran with {sorted(threads)} torch threads, asked for {args.threads}")
    summary = summarise(rounds, methods)
    print("\nRatios: median over rounds of the per-round ratio (min-max in brackets).\n")
    print(*tables(summary, methods), sep="\n")
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average at end {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rounds": rounds, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
