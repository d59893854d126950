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


@pytest.mark.parametrize(("model", "method"), list(PAPER))
def test_count_matches_paper(model: str, method: str) -> None:
    cfg = compose(f"model={model}", f"method={method}", "model.pretrained=false", "mode=count")
    adapted = adapted_model(cfg)
    assert adapted.trainable_params == PAPER[model, method]
    # the head is trained but not counted
    assert adapted.head and all(p.requires_grad for p in adapted.head)


def test_full_counts_every_backbone_parameter() -> None:
    cfg = compose("model=roberta-base", "method=full", "model.pretrained=false")
    adapted = adapted_model(cfg)
    total = sum(p.numel() for p in adapted.model.parameters())
    head = sum(p.numel() for p in adapted.head)
    assert adapted.trainable_params == total - head


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
