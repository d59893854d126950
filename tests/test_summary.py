"""What a run prints before it trains, in process: the start-of-run summary (runners/summary.py)
and no third-party deprecation nobody can act on. Its place in a real run's output, before the
progress bar and with `record:` last: tests/test_run_e2e.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers
from packaging import version

from conftest import compose
from runners import summary
from runners.job import adapted_model

# 54 training rows in batches of 8: 7 steps an epoch, 14 in two, evaluated at steps 5, 10 and 14
CFG = ["model=minilm", "model.pretrained=false", "method=lora", "task=qqp", "data.max_seq_len=64", "seed=3",
       "trainer.batch_size=8", "trainer.epochs=2", "trainer.eval_every_steps=5", "trainer.num_threads=1",
       "trainer.lr=2e-3", "trainer.lr_head=5e-4", "trainer.device=cpu"]
UNLOADED = [
    "model:     minilm: sentence-transformers/all-MiniLM-L6-v2 (random weights, model.pretrained=false)",
    "method:    lora",
    "task:      qqp, protocol train_val_dev_test, seed 3",
    "training:  2 epochs, batch 8, max length 64, lr 0.002, head lr 0.0005, fp32",
]


@pytest.fixture(scope="module")
def cfg():
    return compose(*CFG)


def test_summary_before_and_after_loading(cfg, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    summary.show(cfg, path)  # a skipped run: nothing loaded, the caller closes with the record line
    assert capsys.readouterr().out.splitlines() == [*UNLOADED, "device:    cpu, 1 thread"]

    loaded = summary.Loaded(adapted_model(cfg), {"train": 54, "validation": 6, "test": 30},
                            {"QQP/train.tsv": 3}, torch.device("cpu"), resumed_from=10)
    summary.show(cfg, path, loaded, summary.Estimate(200.0, "cpu-1t"))
    assert capsys.readouterr().out.splitlines() == [
        *UNLOADED,
        "device:    cpu, 1 thread",
        # LoRA r=8 on MiniLM's 6 x (query, value), 384 wide: 6 x 2 x 8 x (384 + 384)
        "trainable: 73,728 parameters, head excluded: query, value x 6 layers",
        "data:      train 54 / validation 6 / test 30; skipped 3 rows with missing fields in QQP/train.tsv",
        "steps:     14 (2 epochs of 7 steps), 3 evaluation points (every 5 steps and at the last)",
        "resume:    continuing from step 10",
        "estimate:  about 3 min (calibration cpu-1t)",
        f"record:    {path}",
    ]
    summary.show(cfg, path, summary.Loaded(loaded.adapted, loaded.sizes, None, loaded.device))
    lines = capsys.readouterr().out.splitlines()
    assert lines[5:] == ["trainable: 73,728 parameters, head excluded: query, value x 6 layers",
                         "data:      train 54 / validation 6 / test 30; no rows skipped",
                         "steps:     14 (2 epochs of 7 steps), 3 evaluation points (every 5 steps and at the last)",
                         f"record:    {path}"]  # a fresh start without an estimate


def test_peft_method_hides_only_the_is_gradient_checkpointing_warning(
        cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model (built,
    and again when saved): that FutureWarning is hidden, another one raised there still shows.
    Older transformers releases (5.17, the GPU machine's) do not deprecate it: nothing to hide."""
    import peft

    wrap = peft.get_peft_model

    def wrap_and_warn(*args, **kwargs):
        wrapped = wrap(*args, **kwargs)
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
        return wrapped

    monkeypatch.setattr(peft, "get_peft_model", wrap_and_warn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pytest's configuration ignores FutureWarning
        adapted = adapted_model(cfg)
        adapted.save(tmp_path / "adapter")
        shown = [str(w.message) for w in caught]
        _ = adapted.model.get_base_model().is_gradient_checkpointing  # transformers still warns so
    assert shown == ["another deprecation", "another deprecation"], shown
    if version.parse(transformers.__version__) >= version.parse("5.25"):  # deprecated there: reading it warns
        assert str(caught[-1].message).startswith("`is_gradient_checkpointing` is deprecated"), "the setting is stale"
