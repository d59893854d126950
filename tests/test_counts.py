"""Trainable-parameter counts (head excluded): the papers' exact numbers on the real-size configs
(one parametrized test), and the rules behind them on small configs of the same families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_roles import DISTIL_SMALL, SMALL

from conftest import compose, last_line
from runners.job import adapted_model, measure_memory

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
    # deberta-v3-base rows of the qGOFT paper's GLUE table (issue 11's contract)
    ("deberta-v3-base", "goft"): 82872,  # 6 linears x 12 layers x (d - 1) Givens angles (d = 768; 3072: ffn_out)
    ("deberta-v3-base", "qgoft"): 331488,     # 4 free entries per Givens pair
    ("deberta-v3-base", "lora_r2"): 331776,   # 12 layers x 2 x (4 x (768+768) + 2 x (768+3072))
    ("deberta-v3-base", "oft_b8"): 290304,    # 12 layers x 28 free entries per 8x8 block x (5 x 96 + 384) blocks
    ("deberta-v3-base", "full"): 183831552,   # the backbone without pooler and classifier
}
QGOFT_ROWS = [method for model, method in PAPER if model == "deberta-v3-base"]
# The count reads shapes, not values, so the real-size models are built on the meta device (no
# memory, no initialisation); PEFT's BOFT reads a value while it initialises, so it is built on CPU.
NEEDS_VALUES = {"boft"}
DEBERTA_SMALL = [*SMALL, "model.config.pooler_hidden_size=96"]


@pytest.mark.parametrize(("model", "method"), list(PAPER))
def test_count_matches_paper(model: str, method: str) -> None:
    cfg = compose(f"model={model}", f"method={method}", "model.pretrained=false", "mode=count")
    with torch.device("cpu" if method in NEEDS_VALUES else "meta"):
        adapted = adapted_model(cfg)
    assert adapted.trainable_params == PAPER[model, method]
    # the head is trained but not counted
    assert adapted.head and all(p.requires_grad for p in adapted.head)


def roberta_backbone(vocab: int, positions: int, d: int, ffn: int, layers: int) -> int:
    """RoBERTa's parameters without its pooler and head, written out from its architecture."""

    def linear(i: int, o: int) -> int:  # weight + bias
        return i * o + o

    embeddings = (vocab + positions + 1) * d + 2 * d  # word, position, token type (1), LayerNorm
    layer = 4 * linear(d, d) + 2 * d + linear(d, ffn) + linear(ffn, d) + 2 * d  # q, k, v, out, LN, ffn, LN
    return embeddings + layers * layer


def test_full_counts_every_backbone_parameter() -> None:
    """Against RoBERTa's architecture written out, on a small config of the family (vocab 1000,
    514 positions, d = 96, ffn 192, 2 layers; no pooler in RobertaForSequenceClassification)."""
    # the formula at roberta-base's hub config: its 124,645,632 less its 590,592 pooler
    assert roberta_backbone(50265, 514, 768, 3072, 12) == 124_055_040
    cfg = compose("model=roberta-base", "method=full", "model.pretrained=false", "task=rte", *SMALL)
    adapted = adapted_model(cfg)
    assert adapted.trainable_params == roberta_backbone(1000, 514, 96, 192, 2)
    head = (96 * 96 + 96) + (96 * 2 + 2)  # RobertaClassificationHead: dense, out_proj (task=rte: 2 labels)
    assert sum(p.numel() for p in adapted.model.parameters()) - adapted.trainable_params == head


def test_count_contract_through_run_py(run_cli) -> None:
    """LoRA r=8 on query and value of 2 layers, d = 96: 2 x 2 x 8 x (96 + 96)."""
    proc = run_cli("mode=count", "method=lora", "model=roberta-base", "model.pretrained=false", *SMALL)
    assert last_line(proc.stdout) == "trainable_params: 6144"


@pytest.mark.parametrize("attn", [None, "eager"])
def test_attention_implementation_is_configurable(attn: str | None) -> None:
    """The memory plan sets eager attention (the paper's era); unset = transformers' default."""
    extra = [f"+model.attn_implementation={attn}"] if attn else []
    cfg = compose("model=roberta-base", "method=c3a_b6", "model.pretrained=false", *SMALL, *extra)
    model = adapted_model(cfg).model
    assert model.config._attn_implementation == (attn or "sdpa")


def test_distilbert_counts_by_hand() -> None:
    """LoRA r=8 on q_lin/v_lin of 2 DistilBERT layers, d = 96: 2 x 2 x 8 x (96 + 96)."""
    cfg = compose("model=distilbert-base", "method=lora", "model.pretrained=false", *DISTIL_SMALL)
    assert adapted_model(cfg).trainable_params == 2 * 2 * 8 * (96 + 96)


@pytest.mark.parametrize("method", QGOFT_ROWS)
def test_memory_step_for_every_qgoft_table_row_on_deberta(method: str) -> None:
    """mode=memory's measurement (the training step at a fixed input) runs for each row on a
    small DeBERTa, in this process, and reports the count mode=count gives."""
    cfg = compose("model=deberta-v3-base", f"method={method}", "model.pretrained=false", "mode=memory",
                  *DEBERTA_SMALL, "memory.batch_size=2", "memory.seq_len=16", "memory.steps=1")
    result = measure_memory(OmegaConf.to_container(cfg, resolve=True))
    assert result["trainable_params"] == adapted_model(cfg).trainable_params > 0
    assert (result["batch_size"], result["seq_len"], result["device"]) == (2, 16, "cpu")


@pytest.mark.slow
def test_memory_mode_through_run_py(run_cli, tmp_path: Path) -> None:
    """mode=memory on DeBERTa through run.py: a fresh process measures, the peak is printed last
    and recorded with the input size and the count (one qGOFT-table row, a CPU-sized input)."""
    proc = run_cli("mode=memory", "model=deberta-v3-base", "model.pretrained=false", "method=qgoft", *DEBERTA_SMALL,
                   "memory.batch_size=2", "memory.seq_len=16", "memory.steps=1")
    assert last_line(proc.stdout).startswith("peak_memory_gb: "), proc.stdout
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    cfg = compose("model=deberta-v3-base", "model.pretrained=false", "method=qgoft", *DEBERTA_SMALL)
    assert rec["mode"] == "memory" and rec["trainable_params"] == adapted_model(cfg).trainable_params
    assert rec["peak_memory_gb"] > 0 and rec["batch_size"] == 2 and rec["seq_len"] == 16


def test_a_relaunched_memory_measurement_is_skipped_unless_forced(job) -> None:
    """A finished mode=memory record is found by its relaunch: skipped without measuring (a
    relaunched memory plan spends no device time on it), the record untouched and its peak
    printed last as a measurement prints it; force=true measures again."""
    args = ("mode=memory", "model=deberta-v3-base", "model.pretrained=false", "method=qgoft", *DEBERTA_SMALL,
            "memory.batch_size=2", "memory.seq_len=16", "memory.steps=1")
    first = job(*args)
    path = Path(first.result["record"])
    written = path.read_bytes()
    again = job(*args)
    assert again.result == {"status": "skipped", "record": str(path)}
    assert "skipped: an identical finished measurement exists" in again.out
    assert path.read_bytes() == written
    assert last_line(again.out) == last_line(first.out) == f"peak_memory_gb: {first.record['peak_memory_gb']:.3f}"
    forced = job(*args, "force=true")
    assert forced.result["status"] == "finished" and "skipped" not in forced.out
