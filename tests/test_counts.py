"""Trainable-parameter counts (head excluded) equal the paper's exact numbers."""

from __future__ import annotations

import pytest

from conftest import compose, last_line
from runners.job import adapted_model

PAPER = {  # ../shared/reference/c3a_table2_paper.csv (trainable_params_exact) and METHODS.md
    ("roberta-base", "bitfit"): 102144,
    ("roberta-base", "ia3"): 110592,
    ("roberta-base", "lora"): 294912,
    ("roberta-base", "vera"): 43008,
    ("roberta-base", "boft"): 165888,
    ("roberta-base", "c3a_b1"): 18432,
    ("roberta-base", "c3a_b6"): 110592,
    ("roberta-base", "qgoft"): 331488,
    ("roberta-base", "goft"): 82872,
    ("roberta-large", "bitfit"): 271360,
    ("roberta-large", "ia3"): 294912,
    ("roberta-large", "lora"): 786432,
    ("roberta-large", "vera"): 61440,
    ("roberta-large", "boft"): 442368,
    ("roberta-large", "c3a_b1"): 49152,
    ("roberta-large", "c3a_b8"): 393216,
}
QGOFT_TABLE = {  # deberta-v3-base rows of the qGOFT paper's GLUE table (issue 11's contract)
    "goft": 82872,       # 6 linears x 12 layers x (d - 1) Givens angles (d = 768, 3072 for ffn_out)
    "qgoft": 331488,     # 4 free entries per Givens pair
    "lora_r2": 331776,   # 12 layers x 2 x (4 x (768+768) + 2 x (768+3072))
    "oft_b8": 290304,    # 12 layers x 28 free entries per 8x8 block x (5 x 96 + 384) blocks (PEFT 0.21)
    "full": 183831552,   # the backbone without pooler and classifier
}


@pytest.mark.parametrize(("model", "method"), list(PAPER))
def test_count_matches_paper(model: str, method: str) -> None:
    cfg = compose(f"model={model}", f"method={method}", "model.pretrained=false", "mode=count")
    adapted = adapted_model(cfg)
    assert adapted.trainable_params == PAPER[model, method]
    # the head is trained but not counted
    assert adapted.head and all(p.requires_grad for p in adapted.head)


def test_full_counts_every_backbone_parameter() -> None:
    """Against RoBERTa-base's architecture written out (hub config: vocab 50265, 514 positions,
    1 token type, d = 768, ffn 3072, 12 layers; no pooler in RobertaForSequenceClassification)."""
    d, ffn, layers, labels = 768, 3072, 12, 2  # task=rte: 2 labels

    def linear(i: int, o: int) -> int:  # weight + bias
        return i * o + o

    embeddings = (50265 + 514 + 1) * d + 2 * d  # word, position, token type, LayerNorm
    layer = 4 * linear(d, d) + 2 * d + linear(d, ffn) + linear(ffn, d) + 2 * d  # q, k, v, out, LN, ffn, LN
    head = linear(d, d) + linear(d, labels)  # RobertaClassificationHead: dense, out_proj
    assert embeddings + layers * layer == 124_055_040  # roberta-base's 124,645,632 less its 590,592 pooler
    cfg = compose("model=roberta-base", "method=full", "model.pretrained=false", "task=rte")
    adapted = adapted_model(cfg)
    assert adapted.trainable_params == embeddings + layers * layer
    assert sum(p.numel() for p in adapted.model.parameters()) - adapted.trainable_params == head


def test_count_contract_through_run_py(run_cli) -> None:
    proc = run_cli("mode=count", "method=lora", "model=roberta-base", "model.pretrained=false")
    assert last_line(proc.stdout) == "trainable_params: 294912"


@pytest.mark.parametrize("attn", [None, "eager"])
def test_attention_implementation_is_configurable(attn: str | None) -> None:
    """The memory plan sets eager attention (the paper's era); unset = transformers' default."""
    extra = [f"+model.attn_implementation={attn}"] if attn else []
    cfg = compose("model=roberta-base", "method=c3a_b6", "model.pretrained=false", *extra)
    model = adapted_model(cfg).model
    assert model.config._attn_implementation == (attn or "sdpa")


@pytest.mark.parametrize("method", [m for m in QGOFT_TABLE if m != "oft_b8"])
def test_qgoft_table_counts_on_deberta(method: str) -> None:
    cfg = compose("model=deberta-v3-base", f"method={method}", "model.pretrained=false", "mode=count")
    assert adapted_model(cfg).trainable_params == QGOFT_TABLE[method]


@pytest.mark.slow
def test_qgoft_table_count_contract_through_run_py(run_cli) -> None:
    proc = run_cli("mode=count", "method=oft_b8", "model=deberta-v3-base", "model.pretrained=false")
    assert last_line(proc.stdout) == f"trainable_params: {QGOFT_TABLE['oft_b8']}"


def test_distilbert_counts_by_hand() -> None:
    """LoRA r=8 on q_lin/v_lin of DistilBERT's 6 layers: 6 x 2 x 8 x (768 + 768)."""
    cfg = compose("model=distilbert-base", "method=lora", "model.pretrained=false")
    assert adapted_model(cfg).trainable_params == 6 * 2 * 8 * (768 + 768)


@pytest.mark.slow
def test_memory_mode_for_every_qgoft_table_row_on_deberta(run_cli, tmp_path) -> None:
    """mode=memory on deberta-v3-base for each row, at a CPU-sized input (64 x 256 is the GPU setting)."""
    import json

    rows = ",".join(QGOFT_TABLE)
    proc = run_cli("mode=memory", "model=deberta-v3-base", "model.pretrained=false", f"method={rows}",
                   "memory.batch_size=2", "memory.seq_len=16", "memory.steps=1", multirun=True)
    assert proc.stdout.count("peak_memory_gb: ") == len(QGOFT_TABLE), proc.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    found = {r["method"]: r for r in records if r.get("mode") == "memory"}
    assert {m: r["trainable_params"] for m, r in found.items()} == QGOFT_TABLE
    assert all(r["peak_memory_gb"] > 0 and r["batch_size"] == 2 and r["seq_len"] == 16 for r in found.values())
