"""A run's identity (runners/identity.py, conf/identity.yaml): what changes it and what must not,
every committed record found by its relaunch, the migration of records, and mode=identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, cli, compose, last_line, run_command
from runners import identity, migrate, paths, record
from runners.analysis import select
from runners.identity import identity_view

GLUE_RESULTS = ROOT / "results" / "minilm_glue"
# each committed records folder and the results_dir its runs were launched with (mode=memory
# records live in <results_dir>/memory/)
COMMITTED = {GLUE_RESULTS / "runs": GLUE_RESULTS / "runs", GLUE_RESULTS / "pilot": GLUE_RESULTS / "pilot",
             GLUE_RESULTS / "memory": GLUE_RESULTS}
BASE = ["model=minilm", "method=lora", "task=mrpc", "results_dir=runs"]


def committed_records() -> list[tuple[Path, dict]]:
    """Every committed record that holds the command that made it."""
    found = [(p, record.read(p)) for folder in COMMITTED for p in sorted(folder.rglob("*.json"))]
    return [(p, r) for p, r in found if r.get("overrides") is not None]


def test_every_committed_record_is_found_by_its_relaunch() -> None:
    """Each committed record's own command (its `overrides`, results_dir pointing at its folder),
    composed today, names that record: a relaunch skips every finished run. Guards every change
    to conf/ and to the identity rule. The seeds of one command are composed once (nothing in
    conf/ or sweeps/ interpolates the seed); about 15 s on an idle machine."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runners.config import register_resolvers

    assert not [p for d in ("conf", "sweeps") for p in (ROOT / d).rglob("*.yaml") if "${seed" in p.read_text()]
    register_resolvers()
    records = committed_records()
    assert len(records) == 223  # 150 table runs, 63 pilot runs, 10 memory runs
    commands: dict[tuple[str, ...], list[tuple[Path, dict]]] = {}
    for path, rec in records:
        folder = next(f for f in COMMITTED if f in path.parents)
        kept = [o for o in rec["overrides"] if not o.startswith(("results_dir=", "seed="))]
        commands.setdefault((*kept, f"results_dir={COMMITTED[folder]}"), []).append((path, rec))
    lost = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for command, runs in commands.items():
            cfg = hydra_compose("config", overrides=list(command))
            for path, rec in runs:
                cfg.seed = rec["seed"]
                if paths.record_path(cfg) != path:
                    lost.append(f"{path.relative_to(ROOT)} -> {paths.record_path(cfg).name}")
    assert not lost, f"{len(lost)} records not found by their relaunch, e.g. {lost[:3]}"


@pytest.mark.parametrize("change", [
    "memory.steps=4",                 # no training run reads the memory block
    "task.train_rows=1",              # metadata for cost estimates
    "+trainer.new_option=null",       # a new option, off by default
    "+data.new_block.option=null",    # a new block of them
    "model.family.model_types=[bert,other]",  # what model=hub reads
    "model.family.head=[classifier]",
    "model.paper_row=roberta-large",  # steers presets; their values are in the config
    "trainer.num_threads=1", "trainer.checkpoint.every_steps=5", "model.local_dir=/elsewhere", "lock.refresh_s=1",
    "trainer.gradient_checkpointing=true", "trainer.gpu_memory_fraction=0.3",  # same numbers (docs/device.md)
])
def test_what_leaves_the_identity_unchanged(change: str) -> None:
    assert paths.record_path(compose(*BASE, change)) == paths.record_path(compose(*BASE))


@pytest.mark.parametrize("change", [
    "seed=1", "trainer.lr=0.002", "trainer.lr_head=0.002", "method.peft_config.r=4", "data.max_seq_len=128",
    "protocol=dev_halves", "protocol.split_seed=1", "task.splits.test.tsv=other.tsv", "task.label_names=[1,0]",
    "task.metric=f1", "model.name_or_path=someone/other", "trainer.precision=bf16", "data.max_train_samples=100",
    "+trainer.new_option=0.1",        # a new option set away from off
    "trainer.compile=true", "trainer.grad_accum_steps=2",  # other rounding (docs/device.md)
    "trainer.deterministic=true",     # other kernels
])
def test_what_changes_the_identity(change: str) -> None:
    assert identity.identity(compose(*BASE, change)) != identity.identity(compose(*BASE))


def test_the_memory_block_is_part_of_a_memory_run() -> None:
    memory = [*BASE, "mode=memory"]
    assert identity.identity(compose(*memory, "memory.steps=4")) != identity.identity(compose(*memory))


def test_a_declared_neutral_value_leaves_the_identity_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option whose off value is not null: declared under `neutral`, it behaves as null does."""
    rule = identity.identity_rule()
    monkeypatch.setattr(identity, "identity_rule", lambda: {**rule, "neutral": {"trainer.label_smoothing": 0.0}})
    assert identity.identity(compose(*BASE, "+trainer.label_smoothing=0.0")) == identity.identity(compose(*BASE))
    assert identity.identity(compose(*BASE, "+trainer.label_smoothing=0.1")) != identity.identity(compose(*BASE))


def test_every_named_model_names_its_head() -> None:
    """Why a family's `head` is metadata: only a model without head_modules (model=hub) reads it."""
    for path in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        cfg = compose(f"model={path.stem}", "model.pretrained=false")
        assert cfg.model.head_modules or cfg.model.family is None, path.name


def test_tables_group_seeds_by_the_identity_rule() -> None:
    """Seeds of one setting written before and after an upgrade (a new null option, edited
    metadata) form one setting; another method option forms another."""
    old = record.read(committed_records()[0][0])
    new = json.loads(json.dumps(old))
    new["config"]["trainer"]["new_option"] = None
    new["config"]["task"]["train_rows"] = 1
    new["config"]["memory"]["steps"] = 9
    new["config"]["seed"] = old["config"]["seed"] + 1
    assert select.setting_key(new) == select.setting_key(old)
    new["config"]["trainer"]["warmup_ratio"] = 0.2
    assert select.setting_key(new) != select.setting_key(old)


def test_identity_view_is_the_same_from_a_config_and_from_its_record() -> None:
    cfg = compose(*BASE)
    assert identity_view(cfg) == identity_view(record.resolved(cfg))


@pytest.mark.parametrize(("overrides", "read", "value"), [
    (("model=roberta-base", "method=c3a_b6", "task=rte"), "trainer.lr", 0.3),    # conf/paper/c3a_glue.csv
    (("model=roberta-large", "method=vera", "task=rte"), "method.peft_config.r", 256),  # vera_glue.csv
])
def test_what_a_preset_reads_from_metadata_is_part_of_the_identity(overrides: tuple, read: str, value: float) -> None:
    """model.paper_row is metadata, yet the C3A preset (trainer.*) and VeRA's rank read it: the
    identity resolves them before leaving it out, as the run's record holds them. About 1 s."""
    cfg = compose(*overrides)
    view = identity_view(cfg)
    assert identity.flatten(view)[read] == value and "model.paper_row" not in identity.flatten(view)
    assert view == identity_view(record.resolved(cfg))


def _old_names(folder: Path) -> list[Path]:
    """Give every record under `folder` a name from another rule (as an older harness would)."""
    olds = []
    for i, path in enumerate(sorted(folder.rglob("*.json"))):
        old = path.with_name(path.name.rsplit("-", 1)[0] + f"-{i:012x}.json")
        path.rename(old)
        olds.append(old)
    return olds


def test_migrate_renames_once_and_the_tables_stay_byte_identical(tmp_path: Path, capsys) -> None:
    """Records named by another rule are renamed to their identity, with their checkpoint and
    saved model (and `saved_model`); the tables are the same bytes before and after; a second
    migration renames nothing. (About 5 s.)"""
    from runners.analysis import table

    runs = tmp_path / "runs"
    shutil.copytree(GLUE_RESULTS / "runs", runs)
    olds = _old_names(runs)
    rec = record.read(olds[0])
    model = olds[0].with_suffix(paths.MODEL_SUFFIX)
    (model / "adapter").mkdir(parents=True)
    olds[0].with_suffix(paths.CHECKPOINT_SUFFIX).mkdir()
    olds[0].write_text(json.dumps({**rec, "saved_model": str(model)}))

    def tables(out: Path) -> dict[str, bytes]:
        assert table.main(["--layout", "minilm_glue", "--runs", str(runs), "--out", str(out)]) in (0, None)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    before = tables(tmp_path / "before")
    assert migrate.main([str(runs), "--dry-run"]) == 0
    assert all(p.is_file() for p in olds)  # a dry run changes nothing
    assert migrate.main([str(runs)]) == 0
    assert f"{len(olds)} renamed" in capsys.readouterr().out
    assert tables(tmp_path / "after") == before
    new = runs / olds[0].relative_to(runs).parent / paths.record_name(rec["config"])
    assert record.read(new)["saved_model"] == str(new.with_suffix(paths.MODEL_SUFFIX))
    assert (new.with_suffix(paths.MODEL_SUFFIX) / "adapter").is_dir() and new.with_suffix(".ckpt").is_dir()
    assert not any(p.exists() for p in olds)
    assert migrate.main([str(runs)]) == 0
    assert "0 renamed" in capsys.readouterr().out


def test_migrate_stops_on_two_records_of_one_identity(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    src = committed_records()[0][0]
    cell = runs / "train" / "minilm" / "x"
    cell.mkdir(parents=True)
    a, b = (cell / src.name.replace(src.name.rsplit("-", 1)[1], f"{i:012x}.json") for i in (1, 2))
    shutil.copy(src, a)
    shutil.copy(src, b)
    assert migrate.main([str(runs)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert a.name in err and b.name in err and paths.record_name(record.read(src)["config"]) in err
    assert a.is_file() and b.is_file()  # nothing renamed


def test_mode_identity_prints_the_keys_and_why_a_relaunch_would_not_skip(tmp_path: Path) -> None:
    """`mode=identity` (a subprocess of run.py; a few seconds) loads no data and no model, and
    imports no torch (`-X importtime` lists every module imported): it prints the identity's
    keys, its hash, whether a finished record holds it and, when none does, how the records
    beside it differ."""
    path, rec = committed_records()[0]
    folder = next(f for f in COMMITTED if f in path.parents)
    overrides = [o for o in rec["overrides"] if not o.startswith("results_dir=")]
    cmd = cli(*overrides, "mode=identity", f"results_dir={COMMITTED[folder]}", "trainer.warmup_ratio=0.5",
              f"hydra.run.dir={tmp_path}")
    first = run_command([cmd[0], "-X", "importtime", *cmd[1:]], tmp_path, timeout=300)
    imported = {line.rsplit("|", 1)[1].strip() for line in first.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "torch" not in imported
    out = first.stdout
    assert "  trainer.warmup_ratio: 0.5" in out and "  seed: " in out and "memory.steps" not in out
    assert "not found: a relaunch trains this run" in out
    assert f"{path.name} differs in trainer.warmup_ratio: here 0.5, there 0.06" in out
    assert last_line(out).startswith("record: ") and not (tmp_path / "runs").exists()

    proc = run_command(cmd[:-2] + cmd[-1:], tmp_path, timeout=300)
    assert "found: a finished record; a relaunch skips it" in proc.stdout
    assert last_line(proc.stdout) == f"record: {path}"
    assert f"identity: {path.stem.rsplit('-', 1)[1]} " in proc.stdout
