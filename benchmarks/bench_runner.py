"""Training throughput and peak memory of this runner, per method (ratios to LoRA), and the
same LoRA fine-tune through transformers' Trainer + PEFT (the peer a user would pick).

Fixed input: the offline MiniLM encoder on real SST-2 rows (GLUE_DIR), batch 16, max length
128, STEPS optimizer steps, no evaluation in the timed part. Each measurement runs in a
fresh process (CPU peak memory = peak RSS minus RSS before the model is built).

    python benchmarks/bench_runner.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ["lora", "bitfit", "ia3", "vera", "boft", "c3a_b1", "c3a_b6", "qgoft", "goft", "full"]
BATCH, MAX_LEN, LR = 16, 128, 5e-4


def overrides(method: str, steps: int) -> list[str]:
    glue = os.environ.get("GLUE_DIR", str(ROOT.parent / "shared" / "glue"))
    return [f"method={method}", "task=sst2", f"data.dir={glue}", f"data.max_train_samples={BATCH * steps}",
            "data.max_eval_samples=16", f"data.max_seq_len={MAX_LEN}", f"trainer.batch_size={BATCH}",
            f"trainer.max_steps={steps}", f"trainer.lr={LR}", f"trainer.lr_head={LR}", "trainer.progress=false",
            f"data.cache_dir={ROOT / '.cache' / 'bench'}"]


def worker(kind: str, method: str, steps: int) -> dict:
    from hydra import compose, initialize_config_dir

    from runners.config import register_resolvers
    from runners.data import prepare
    from runners.job import adapted_model
    from runners.memory import PeakMemory
    from runners.models import build_tokenizer

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides(method, steps))
    tokenizer = build_tokenizer(cfg.model)
    data, _ = prepare(cfg, tokenizer)
    import torch

    device = torch.device("cpu")
    peak = PeakMemory(device)
    if kind == "ours":
        from runners.train import train

        adapted = adapted_model(cfg)
        start = time.perf_counter()
        train(adapted, data, tokenizer, cfg, device)
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
        model = AutoModelForSequenceClassification.from_pretrained(cfg.model.name_or_path, num_labels=2)
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
        args = TrainingArguments(
            output_dir=str(ROOT / ".cache" / "bench_trainer"), per_device_train_batch_size=BATCH, max_steps=steps,
            learning_rate=LR, warmup_steps=0.06, lr_scheduler_type="linear", weight_decay=0.0,
            eval_strategy="no", save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True,
            seed=cfg.seed, disable_tqdm=True,
            train_sampling_strategy="group_by_length" if kind == "trainer_grouped" else "random",
        )
        trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                          data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        trainer.train()
    seconds = time.perf_counter() - start
    return {"examples_per_s": BATCH * steps / seconds, **peak.read()}


def measure(kind: str, method: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, method, str(steps)], capture_output=True,
                         text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps and methods")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "METHOD", "STEPS"))
    args = parser.parse_args()
    if args.worker:
        kind, method, steps = args.worker
        print(json.dumps(worker(kind, method, int(steps))))
        return
    steps = 15 if args.quick else 40
    methods = ["lora", "c3a_b6", "qgoft"] if args.quick else METHODS
    rows = {m: measure("ours", m, steps) for m in methods}
    peers = {k: measure(k, "lora", steps) for k in ("trainer", "trainer_grouped")}
    lora = rows["lora"]
    print(f"MiniLM, SST-2 rows, batch {BATCH}, max len {MAX_LEN}, {steps} steps, CPU threads {os.cpu_count()}")
    print("| method | examples/s | vs LoRA | peak mem GB | vs LoRA |")
    print("|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['examples_per_s']:.1f} | {r['examples_per_s'] / lora['examples_per_s']:.2f}x "
              f"| {r['peak_memory_gb']:.2f} | {r['peak_memory_gb'] / lora['peak_memory_gb']:.2f}x |")
    print("\n| LoRA fine-tune | examples/s | this runner's speed-up | peak mem GB |")
    print("|---|---|---|---|")
    print(f"| this runner | {lora['examples_per_s']:.1f} | 1.00x | {lora['peak_memory_gb']:.2f} |")
    for k, r in peers.items():
        name = "Trainer + PEFT (defaults)" if k == "trainer" else "Trainer + PEFT (group_by_length=True)"
        print(f"| {name} | {r['examples_per_s']:.1f} | {lora['examples_per_s'] / r['examples_per_s']:.2f}x "
              f"| {r['peak_memory_gb']:.2f} |")


if __name__ == "__main__":
    main()
