"""The fast path's options on CPU, on a tiny random BERT (2 layers, hidden 32, MiniLM's
tokenizer) trained in process on real RTE (CoLA) rows: the plain fp32 step is unchanged, bf16 keeps
fp32 weights and C3A's operator in fp32, gradient accumulation and gradient checkpointing give
the unsplit batch's numbers, and a compiled model trains as the eager one with a bounded number
of compiled graphs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from conftest import compose

TINY = ("model=minilm", "model.pretrained=false", "model.num_layers=2",
        "model.config={model_type:bert,vocab_size:30522,hidden_size:32,num_hidden_layers:2,"
        "num_attention_heads:2,intermediate_size:64,hidden_dropout_prob:DROP,attention_probs_dropout_prob:DROP}")
SHORT = ("task=rte", "trainer.device=cpu", "trainer.num_threads=1", "trainer.progress=false",
         "trainer.batch_size=8", "trainer.max_steps=8", "trainer.eval_every_steps=4", "trainer.lr=1e-2",
         "trainer.lr_head=1e-2", "data.max_train_samples=60", "data.max_eval_samples=16", "data.max_seq_len=64",
         "trainer.checkpoint.enabled=false")


def tiny(*overrides: str, dropout: float = 0.1):
    return compose(*(o.replace("DROP", str(dropout)) for o in TINY), *SHORT, *overrides)


def trained(cfg, glue_dir: Path, cache_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The run's history and its trained parameters, trained in this process on the CPU."""
    from runners.checkpoint import trainable_state
    from runners.data import prepare
    from runners.job import adapted_model
    from runners.models import build_tokenizer
    from runners.train import train

    cfg.data.dir, cfg.data.cache_dir = str(glue_dir), str(cache_dir)
    tokenizer = build_tokenizer(cfg.model)
    data, _ = prepare(cfg, tokenizer)
    adapted = adapted_model(cfg)
    result = train(adapted, data, tokenizer, cfg, torch.device("cpu"))
    return result["history"], trainable_state(adapted.model)


def losses(history: list[dict]) -> list[float]:
    return [point["train_loss"] for point in history]


def test_c3a_operator_computes_in_fp32_under_bf16_autocast() -> None:
    """<1 s: under bf16 autocast the block-circular product (b=4: the mixing bmm autocast would
    lower) and its gradients keep fp32 accuracy against a float64 reference."""
    from c3a.circular import block_circular

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=gen, requires_grad=True)
    w = torch.randn(8, 4, 24, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block_circular(x, w)
        y.square().sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = block_circular(x64, w64)
    ref.square().sum().backward()
    assert y.dtype == torch.float32
    for got, want in ((y, ref), (x.grad, x64.grad), (w.grad, w64.grad)):  # bf16 would be ~1e-2 off
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_givens_rotation_stays_fp32_under_bf16_autocast() -> None:
    """<1 s: under bf16 autocast a qGOFT layer rotates its weight in fp32 (against a dense float64
    W R^T) and only its final GEMM runs in bf16, as a plain linear's does."""
    import torch.nn.functional as F

    from c3a.givens import GivensLinear

    torch.manual_seed(0)
    layer = GivensLinear(torch.nn.Linear(96, 64), "qgoft")
    with torch.no_grad():
        layer.givens_blocks.add_(0.3 * torch.randn_like(layer.givens_blocks))
        x = torch.randn(16, 96)
        dense = layer.base_layer.weight.double() @ layer.rotation_matrix().double().T
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rotated = layer.rotated_weight()
            got = layer(x)
            want = F.linear(x, dense.float(), layer.base_layer.bias)  # the same bf16 GEMM
    assert rotated.dtype == torch.float32
    assert (rotated.double() - dense).abs().max() <= 1e-5 * dense.abs().max()  # bf16 stages: 2.4e-3
    assert torch.equal(got, want)


@pytest.mark.needs_glue
def test_cpu_fp32_step_is_the_plain_adamw_step(glue_dir: Path, cache_dir: Path) -> None:
    """~3 s: the runner's Step on CPU in fp32 (one micro-batch, not fused, no compile) gives
    bit for bit the parameters of the plain loop it replaced: forward, backward, AdamW, schedule."""
    from transformers import get_linear_schedule_with_warmup

    from runners.data import loader, prepare
    from runners.job import adapted_model
    from runners.models import build_tokenizer
    from runners.train import Step

    cfg = tiny("method=lora")
    cfg.data.dir, cfg.data.cache_dir = str(glue_dir), str(cache_dir)
    tokenizer = build_tokenizer(cfg.model)
    data, _ = prepare(cfg, tokenizer)
    t, params = cfg.trainer, []
    for runner in (True, False):
        adapted = adapted_model(cfg)
        torch.manual_seed(1)
        if runner:
            step = Step.of(adapted, t, torch.device("cpu"), 6)
            assert not step.optimizer.defaults["fused"]
        else:
            opt = torch.optim.AdamW([{"params": adapted.method, "lr": t.lr, "weight_decay": t.weight_decay},
                                     {"params": adapted.head, "lr": t.lr_head, "weight_decay": t.weight_decay}])
            schedule = get_linear_schedule_with_warmup(opt, math.ceil(t.warmup_ratio * 6), 6)
        for i, batch in enumerate(loader(data["train"], tokenizer, 8, True, True, 0)):
            if i == 6:
                break
            if runner:
                step(batch)
            else:
                adapted.model(**batch).loss.backward()
                opt.step()
                schedule.step()
                opt.zero_grad(set_to_none=True)
        params.append([p.detach().clone() for p in adapted.model.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(*params))


@pytest.mark.needs_glue
def test_bf16_trains_fp32_weights_close_to_fp32(glue_dir: Path, cache_dir: Path) -> None:
    """~2 s: trainer.precision=bf16 with C3A (block 8: the operator's mixing path) on the CPU
    ends with fp32 parameters and a loss history close to the fp32 run's (bf16 rounding)."""
    c3a = ("method=c3a", "method.block_size=8", "method.blocks=null")
    ref, _ = trained(tiny(*c3a), glue_dir, cache_dir)
    bf16, params = trained(tiny(*c3a, "trainer.precision=bf16"), glue_dir, cache_dir)
    assert all(p.dtype == torch.float32 for p in params.values())
    assert losses(bf16) == pytest.approx(losses(ref), rel=2e-2)
    assert losses(bf16) != losses(ref)  # autocast did run in bf16


@pytest.mark.needs_glue
def test_grad_accum_gives_the_unsplit_batchs_history(glue_dir: Path, cache_dir: Path) -> None:
    """~2 s: trainer.grad_accum_steps=3 splits batches of 8 into 3, 3 and 2 examples (and the
    last batch of 4 into 2, 1, 1); the loss weighted by examples gives the unsplit batch's
    history and parameters up to float summation order. No dropout: the micro-batches would
    draw other masks."""
    ref, ref_params = trained(tiny("method=lora", dropout=0.0), glue_dir, cache_dir)
    acc, params = trained(tiny("method=lora", "trainer.grad_accum_steps=3", dropout=0.0), glue_dir, cache_dir)
    assert [p["step"] for p in acc] == [p["step"] for p in ref]  # steps count optimizer steps
    assert losses(acc) == pytest.approx(losses(ref), rel=1e-5)
    assert all(torch.allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6) for k in params)


@pytest.mark.needs_glue
@pytest.mark.parametrize("method", [("method=lora",), ("method=c3a", "method.block_size=8", "method.blocks=null")])
def test_gradient_checkpointing_gives_the_same_numbers(method: tuple[str, ...], glue_dir: Path, cache_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """~2 s each: the model's own gradient checkpointing recomputes the same forward, dropout
    masks replayed, so the history and parameters are the same bit for bit on CPU (why it is
    not part of a run's identity)."""
    import transformers.modeling_utils

    ref, ref_params = trained(tiny(*method), glue_dir, cache_dir)
    calls, checkpoint = [], transformers.modeling_utils.checkpoint
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint",
                        lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    ckpt, params = trained(tiny(*method, "trainer.gradient_checkpointing=true"), glue_dir, cache_dir)
    assert len(calls) == 2 * 8  # each of the 2 layers in each of the 8 training forwards
    assert ckpt == ref
    assert all(torch.equal(params[k], ref_params[k]) for k in params)


@pytest.mark.slow
@pytest.mark.needs_glue
@pytest.mark.parametrize("method", [("method=lora",), ("method=c3a", "method.block_size=8", "method.blocks=null")])
def test_compiled_training_agrees_with_eager_in_bounded_graphs(method: tuple[str, ...], glue_dir: Path, cache_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each 70-150 s cold, 15-40 s with inductor's on-disk cache warm: trainer.compile=true with
    lengths bucketed to multiples of 16 (at most 32 tokens: 2 lengths) trains as the eager run,
    train loss within 1e-4 relative (padding and fused kernels round differently), and compiles
    at most two graphs per (batch size, bucketed length) pair it meets, whatever the number of
    batches; C3A's layers compute alone under compile (their query/value sharing would break the
    graph). No dropout: compiled dropout draws other masks."""
    from torch._dynamo.utils import counters

    from runners import train

    short = (*method, "task=cola", "data.max_seq_len=32", "data.max_train_samples=64")
    eager, _ = trained(tiny(*short, dropout=0.0), glue_dir, cache_dir)
    torch._dynamo.reset()
    counters.clear()
    shapes, step = set(), train.Step.__call__
    monkeypatch.setattr(train.Step, "__call__",
                        lambda self, b: shapes.add(tuple(b["input_ids"].shape)) or step(self, b))
    compiled, _ = trained(tiny(*short, "trainer.compile=true", "trainer.compile_bucket=16", dropout=0.0),
                          glue_dir, cache_dir)
    assert all(length % 16 == 0 for _, length in shapes) and len(shapes) == 2  # 8 steps, 2 shapes
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    # whole-forward graphs (no graph break), a bounded number: per shape, one plus at most one
    # recompile (a guard the first evaluation's train()/eval() toggle may fail), not one per batch
    assert not counters["unimplemented"] and counters["frames"]["ok"] == counters["frames"]["total"]
    assert len(shapes) <= counters["stats"]["unique_graphs"] <= 2 * len(shapes)


def test_deterministic_runs_our_layers_on_deterministic_kernels(glue_dir: Path, cache_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.deterministic=true turns on torch's deterministic kernels (warn-only), cuBLAS's
    fixed workspace and CUDA attention's math kernel for the run, and the next run in the process
    gets torch's defaults back.
    C3A (FFTs, shared query/value input) and qGOFT (scatters into the stage matrices) train on
    it without one nondeterminism warning; on CPU the numbers equal the default run's."""
    import warnings

    from runners.job import device_of

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        for method in (("method=c3a", "method.block_size=8", "method.blocks=null"), ("method=qgoft",)):
            cfg = tiny(*method, "trainer.deterministic=true")
            device_of(cfg)
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            sdpa = torch.backends.cuda  # CUDA attention: only the math kernel's backward is deterministic
            assert not (sdpa.flash_sdp_enabled() or sdpa.mem_efficient_sdp_enabled() or sdpa.cudnn_sdp_enabled())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                history, _ = trained(cfg, glue_dir, cache_dir)
            assert not [w for w in caught if "deterministic" in str(w.message)], [str(w.message) for w in caught]
            device_of(default := tiny(*method))
            assert not torch.are_deterministic_algorithms_enabled()
            assert sdpa.flash_sdp_enabled() and sdpa.mem_efficient_sdp_enabled() and sdpa.cudnn_sdp_enabled()
            assert losses(history) == losses(trained(default, glue_dir, cache_dir)[0])
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        device_of(tiny())


@pytest.mark.parametrize("fraction", ["0.3", "1"])
def test_gpu_memory_fraction_reaches_torch_as_torch_takes_it(fraction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.set_per_process_memory_fraction takes a float and a device index: `cuda` alone
    has no index, and `trainer.gpu_memory_fraction=1` composes as an int. Either failed every
    capped run on a GPU before it started; torch's own argument checks stand in for the GPU."""
    from torch.cuda._utils import _get_device_index

    from runners.job import device_of

    calls = []

    def set_fraction(value: float, device: object = None) -> None:
        calls.append((_get_device_index(device), value))  # raises for a device without an index
        if not isinstance(value, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")  # torch's check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    assert device_of(tiny("trainer.device=cuda", f"trainer.gpu_memory_fraction={fraction}")).type == "cuda"
    assert calls == [(0, float(fraction))]
