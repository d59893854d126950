"""Hydra composition: paper presets are data, command-line keys win, methods stay one interface."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import ROOT, compose

REFERENCE = ROOT.parent / "shared" / "reference"


def _rows(name: str) -> list[dict]:
    with open(REFERENCE / name) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row", _rows("c3a_glue_hparams_paper.csv"), ids=lambda r: f"{r['model']}-{r['task']}")
def test_c3a_paper_preset(row: dict) -> None:
    method = "c3a_b6" if row["model"] == "roberta-base" else "c3a_b8"
    cfg = compose(f"model={row['model']}", f"method={method}", f"task={row['task']}")
    t = cfg.trainer
    assert (t.epochs, t.batch_size) == (int(row["epochs"]), int(row["batch_size"]))
    assert (t.lr, t.lr_head, t.warmup_ratio) == (float(row["lr_adapter"]), float(row["lr_head"]),
                                                 float(row["warmup_ratio"]))
    assert cfg.data.max_seq_len == int(row["max_seq_len"])
    assert cfg.method.init == row["init"]


def test_command_line_beats_preset() -> None:
    cfg = compose("model=roberta-base", "method=c3a_b6", "task=rte", "trainer.lr=0.01", "trainer.epochs=2")
    assert (cfg.trainer.lr, cfg.trainer.epochs, cfg.trainer.lr_head) == (0.01, 2, 6e-3)


def test_minilm_uses_roberta_base_rows() -> None:
    cfg = compose("model=minilm", "method=c3a_b1", "task=mrpc")
    assert (cfg.trainer.lr, cfg.trainer.lr_head, cfg.trainer.epochs) == (0.3, 4e-6, 80)


@pytest.mark.parametrize("row", _rows("qgoft_glue_hparams_paper.csv"), ids=lambda r: r["task"])
def test_qgoft_paper_preset(row: dict) -> None:
    if row["task"] in ("mnli", "qqp"):
        pytest.skip("not a Table 2 task")
    q = compose("method=qgoft", f"task={row['task']}")
    g = compose("method=goft", f"task={row['task']}")
    assert q.trainer.lr == float(row["lr_qgoft"]) and g.trainer.lr == float(row["lr_goft"])
    assert q.method.reg_lambda == float(row["lambda_qgoft"]) and g.method.reg_lambda == 0.0
    assert q.trainer.epochs == int(row["epochs"]) and q.trainer.batch_size == 32
    assert q.method.no_decay == ["givens_"]


def test_baselines_use_trainer_defaults() -> None:
    default = compose("method=lora").trainer
    for method in ("bitfit", "ia3", "vera", "boft", "full"):
        assert compose(f"method={method}").trainer == default


def test_vera_rank_follows_the_model() -> None:
    assert compose("model=roberta-base", "method=vera").method.peft_config.r == 1024
    assert compose("model=roberta-large", "method=vera").method.peft_config.r == 256


def test_every_method_config_applies(tmp_path: Path) -> None:
    """Each method file composes and goes through apply_method on a tiny real config."""
    from runners.job import adapted_model

    for path in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        cfg = compose(f"method={path.stem}", "model=minilm", "model.pretrained=false")
        adapted = adapted_model(cfg)
        assert adapted.trainable_params > 0 and adapted.head, path.stem
