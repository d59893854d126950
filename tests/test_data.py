"""GLUE TSV reading, the protocol's splits and tokenization, on the real GLUE rows (and on files written
here that reproduce the TSV pitfalls: quotes as text, a BOM, no header)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import compose
from runners.data import prepare
from runners.errors import HarnessError
from runners.glue import load_glue, read_tsv, split

# (task, train rows, dev rows) = data lines of the real files (headers excluded)
SIZES = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043), "stsb": (5749, 1500), "sst2": (67349, 872)}


def _lines(path: Path) -> int:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("task", list(SIZES))
def test_reads_every_row(task: str, glue_dir: Path) -> None:
    cfg = compose(f"task={task}", f"data.dir={glue_dir}")
    sets, skipped = load_glue(cfg.task, cfg.data)
    train, dev = sets["train"], sets["test"]
    assert list(sets) == ["train", "test"] and skipped == {}  # no task of these skips a row
    header = 1 if cfg.task.tsv.header else 0
    assert len(train["label"]) == _lines(glue_dir / cfg.task.glue_dir / "train.tsv") - header == SIZES[task][0]
    assert len(dev["label"]) == SIZES[task][1]
    assert cfg.task.train_rows == SIZES[task][0]  # the declared size (cost estimates) is the file's
    assert all(len(train[k]) == len(train["label"]) for k in cfg.task.text_keys)


def test_rows_parse_as_in_the_files(glue_dir: Path) -> None:
    cfg = compose("task=mrpc")
    train, _ = read_tsv(glue_dir / "MRPC" / "train.tsv", cfg.task)
    # first data row of MRPC train (the file starts with a BOM: the header must still parse)
    assert train["label"][0] == 1
    assert train["sentence1"][0].startswith("Amrozi accused his brother")
    # a quote character inside a row must not swallow the next rows (QUOTE_NONE)
    assert any('"' in s for s in train["sentence1"])
    stsb, _ = read_tsv(glue_dir / "STS-B" / "train.tsv", compose("task=stsb").task)
    assert stsb["label"][0] == 5.0 and stsb["sentence2"][0] == "An air plane is taking off."
    cola, _ = read_tsv(glue_dir / "CoLA" / "train.tsv", compose("task=cola").task)
    assert cola["sentence"][0].startswith("Our friends won't buy this analysis")
    rte, _ = read_tsv(glue_dir / "RTE" / "train.tsv", compose("task=rte").task)
    assert set(rte["label"]) == {0, 1}  # entailment=0, not_entailment=1 (the hub's order)


def test_missing_train_file_is_named(tmp_path: Path, glue_dir: Path) -> None:
    """A GLUE copy holding only QNLI's dev.tsv (its first 10 real rows): loading QNLI names the missing
    train.tsv, whatever the shared copy holds; the dev file alone still reads."""
    (tmp_path / "QNLI").mkdir()
    head = (glue_dir / "QNLI" / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:11]
    (tmp_path / "QNLI" / "dev.tsv").write_text("".join(head), encoding="utf-8")
    cfg = compose("task=qnli", f"data.dir={tmp_path}")
    missing = tmp_path / "QNLI" / "train.tsv"
    with pytest.raises(HarnessError, match=f"^GLUE file not found: {re.escape(str(missing))}$"):
        load_glue(cfg.task, cfg.data)
    dev, _ = read_tsv(tmp_path / "QNLI" / "dev.tsv", cfg.task)
    assert len(dev["label"]) == 10 and dev["label"][:3] == [0, 1, 1]  # entailment, not_entailment x 2
    assert dev["question"][0] == "What came into force after the new constitution was herald?"


def test_malformed_row_names_file_and_line(tmp_path: Path, glue_dir: Path) -> None:
    src = (glue_dir / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "RTE"
    bad.mkdir()
    (bad / "train.tsv").write_text("\n".join(src[:5] + ["17\tonly two fields"] + src[5:10]) + "\n")
    cfg = compose("task=rte")
    with pytest.raises(HarnessError, match=r"train.tsv line 6: expected 4 tab-separated fields, got 2"):
        read_tsv(bad / "train.tsv", cfg.task)
    (bad / "train.tsv").write_text("\n".join(src[:3] + ["9\ta\tb\tmaybe"]) + "\n")
    with pytest.raises(HarnessError, match=r"line 4: label 'maybe' not in \['entailment', 'not_entailment'\]"):
        read_tsv(bad / "train.tsv", cfg.task)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    cfg = compose("task=rte", f"data.dir={tmp_path / 'nowhere'}")
    with pytest.raises(HarnessError, match="GLUE data directory not found: .*nowhere"):
        load_glue(cfg.task, cfg.data)


@pytest.mark.parametrize("protocol", ["train_val_dev_test", "dev_halves", "dev_dev"])
def test_splits_are_deterministic_and_disjoint(protocol: str, glue_dir: Path) -> None:
    cfg = compose("task=rte", f"protocol={protocol}", f"data.dir={glue_dir}")
    sets, _ = load_glue(cfg.task, cfg.data)
    train, dev = sets["train"], sets["test"]
    a = split(sets, cfg.task, cfg.protocol)
    b = split(sets, cfg.task, cfg.protocol)
    assert a == b
    if protocol == "dev_dev":
        assert a["validation"] == a["test"] == dev
        return

    def rows(*cols: dict) -> list:
        return sorted(r for c in cols for r in zip(*(c[k] for k in [*cfg.task.text_keys, "label"])))

    if protocol == "train_val_dev_test":  # a partition of train; dev untouched as test
        assert rows(a["train"], a["validation"]) == rows(train) and a["test"] == dev
        assert len(a["validation"]["label"]) == round(0.1 * len(train["label"]))
        # stratified: the class balance of validation follows train's
        assert abs(np.mean(a["validation"]["label"]) - np.mean(train["label"])) < 0.01
    else:
        assert a["train"] == train and rows(a["validation"], a["test"]) == rows(dev)


def test_tokenized_once_and_cached(tmp_path: Path, glue_dir: Path) -> None:
    from runners.models import build_tokenizer

    cfg = compose("task=rte", f"data.dir={glue_dir}", f"data.cache_dir={tmp_path}", "data.max_train_samples=50",
                  "data.max_eval_samples=20", "data.max_seq_len=64")
    tok = build_tokenizer(cfg.model)
    ds, skipped = prepare(cfg, tok)
    assert {k: len(v) for k, v in ds.items()} == {"train": 50, "validation": 20, "test": 20}
    assert skipped is None  # RTE declares no skipped rows
    assert max(len(x) for x in ds["train"]["input_ids"]) <= 64
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1
    again, _ = prepare(cfg, tok)  # served from the cache directory
    assert again["train"]["input_ids"] == ds["train"]["input_ids"]
    assert list(tmp_path.iterdir()) == cached


# Rows in the original layouts whose quote characters are text: a sentence opens a quote that only a
# later row's sentence closes, as in GLUE. csv's default quoting would read rows 1-3 as one field.
QUOTED = [('"The fish is fresh, she said.', "He left."), ("A plain row.", 'It "works".'),
          ('Ends here," he said.', '5" of rain fell.')]
LAYOUTS = {  # MRPC: a BOM, then a header; CoLA: no header (source, label, mark, sentence)
    "mrpc": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            + "".join(f"{lab}\t{i}\t{i + 9}\t{a}\t{b}\n" for i, (lab, (a, b)) in enumerate(zip("101", QUOTED))),
    "cola": "".join(f"gj04\t{lab}\t\t{a} {b}\n" for lab, (a, b) in zip("101", QUOTED)),
}


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_quotes_bom_and_headerless_files_read_every_row(task: str, tmp_path: Path) -> None:
    """read_tsv keeps quotes as text (QUOTE_NONE), strips MRPC's BOM before its header and reads
    CoLA's first line as a row."""
    path = tmp_path / "train.tsv"
    path.write_text(LAYOUTS[task], encoding="utf-8")
    with open(path, encoding="utf-8-sig", newline="") as f:  # the file is the pitfall: default quoting merges rows
        assert len(list(csv.reader(f, delimiter="\t"))) < LAYOUTS[task].count("\n")
    cols, skipped = read_tsv(path, compose(f"task={task}").task)
    if task == "mrpc":
        expected = {"sentence1": [a for a, _ in QUOTED], "sentence2": [b for _, b in QUOTED]}
    else:
        expected = {"sentence": [f"{a} {b}" for a, b in QUOTED]}
    assert cols == {**expected, "label": [1, 0, 1]} and skipped == 0


# ---- files written here: no GLUE copy needed ---------------------------------------------------

RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"


def write_rte(root: Path, labels: list[str], dev: int = 10) -> Path:
    """An RTE folder in the original layout: train.tsv with `labels` (one row each), dev.tsv balanced."""
    (root / "RTE").mkdir(parents=True)
    rows = "".join(f"{i}\tThe cat {i} sat on mat {i % 7}.\tA cat {i} sat.\t{lab}\n" for i, lab in enumerate(labels))
    (root / "RTE" / "train.tsv").write_text(RTE_HEAD + rows, encoding="utf-8")
    dev_rows = "".join(f"{i}\tA dog {i} ran.\tThe dog {i} ran home.\t{['entailment', 'not_entailment'][i % 2]}\n"
                       for i in range(dev))
    (root / "RTE" / "dev.tsv").write_text(RTE_HEAD + dev_rows, encoding="utf-8")
    return root


@pytest.mark.parametrize("damage", ["train/state.json", "skipped_rows.json"])
def test_a_partial_cache_is_rebuilt_once(damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder missing a split's state.json (a partial copy) or skipped_rows.json (an
    older layout) is rebuilt once, in place; the next call reads it. ~2 s each."""
    import runners.data
    from runners.models import build_tokenizer

    glue = write_rte(tmp_path / "glue", ["entailment", "not_entailment"] * 20)
    cfg = compose("task=rte", f"data.dir={glue}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_seq_len=32")
    tok = build_tokenizer(cfg.model)
    fresh, _ = prepare(cfg, tok)
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / damage).unlink()
    loads = []
    monkeypatch.setattr(runners.data, "load_glue", lambda *a: loads.append(a) or load_glue(*a))
    rebuilt, _ = prepare(cfg, tok)
    assert len(loads) == 1 and list((tmp_path / "cache").iterdir()) == [folder]  # swapped in, nothing left over
    cached, _ = prepare(cfg, tok)
    assert len(loads) == 1  # read from the rebuilt cache
    for ds in (rebuilt, cached):
        assert {name: part.to_dict() for name, part in ds.items()} == {n: p.to_dict() for n, p in fresh.items()}


@pytest.mark.parametrize(("labels", "options", "message"), [
    (["entailment"] * 9 + ["not_entailment"], {}, "task rte: RTE/train.tsv: label 'not_entailment' has 1 row; "
                                                   "a stratified validation carve needs at least 2 per label"),
    (["entailment", "not_entailment"] * 5, {"val_fraction": 1.0}, "task rte: RTE/train.tsv: the training split is "
                                                                  "empty after carving validation (10 rows, "
                                                                  "val_fraction 1.0, val_max 2000)"),
    (["entailment", "not_entailment"] * 5, {"val_fraction": 0.0}, "task rte: RTE/train.tsv: the validation split "
                                                                  "carved is empty (10 rows, val_fraction 0.0, "
                                                                  "val_max 2000)"),
    (["entailment", "not_entailment"] * 5, {"val_max": 1}, "task rte: RTE/train.tsv: a stratified carve (10 rows, "
                                                           "val_fraction 0.1, val_max 1) leaves 1 rows on one side "
                                                           "for 2 labels; it needs one row per label on each"),
    (["entailment", "not_entailment"] * 5, {"name": "dev_halves", "val_fraction": 1.0},
     "task rte: RTE/dev.tsv: the test split is empty after carving validation (10 rows, val_fraction 1.0, "
     "val_max None)"),
])
def test_a_carve_the_rows_cannot_give_is_named(labels: list[str], options: dict, message: str, tmp_path: Path) -> None:
    """In process, each under 0.1 s."""
    glue = write_rte(tmp_path, labels)
    protocol = options.pop("name", "train_val_dev_test")
    cfg = compose("task=rte", f"protocol={protocol}", f"data.dir={glue}",
                  *(f"protocol.{k}={v}" for k, v in options.items()))
    sets, _ = load_glue(cfg.task, cfg.data)
    with pytest.raises(HarnessError) as e:
        split(sets, cfg.task, cfg.protocol)
    assert str(e.value) == message
    with pytest.raises(HarnessError) as e:  # the same rows from the hub: named by the hub's split
        split(sets, cfg.task, cfg.protocol, hub=True)
    assert str(e.value) == re.sub(r"RTE/(train|dev)\.tsv", lambda m: f"hub split '{m[1].replace('dev', 'validation')}'",
                                  message)


@pytest.mark.parametrize(("labels", "message"), [
    (["entailment"] * 9 + ["not_entailment"], "task rte: RTE/train.tsv: label 'not_entailment' has 1 row; "
                                               "a stratified validation carve needs at least 2 per label"),
    ([], "task rte: RTE/train.tsv: the training split is empty after carving validation (0 rows, val_fraction 0.1, "
         "val_max 2000)"),
])
def test_bad_rows_for_a_carve_are_one_error_line_and_a_failed_record(job, labels: list[str], message: str,
                                                                     tmp_path: Path) -> None:
    """A job on a train.tsv with a label of one row, and on one with no rows: one `error:` line,
    no traceback, a failed record with the reason (in process: it stops before the model)."""
    glue = write_rte(tmp_path / "glue", labels)
    run = job("task=rte", f"data.dir={glue}", "data.max_seq_len=32")
    assert run.result["status"] == "failed" and "Traceback" not in run.out + run.err
    assert run.errors == [f"error: {message}"]
    rec = run.record
    assert rec["status"] == "failed" and rec["reason"] == message and rec["failed_before_training"] is True
