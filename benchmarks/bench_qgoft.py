"""Training-step time and peak memory of qGOFT/GOFT against LoRA and dense-R implementations.

RoBERTa-base shape (random weights), batch 8 x 128, CPU. Every variant lives in its own
worker subprocess (so its memory is its own); the parent asks the workers for one step at
a time, round-robin, so load from other processes on the machine hits all variants alike;
"x LoRA" is the median over rounds of a variant's step time over LoRA's in the same round.
The dense-R references run afterwards, one at a time (memory), with fewer steps (slow).
A step is the runner's training step (`runners.train.Step`), with qGOFT's regularizer.

    python benchmarks/bench_qgoft.py [--quick]

Variants
- lora:          PEFT LoRA r=8, alpha 8 on query, value.
- qgoft, goft:   `c3a.givens.GivensLinear` on the six linears of every block.
- wgrad-floor:   no adapter, but the six linears' weights require grad (no optimizer step
                 on them): the weight-gradient GEMMs dL/dW = g^T x that any method
                 differentiating through W' = W R^T pays and LoRA does not (our session-2
                 layer, the dense-R forms). Ours forms W R^T in the forward but takes the
                 gradient on the activations, and does not pay it.
- qgoft-denseR:  the same layer with R materialized: R (d x d) built by the library's own
                 construction (`rotation_matrix`), then W R^T by a GEMM. The cheapest dense-R form.
- qgoft-authors: R built the authors' way, a dense d x d product stage by stage with sparse
                 matmuls, then W R^T by a GEMM. Only when named in --variants: one step
                 takes minutes (torch's sparse-matmul backward forms a dense d x d x d product).

Then, per layer: the extra forward time of one GivensLinear (768 -> 768) over its plain
linear at several token counts. The stages act on W, so it should not grow with the tokens.

Memory: peak RSS (ru_maxrss) of the worker minus its RSS after building the model and
optimizer, before the first step: the training working set (activations, gradients,
optimizer state, temporaries). glibc is told to keep freed memory in every process
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_): by default every large tensor is a fresh
mmap whose page faults cost this VM more than the arithmetic (a 10 MB copy: 4.7 ms vs
0.55 ms), which would time the kernel rather than the method. Retained memory is reused,
so the peak stays the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c3a.givens import GivensLinear, givens_pairs, givens_regularizer  # noqa: E402
from c3a.modules import replace_linears  # noqa: E402
from runners.train import Step  # noqa: E402

SIX = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
DEFAULT = ["lora", "qgoft", "goft", "wgrad-floor", "qgoft-denseR"]
VARIANTS = [*DEFAULT, "qgoft-authors"]
DENSE = {"qgoft-denseR", "qgoft-authors"}
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}  # glibc, see "Memory"
REG_LAMBDA = 0.01  # qGOFT's regularizer is part of its training step


def sparse_stage_rotation(blocks: Tensor, d: int) -> Tensor:
    """R = P_L ... P_1 as a dense d x d matrix, each P_r a sparse matrix (the authors' way)."""
    R, off = torch.eye(d, dtype=blocks.dtype), 0
    for a, b in givens_pairs(d):
        g = blocks[off : off + len(a)]
        off += len(a)
        untouched = torch.ones(d, dtype=torch.bool)
        untouched[a], untouched[b] = False, False
        diag = untouched.nonzero().squeeze(1)
        rows = torch.cat((a, a, b, b, diag))
        cols = torch.cat((a, b, a, b, diag))
        vals = torch.cat((g[:, 0, 0], g[:, 0, 1], g[:, 1, 0], g[:, 1, 1], torch.ones(len(diag), dtype=g.dtype)))
        P = torch.sparse_coo_tensor(torch.stack((rows, cols)), vals, (d, d), check_invariants=False)
        R = torch.sparse.mm(P, R)
    return R


class DenseRLinear(GivensLinear):
    """The same layer computed as y = F.linear(x, W R^T) with R a materialized d x d matrix."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.base_layer.weight @ self.rotation_matrix().T, self.base_layer.bias)


class AuthorsLinear(GivensLinear):
    """Like `DenseRLinear`, R built by sparse stage matmuls.

    That construction is checkpointed (redone in the backward pass): autograd would
    otherwise keep every stage's dense d x d product, about 11 GB at RoBERTa-base size.
    """

    def forward(self, x: Tensor) -> Tensor:
        d = self.base_layer.in_features
        R = checkpoint(sparse_stage_rotation, self.rotation_blocks(), d, use_reentrant=False)
        return F.linear(x, self.base_layer.weight @ R.T, self.base_layer.bias)


def build(variant: str) -> nn.Module:
    """RoBERTa-base classifier with `variant` applied (head trainable), in train mode."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
    model = RobertaForSequenceClassification(cfg)
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
    else:
        model.requires_grad_(False)
        if variant == "wgrad-floor":
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear) and any(name.endswith("." + t) for t in SIX):
                    module.weight.requires_grad_(True)
        else:
            layer = {"qgoft-denseR": DenseRLinear, "qgoft-authors": AuthorsLinear}.get(variant, GivensLinear)
            replace_linears(model, SIX, lambda linear: layer(linear, variant.split("-")[0]))
        model.classifier.requires_grad_(True)
    return model.train()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(variant: str, threads: int) -> None:
    """Serve 'step' requests on stdin with one timed training step each; 'stats' ends."""
    torch.set_num_threads(threads)
    model = build(variant)
    params = [p for p in model.parameters() if p.requires_grad]
    # The floor only computes the six weights' gradients; AdamW steps the head alone.
    stepped = [p for n, p in model.named_parameters()
               if p.requires_grad and (variant != "wgrad-floor" or "classifier" in n)]
    optimizer = torch.optim.AdamW(stepped, lr=1e-4)
    regularizer = (lambda: REG_LAMBDA * givens_regularizer(model)) if variant.startswith("qgoft") else None
    step = Step(model, optimizer, torch.device("cpu"), regularizer=regularizer)  # the runner's training step
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 50265, (8, 128), generator=gen)
    labels = torch.randint(0, 2, (8,), generator=gen)
    method_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
    before = rss_mib()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps({"peak_mib": peak, "before_mib": before, "params": method_params}), flush=True)
            return
        start = time.perf_counter()
        step({"input_ids": input_ids, "labels": labels})
        for p in params:  # the floor's weight gradients, which no optimizer clears
            p.grad = None
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def run(variants: list[str], warmup: int, steps: int, threads: int) -> dict[str, dict]:
    """Time `steps` training steps (after `warmup`) of every variant, round-robin."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = {v: subprocess.Popen([sys.executable, __file__, "--worker", v, "--threads", str(threads)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for v in variants}

    def ask(v: str, request: str) -> dict:
        procs[v].stdin.write(request + "\n")
        procs[v].stdin.flush()
        return read(v)

    def read(v: str) -> dict:
        line = procs[v].stdout.readline()
        if not line:
            raise RuntimeError(f"worker {v} died (exit code {procs[v].wait()})")
        return json.loads(line)

    for v in variants:
        read(v)  # built and ready
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        for v in variants:
            seconds = ask(v, "step")["seconds"]
            if i >= warmup:
                times[v].append(seconds)
            print(f"  step {i + 1}/{warmup + steps} {v}: {seconds:.2f} s", file=sys.stderr, flush=True)
    results = {}
    for v in variants:
        stats = ask(v, "stats")
        procs[v].wait()
        results[v] = {**stats, "median_s": statistics.median(times[v]), "times": times[v]}
    return results


def table(results: dict[str, dict]) -> str:
    lora = results["lora"]
    lora_mem = lora["peak_mib"] - lora["before_mib"]
    lines = ["| variant | trainable params (no head) | step median (s) | x LoRA (paired) | peak RSS - RSS before (MiB) "
             "| x LoRA | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for v, r in results.items():
        mem = r["peak_mib"] - r["before_mib"]
        lines.append(f"| {v} | {r['params']:,} | {r['median_s']:.2f} | {ratio(v, r, lora):.2f} "
                     f"| {mem:,.0f} | {mem / lora_mem:.2f} | {r['peak_mib']:,.0f} |")
    lines.append("")
    if "wgrad-floor" in results:  # the target: qGOFT within 1.05x of the weight-gradient floor
        floor = results["wgrad-floor"]
        for v in ("qgoft", "goft"):
            if v in results:
                lines.append(f"{v} / wgrad-floor (paired): {ratio(v, results[v], floor):.3f}x")
    for v in DENSE & results.keys():
        speedup = results[v]["median_s"] / results["qgoft"]["median_s"]
        lines.append(f"qgoft is {speedup:.1f}x faster per step than {v}.")
    lines.append("\nstep times (s): " + "; ".join(f"{v} " + " ".join(f"{t:.2f}" for t in r["times"])
                                                for v, r in results.items()))
    return "\n".join(lines)


def ratio(variant: str, r: dict, lora: dict) -> float:
    """Step time relative to LoRA: the median of per-round ratios for variants timed round-robin
    with it (steps of one round are adjacent, so load drift cancels); a ratio of medians for the
    dense-R references, which run alone afterwards."""
    if variant in DENSE:
        return r["median_s"] / lora["median_s"]
    return statistics.median(t / lo for t, lo in zip(r["times"], lora["times"]))


def forward_overhead(threads: int, tokens: tuple[int, ...] = (128, 1024, 8192), reps: int = 50) -> str:
    """Extra forward time (ms) of a qGOFT layer over its base linear, per token count: the
    two are timed alternately and the extra is the median of the per-pair differences."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = nn.Linear(768, 768)
    layer = GivensLinear(base, "qgoft")
    lines = ["| tokens | base linear (ms) | qGOFT layer (ms) | extra (ms) |", "|---:|---:|---:|---:|"]
    with torch.no_grad():
        layer.givens_blocks.add_(0.01 * torch.randn_like(layer.givens_blocks))
        for t in tokens:
            x = torch.randn(t, 768)
            base(x), layer(x)  # warm-up
            ms = {base: [], layer: []}
            for _ in range(reps):
                for f in ms:
                    start = time.perf_counter()
                    f(x)
                    ms[f].append(1e3 * (time.perf_counter() - start))
            extra = statistics.median(b - a for a, b in zip(ms[base], ms[layer], strict=True))
            lines.append(f"| {t:,} | {statistics.median(ms[base]):.2f} | {statistics.median(ms[layer]):.2f} "
                         f"| {extra:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about a minute and a half)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != KEEP_FREED["MALLOC_MMAP_THRESHOLD_"]:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED})  # see "Memory"
    if args.worker:
        worker(args.worker, args.threads)
        return
    if not {"lora", "qgoft"} <= set(args.variants):
        parser.error("the table is relative to lora and qgoft: keep them in --variants")
    warmup, steps, dense_steps = (1, 2, 1) if args.quick else (2, 10, 2)
    start = time.perf_counter()
    results = run([v for v in args.variants if v not in DENSE], warmup, steps, args.threads)
    for v in args.variants:
        if v in DENSE:
            results |= run([v], 1, dense_steps, args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"RoBERTa-base, batch 8 x 128, AdamW; {steps} steps after {warmup} warmup, round-robin "
          f"({dense_steps} after 1 for the dense-R references); total {time.perf_counter() - start:.0f} s\n")
    print(table(results))
    print("\nForward of one layer, 768 -> 768, no grad (medians of 50 alternating calls):\n")
    print(forward_overhead(args.threads))


if __name__ == "__main__":
    main()
