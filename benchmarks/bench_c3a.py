"""C3A speed and memory: our block-circular operator vs PEFT's and vs LoRA r=8.

    python benchmarks/bench_c3a.py            # ~90 s on 2 idle CPU cores (several times longer under load)
    python benchmarks/bench_c3a.py --quick    # ~1 min: fewer repeats, 2-layer model for the step
    python benchmarks/bench_c3a.py --threads 1
    python benchmarks/bench_c3a.py --device cuda   # GPU only

1. Operator, forward+backward at RoBERTa-base shapes (x: 16 x 128 x 768, requires_grad):
   ours and PEFT's `BlockCircularConvolution` at b=1 (p=768) and b=6 (p=128), and LoRA r=8
   (x @ A^T @ B^T); and ours b=6 with two kernels on one input in one `block_circular_shared`
   call (query and value, as the layers run them), timed per kernel. Variants run
   interleaved, round by round, so load drift on a shared machine hits all alike; median
   (and min) over rounds after warmup.
2. Training step (the runner's, `runners.train.Step`) of RoBERTa-base (random weights, batch
   8 x 128, AdamW) with C3A b=6 on
   query/value, applied as `run.py method=c3a_b6` does (`apply_method`: our layers, query and
   value linked by `share_inputs`), vs PEFT LoRA r=8 on query/value, classifier trained in both.
   Time: both models in one process, steps alternating (c3a, lora, c3a, ...) after a warmup
   step each; the ratio is the median of per-round ratios, robust to load drift.
   Memory: each variant in a fresh subprocess. Its warmup step records the unique
   non-parameter tensors autograd saves for backward ("saved activations": deterministic,
   allocator-independent); then `malloc_trim`, a reset of the peak-RSS counter
   (/proc/self/clear_refs) and one step; "peak RSS growth" = VmHWM during that step minus
   VmRSS just before it, i.e. what the step needs on top of weights and optimizer state.
   On CUDA (if present) also: batch 64 x 256, torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft.tuners.c3a.utils import BlockCircularConvolution  # noqa: E402

from c3a.circular import block_circular, block_circular_shared  # noqa: E402
from runners.train import Step  # noqa: E402

HIDDEN = 768
OP_TOKENS = 16 * 128  # operator benchmark: x = 16 x 128 x 768


SHARED = "ours b=6, q+v in one call (per kernel)"


def op_variants(device: str) -> dict[str, tuple[Callable[[], None], int]]:
    """Forward+backward closures at RoBERTa-base shapes and the kernels each call computes;
    grads reset each call."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(OP_TOKENS // 128, 128, HIDDEN, generator=gen).to(device).requires_grad_()
    g = torch.randn(2, OP_TOKENS // 128, 128, HIDDEN, generator=gen).to(device)
    a = torch.randn(8, HIDDEN, generator=gen).to(device).requires_grad_()
    b = torch.randn(HIDDEN, 8, generator=gen).to(device).requires_grad_()

    def lora() -> None:
        x.grad = a.grad = b.grad = None
        (x @ a.T @ b.T).backward(g[0])

    def c3a(fn: Callable, p: int) -> Callable[[], None]:
        w = torch.randn(HIDDEN // p, HIDDEN // p, p, generator=gen).to(device).requires_grad_()

        def run() -> None:
            x.grad = w.grad = None
            fn(x, w).backward(g[0])
        return run

    def shared(p: int) -> Callable[[], None]:  # query and value as `share_inputs` links them
        ws = torch.randn(2, HIDDEN // p, HIDDEN // p, p, generator=gen).to(device).requires_grad_()

        def run() -> None:
            x.grad = ws.grad = None
            torch.autograd.backward(block_circular_shared(x, list(ws)), list(g))
        return run

    return {
        "LoRA r=8": (lora, 1),
        "ours b=1 (p=768)": (c3a(block_circular, 768), 1),
        "PEFT b=1 (p=768)": (c3a(BlockCircularConvolution.apply, 768), 1),
        "ours b=6 (p=128)": (c3a(block_circular, 128), 1),
        "PEFT b=6 (p=128)": (c3a(BlockCircularConvolution.apply, 128), 1),
        SHARED: (shared(128), 2),
    }


def time_ops(device: str, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds per forward+backward and kernel, variants interleaved round by round."""
    fns = op_variants(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, (fn, kernels) in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - t) * 1e3 / kernels)
    return times


def op_table(times: dict[str, list[float]]) -> list[str]:
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = ["| variant | median ms | min ms | vs PEFT (speedup) | vs LoRA r=8 (time ratio) |",
            "|---|---|---|---|---|"]
    for name, v in times.items():
        twin = name.replace("ours", "PEFT")
        peft = med[twin] / med[name] if name.startswith("ours") and twin in med else None
        rows.append(f"| {name} | {med[name]:.2f} | {min(v):.2f} | "
                    f"{f'{peft:.1f}x' if peft else ''} | {med[name] / med['LoRA r=8']:.2f}x |")
    return rows


# ---------------------------------------------------------------- training step

VARIANTS = {"c3a": "C3A b=6 (ours)", "lora": "LoRA r=8 (PEFT)"}


def make_step(variant: str, device: str, layers: int, batch: int, seq: int) -> tuple[torch.nn.Module, Callable]:
    """RoBERTa-base shape (random weights, `layers` layers) with C3A b=6 (our layer) or LoRA r=8
    (PEFT) on query/value and the classifier trained; returns (model, one AdamW step: the
    runner's `runners.train.Step`)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=12,
                           intermediate_size=3072, vocab_size=50265, max_position_embeddings=514,
                           type_vocab_size=1, num_labels=2)
    model = RobertaForSequenceClassification(config)
    if variant == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["query", "value"], task_type="SEQ_CLS"))
    else:  # as `python run.py method=c3a_b6` applies it (query and value share one operator call)
        from c3a.methods import apply_method
        model = apply_method(model, "c3a", target_modules=["query", "value"], blocks=6).model
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50265, (batch, seq), generator=gen).to(device)
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device)

    train_step = Step(model, opt, torch.device(device))  # the runner's training step

    def step() -> None:
        train_step({"input_ids": ids, "labels": labels})
        if device == "cuda":
            torch.cuda.synchronize()
    return model, step


def saved_activation_mb(step: Callable[[], None], model: torch.nn.Module) -> float:
    """MB of unique non-parameter tensors autograd keeps for backward during one step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values()) / 2**20


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(variant: str, device: str, layers: int, batch: int, seq: int) -> dict:
    """In a fresh process: saved activations (warmup step), then the peak growth of one step."""
    model, step = make_step(variant, device, layers, batch, seq)
    saved = saved_activation_mb(step, model)  # doubles as warmup: optimizer state, FFT plans
    if device == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = rss_mb("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to current RSS
        step()
        peak = rss_mb("VmHWM:") - before
    return {"saved_mb": saved, "peak_mb": peak,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def step_times(device: str, layers: int, batch: int, seq: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step, both models in one process, steps alternating so load drift is shared."""
    steps = {v: make_step(v, device, layers, batch, seq)[1] for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds + 1):
        for v, step in steps.items():
            t = time.perf_counter()
            step()
            if r:  # round 0 is warmup
                times[v].append(time.perf_counter() - t)
    return times


def step_table(device: str, layers: int, batch: int, seq: int, rounds: int, op_ms: dict[str, float]) -> list[str]:
    mem = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
               "--_worker", v, device, str(layers), str(batch), str(seq)]
        mem[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    times = step_times(device, layers, batch, seq, rounds)
    med = {v: statistics.median(t) for v, t in times.items()}
    paired = statistics.median(c / lo for c, lo in zip(times["c3a"], times["lora"]))
    peak = "peak CUDA alloc over pre-step MB" if device == "cuda" else "peak RSS growth MB"
    rows = [f"Training step, {device}, RoBERTa-base shape with {layers} layers, batch {batch} x {seq} "
            f"({rounds} alternating rounds):", "",
            f"| variant | trainable params | step s (median) | {peak} | saved activations MB |",
            "|---|---|---|---|---|"]
    rows += [f"| {name} | {mem[v]['trainable']:,} | {med[v]:.3f} | {mem[v]['peak_mb']:.0f} | "
             f"{mem[v]['saved_mb']:.0f} |" for v, name in VARIANTS.items()]
    ratio = {k: mem["c3a"][k] / mem["lora"][k] for k in ("peak_mb", "saved_mb")}
    # the models differ only in their 2 * layers adapters: the operator table predicts the gap
    extra = 2 * layers * (op_ms[SHARED] - op_ms["LoRA r=8"]) * batch * seq / OP_TOKENS / 1e3
    rows += ["", f"C3A / LoRA: step time {paired:.3f}x (median of per-round ratios; target <= 1.05x), "
                 f"{peak} {ratio['peak_mb']:.3f}x, saved activations {ratio['saved_mb']:.3f}x (target <= 1.0x)."]
    if device == "cpu":  # CUDA operator times at OP_TOKENS are launch-bound: they do not scale with tokens
        rows.append(f"Predicted from the operator table: {2 * layers} adapters x (ours b=6 shared - LoRA) scaled to "
                    f"{batch * seq} tokens = {extra:+.3f} s per step, i.e. {1 + extra / med['lora']:.3f}x.")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 2-layer model for the step")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="repeatable; default: cpu, and cuda when available")
    parser.add_argument("--_worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._worker:
        variant, device, *nums = args._worker
        print(json.dumps(memory_worker(variant, device, *map(int, nums))))
        return

    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start {' '.join(load)}\n",
          flush=True)
    for device in args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        rounds = (5 if args.quick else 15) * (10 if device == "cuda" else 1)  # GPU rounds are cheap
        op_times = time_ops(device, rounds)
        print(f"Operator forward+backward, {device}, x = {OP_TOKENS // 128} x 128 x {HIDDEN} ({rounds} rounds):\n",
              *op_table(op_times), "", sep="\n", flush=True)
        op_ms = {k: statistics.median(v) for k, v in op_times.items()}
        layers, rounds = (2, 2) if args.quick else (12, 6 if device == "cpu" else 20)
        batch, seq = (8, 128) if device == "cpu" else (64, 256)
        print(*step_table(device, layers, batch, seq, rounds, op_ms), "", sep="\n", flush=True)

if __name__ == "__main__":
    main()
