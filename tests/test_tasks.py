"""MNLI, QQP and WNLI as data: the original GLUE TSV layouts (written here from real RTE/MRPC
rows: the real MNLI/QQP/WNLI files are not available), the hub's split and column names, the
protocols' splits with several test sets, skipped rows, records through run.py, and the real hub
loader on a folder in the hub's layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import compose
from runners.data import prepare
from runners.errors import HarnessError
from runners.glue import load_glue, read_tsv, split, task_test_sets

# The hub's GLUE (nyu-mll/glue): split names and text columns per config, written out here
# independently of conf/task so a wrong task YAML fails.
HUB = {
    "cola": (["train", "validation", "test"], ["sentence"]),
    "sst2": (["train", "validation", "test"], ["sentence"]),
    "mrpc": (["train", "validation", "test"], ["sentence1", "sentence2"]),
    "qqp": (["train", "validation", "test"], ["question1", "question2"]),
    "stsb": (["train", "validation", "test"], ["sentence1", "sentence2"]),
    "mnli": (["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"],
             ["premise", "hypothesis"]),
    "qnli": (["train", "validation", "test"], ["question", "sentence"]),
    "rte": (["train", "validation", "test"], ["sentence1", "sentence2"]),
    "wnli": (["train", "validation", "test"], ["sentence1", "sentence2"]),
}
TRAIN_ROWS = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "stsb": 5749, "mnli": 392702,
              "qnli": 104743, "rte": 2490, "wnli": 635}
MNLI_LABELS = ["entailment", "neutral", "contradiction"]  # the hub's label order
MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
QQP_HEAD = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
SIZES = {"mnli": (60, 30, 24), "qqp": (60, 30), "wnli": (40, 20)}  # rows written: train, dev set(s)
QQP_SKIPPED = 3  # the malformed rows written into QQP/train.tsv below


def _pairs(glue_dir: Path, task: str, file: str, a: int, b: int) -> list[tuple[str, str]]:
    """Real sentence pairs (RTE, MRPC) as text for the files written here."""
    with open(glue_dir / task / file, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    cols = (1, 2) if task == "RTE" else (3, 4)
    return [(r[cols[0]], r[cols[1]]) for r in rows[a:b]]


def _write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")


def _mnli(pairs: list[tuple[str, str]], genre: str, dev: bool) -> list[list[str]]:
    """Rows in the original MNLI layout: train has label1 then gold_label; dev has label1..label5."""
    head = MNLI_HEAD + ([f"label{i}" for i in range(1, 6)] if dev else ["label1"]) + ["gold_label"]
    rows = [head]
    for i, (s1, s2) in enumerate(pairs):
        gold = MNLI_LABELS[i % 3]
        annotators = [gold, gold, MNLI_LABELS[(i + 1) % 3], gold, gold] if dev else [gold]
        rows.append([i, 1000 + i, f"{1000 + i}{'ecn'[i % 3]}", genre, f"( {s1} )", f"( {s2} )",
                     f"(ROOT (S {s1}))", f"(ROOT (S {s2}))", s1, s2, *annotators, gold])
    return rows


def write_glue(root: Path, glue_dir: Path) -> Path:
    """Small MNLI, QQP and WNLI folders in the original GLUE layout under `root`."""
    n_train, n_matched, n_mismatched = SIZES["mnli"]
    _write(root / "MNLI" / "train.tsv", _mnli(_pairs(glue_dir, "RTE", "train.tsv", 0, n_train), "fiction", False))
    _write(root / "MNLI" / "dev_matched.tsv", _mnli(_pairs(glue_dir, "RTE", "dev.tsv", 0, n_matched), "fiction", True))
    _write(root / "MNLI" / "dev_mismatched.tsv",
           _mnli(_pairs(glue_dir, "RTE", "dev.tsv", 100, 100 + n_mismatched), "letters", True))

    def qqp(pairs: list[tuple[str, str]]) -> list[list[str]]:
        return [QQP_HEAD] + [[i, 2 * i, 2 * i + 1, q1, q2, i % 2] for i, (q1, q2) in enumerate(pairs)]

    train = qqp(_pairs(glue_dir, "MRPC", "train.tsv", 0, SIZES["qqp"][0]))
    # GLUE's QQP train quirks: a question broken by a newline (two short rows), an empty label
    train[10:10] = [[90001, 1, 2, "How do I learn"], ["to cook rice?", "How to cook rice?", 1],
                    [90002, 3, 4, "What is GLUE?", "What does GLUE stand for?", ""]]
    _write(root / "QQP" / "train.tsv", train)
    _write(root / "QQP" / "dev.tsv", qqp(_pairs(glue_dir, "MRPC", "dev.tsv", 0, SIZES["qqp"][1])))

    def wnli(pairs: list[tuple[str, str]]) -> list[list[str]]:
        return [["index", "sentence1", "sentence2", "label"]] + [[i, a, b, i % 2] for i, (a, b) in enumerate(pairs)]

    _write(root / "WNLI" / "train.tsv", wnli(_pairs(glue_dir, "RTE", "train.tsv", 200, 200 + SIZES["wnli"][0])))
    _write(root / "WNLI" / "dev.tsv", wnli(_pairs(glue_dir, "RTE", "dev.tsv", 50, 50 + SIZES["wnli"][1])))
    return root


@pytest.fixture(scope="module")
def small_glue(tmp_path_factory: pytest.TempPathFactory, glue_dir: Path) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue"), glue_dir)


@pytest.mark.parametrize("task", list(HUB))
def test_every_task_declares_its_sets_metrics_and_size(task: str) -> None:
    t = compose(f"task={task}").task
    assert t.name == task and t.train_rows == TRAIN_ROWS[task]
    assert t.metric in t.metrics and list(t.splits)[0] == "train"
    assert task_test_sets(t) == (["matched", "mismatched"] if task == "mnli" else ["test"])
    assert list(t.text_keys) == HUB[task][1]


def test_mnli_reads_the_original_layout(small_glue: Path, glue_dir: Path) -> None:
    cfg = compose("task=mnli", f"data.dir={small_glue}")
    sets, skipped = load_glue(cfg.task, cfg.data)
    assert list(sets) == ["train", "matched", "mismatched"] and skipped == {}
    assert [len(s["label"]) for s in sets.values()] == list(SIZES["mnli"])
    pairs = _pairs(glue_dir, "RTE", "dev.tsv", 100, 124)  # dev_mismatched's text, sentence1/sentence2 columns
    assert list(zip(sets["mismatched"]["premise"], sets["mismatched"]["hypothesis"])) == pairs
    # gold_label (the last column, not label1..label5) in the hub's order
    assert sets["matched"]["label"][:4] == [0, 1, 2, 0] and sets["train"]["label"][:3] == [0, 1, 2]


def test_qqp_skips_declared_malformed_rows_and_counts_them(small_glue: Path, glue_dir: Path) -> None:
    cfg = compose("task=qqp", f"data.dir={small_glue}")
    sets, skipped = load_glue(cfg.task, cfg.data)
    assert skipped == {"QQP/train.tsv": QQP_SKIPPED}  # dev.tsv is not declared: not listed
    assert len(sets["train"]["label"]) == SIZES["qqp"][0] and len(sets["test"]["label"]) == SIZES["qqp"][1]
    assert sets["train"]["question1"] == [q for q, _ in _pairs(glue_dir, "MRPC", "train.tsv", 0, 60)]
    assert sets["train"]["label"][:4] == [0, 1, 0, 1]


def test_malformed_rows_elsewhere_stay_errors(small_glue: Path, tmp_path: Path) -> None:
    """Only the file a task declares skips rows: the same row in QQP's dev or MNLI's train fails."""
    cfg = compose("task=qqp")
    dev = tmp_path / "dev.tsv"
    lines = (small_glue / "QQP" / "dev.tsv").read_text().splitlines()
    dev.write_text("\n".join(lines[:5] + ["7\t1\t2\tHow do I learn"] + lines[5:]) + "\n")
    with pytest.raises(HarnessError, match=r"dev.tsv line 6: expected 6 tab-separated fields, got 4"):
        read_tsv(dev, cfg.task)
    assert read_tsv(dev, cfg.task, skip_malformed=True)[1] == 1
    dev.write_text("\n".join(lines[:3] + ["7\t1\t2\ta\tb\t"]) + "\n")
    with pytest.raises(HarnessError, match=r"dev.tsv line 4: label '' not in \['0', '1'\]"):
        read_tsv(dev, cfg.task)
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    for f in ("dev_matched.tsv", "dev_mismatched.tsv"):
        (mnli / f).write_text((small_glue / "MNLI" / f).read_text())
    lines = (small_glue / "MNLI" / "train.tsv").read_text().splitlines()
    (mnli / "train.tsv").write_text("\n".join(lines[:8] + ["5\t6\t7\tfiction\tonly four"] + lines[8:]) + "\n")
    with pytest.raises(HarnessError, match=r"MNLI/train.tsv line 9: expected 12 tab-separated fields, got 5"):
        load_glue(compose("task=mnli").task, compose(f"data.dir={tmp_path}").data)


def test_wnli_labels_are_the_files_ints(small_glue: Path) -> None:
    cfg = compose("task=wnli", f"data.dir={small_glue}")
    sets, _ = load_glue(cfg.task, cfg.data)
    assert sets["train"]["label"][:4] == [0, 1, 0, 1] and len(sets["test"]["label"]) == SIZES["wnli"][1]


def _rows(cols: dict) -> list:
    return sorted(zip(cols["premise"], cols["hypothesis"], cols["label"]))


@pytest.mark.parametrize("protocol", ["train_val_dev_test", "dev_halves", "dev_dev"])
def test_protocols_with_two_test_sets(protocol: str, small_glue: Path) -> None:
    """Validation from train by default; from matched where a protocol takes it from dev;
    mismatched is always the whole official set."""
    cfg = compose("task=mnli", f"protocol={protocol}", f"data.dir={small_glue}")
    sets, _ = load_glue(cfg.task, cfg.data)
    parts = split(sets, cfg.task, cfg.protocol)
    assert list(parts) == ["train", "validation", "matched", "mismatched"]
    assert parts["mismatched"] == sets["mismatched"]
    if protocol == "train_val_dev_test":
        assert parts["matched"] == sets["matched"]
        assert sorted(_rows(parts["train"]) + _rows(parts["validation"])) == _rows(sets["train"])
        assert len(parts["validation"]["label"]) == 6
    elif protocol == "dev_halves":
        assert parts["train"] == sets["train"]
        assert sorted(_rows(parts["validation"]) + _rows(parts["matched"])) == _rows(sets["matched"])
        assert len(parts["validation"]["label"]) == len(parts["matched"]["label"]) == 15
    else:
        assert parts["validation"] == parts["matched"] == sets["matched"]


@pytest.mark.parametrize("task", list(HUB))
def test_hub_split_and_column_names(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader asks the hub for <hub_dataset>/<task> and takes the splits the hub has."""
    split_names, text = HUB[task]
    asked = []

    def fake_load_dataset(path: str, name: str) -> datasets.DatasetDict:
        asked.append((path, name))
        return datasets.DatasetDict({
            s: datasets.Dataset.from_dict({**{c: [f"{s} {c} {i}" for i in range(3)] for c in text},
                                           "label": [0, 1, 0], "idx": [0, 1, 2]})
            for s in split_names})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = compose(f"task={task}", "data.dir=null")
    sets, skipped = load_glue(cfg.task, cfg.data)
    assert asked == [("nyu-mll/glue", task)] and skipped == {}
    expect = {"train": "train", **({"matched": "validation_matched", "mismatched": "validation_mismatched"}
                                   if task == "mnli" else {"test": "validation"})}
    assert {name: cols[text[0]][0].split()[0] for name, cols in sets.items()} == expect
    assert all(set(cols) == {*text, "label"} for cols in sets.values())


def test_hub_without_a_declared_split_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"premise": ["a"], "hypothesis": ["b"], "label": [0]})}))
    cfg = compose("task=mnli", "data.dir=null")
    with pytest.raises(HarnessError, match=r"nyu-mll/glue/mnli has no split 'validation_matched'; it has \['train'\]"):
        load_glue(cfg.task, cfg.data)


def test_skipped_rows_survive_the_cache(small_glue: Path, tmp_path: Path) -> None:
    from runners.models import build_tokenizer

    cfg = compose("task=qqp", f"data.dir={small_glue}", f"data.cache_dir={tmp_path}", "data.max_seq_len=32")
    tok = build_tokenizer(cfg.model)
    for _ in range(2):  # tokenized, then from the cache
        ds, skipped = prepare(cfg, tok)
        assert skipped == {"QQP/train.tsv": QQP_SKIPPED}
        assert {k: len(v) for k, v in ds.items()} == {"train": 54, "validation": 6, "test": 30}
    assert len(list(tmp_path.iterdir())) == 1


# ---- run.py end to end: MNLI, QQP, WNLI from the original layout -------------------------------

QUICK = ["model=minilm", "method=lora", "trainer.max_steps=4", "trainer.eval_every_steps=2", "trainer.batch_size=8",
         "data.max_seq_len=32", "trainer.num_threads=1"]


def _records(root: Path) -> dict[str, dict]:
    recs = [json.loads(p.read_text()) for p in (root / "runs").glob("train/**/*.json")]
    return {r["task"]: r for r in recs}


def _recompute(rec: dict, split_name: str) -> dict[str, float]:
    """Accuracy and F1 of the record's own (untrained: lr 0) model on one of its sets, with sklearn."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from runners.data import loader
    from runners.job import adapted_model
    from runners.models import build_tokenizer

    cfg = OmegaConf.create(rec["config"])
    tok = build_tokenizer(cfg.model)
    ds, _ = prepare(cfg, tok)
    model = adapted_model(cfg).model.eval()
    preds, labels = [], []
    with torch.inference_mode():
        for batch in loader(ds[split_name], tok, cfg.trainer.eval_batch_size, False, False, cfg.seed):
            preds.append(model(**batch).logits.argmax(-1))
            labels.append(batch["labels"])
    y, p = torch.cat(labels).numpy(), torch.cat(preds).numpy()
    return {"accuracy": 100 * accuracy_score(y, p), "f1": 100 * f1_score(y, p, zero_division=0)}


@pytest.mark.slow
def test_mnli_qqp_wnli_records_from_the_original_layout(run_cli, small_glue: Path, tmp_path: Path) -> None:
    """One multirun over the three tasks (one process: the imports once). Learning rates 0
    keep the model as built, so QQP's accuracy and F1 can be recomputed here independently."""
    torch_threads = {"OMP_NUM_THREADS": "1"}
    proc = run_cli("task=mnli,qqp,wnli", f"data.dir={small_glue}", "trainer.lr=0", "trainer.lr_head=0", *QUICK,
                   multirun=True, env=torch_threads)
    recs = _records(tmp_path)
    assert set(recs) == {"mnli", "qqp", "wnli"} and all(r["status"] == "finished" for r in recs.values())
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("task:      ")]
    assert [line.split()[1] for line in summaries] == ["mnli,", "qqp,", "wnli,"]  # each job prints its own

    mnli = recs["mnli"]
    assert mnli["test_sets"] == ["matched", "mismatched"] and mnli["metrics"] == ["accuracy"]
    assert mnli["sizes"] == {"train": 54, "validation": 6, "matched": 30, "mismatched": 24}
    assert "skipped_rows" not in mnli
    assert [p["step"] for p in mnli["history"]] == [2, 4]
    for point in [*mnli["history"], mnli["selected"]]:
        assert set(point["metrics"]) == {"validation", "matched", "mismatched"}
        assert point["validation"] == point["metrics"]["validation"]["accuracy"]
        assert point["test"] == point["metrics"]["matched"]["accuracy"]  # the first test set
        assert all(set(m) == {"accuracy"} for m in point["metrics"].values())

    qqp = recs["qqp"]
    assert qqp["metric"] == "accuracy" and qqp["metrics"] == ["accuracy", "f1"] and qqp["test_sets"] == ["test"]
    assert qqp["skipped_rows"] == {"QQP/train.tsv": QQP_SKIPPED}
    assert f"skipped {QQP_SKIPPED} rows with missing fields in QQP/train.tsv" in proc.stdout  # the run's summary
    assert qqp["sizes"] == {"train": 54, "validation": 6, "test": 30}
    for point in [*qqp["history"], qqp["selected"]]:
        assert set(point["metrics"]) == {"validation", "test"}
        assert all(set(m) == {"accuracy", "f1"} for m in point["metrics"].values())
        assert point["test"] == point["metrics"]["test"]["accuracy"]
    for name in ("validation", "test"):
        ours = _recompute(qqp, name)
        for point in qqp["history"]:
            assert np.allclose([point["metrics"][name][m] for m in ours], list(ours.values())), (name, point)

    wnli = recs["wnli"]
    assert wnli["test_sets"] == ["test"] and wnli["sizes"] == {"train": 36, "validation": 4, "test": 20}
    assert set(wnli["selected"]["metrics"]) == {"validation", "test"}
    assert "matched" in proc.stdout and "mismatched" in proc.stdout  # the selected line names both sets


# ---- the hub path for real: a folder in the hub's layout, read by datasets.load_dataset ---------

HUB_ROWS = {"MRPC": (80, 40), "STS-B": (80, 40)}  # real rows taken from the GLUE copy: train, dev
HUB_LABELS = {"mrpc": ["not_equivalent", "equivalent"], "mnli": MNLI_LABELS}  # the hub's ClassLabel names


def _hub_config(root: Path, config: str, splits: dict[str, dict], text: list[str]) -> tuple[dict, object]:
    """One config of the hub's GLUE layout: <config>/<split>-00000-of-00001.parquet with an idx
    column, ClassLabel labels (float32 scores for STS-B); returns its `configs:` entry and info."""
    label = datasets.ClassLabel(names=HUB_LABELS[config]) if config in HUB_LABELS else datasets.Value("float32")
    features = datasets.Features({**{c: datasets.Value("string") for c in text}, "label": label,
                                  "idx": datasets.Value("int32")})
    files = []
    for name, cols in splits.items():
        rows = {**cols, "idx": list(range(len(cols["label"])))}
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(root / config / f"{name}-00000-of-00001.parquet")
        files.append({"split": name, "path": f"{config}/{name}-*"})
    return {"data_files": files}, datasets.DatasetInfo(features=features, config_name=config)


def write_hub_and_tsv(hub: Path, tsv: Path, glue_dir: Path) -> None:
    """The same rows in both layouts: real MRPC and STS-B rows (the TSVs' first lines, copied as they
    are), synthetic MNLI rows (real RTE text). The README's `configs:` and `dataset_info:` blocks are
    written by datasets' own card writers, as push_to_hub writes them."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    configs, infos = {}, {}
    for folder, (n_train, n_dev) in HUB_ROWS.items():
        splits = {}
        for file, hub_split, n in (("train.tsv", "train", n_train), ("dev.tsv", "validation", n_dev)):
            with open(glue_dir / folder / file, encoding="utf-8-sig", newline="") as f:
                lines = f.readlines()[: n + 1]
            (tsv / folder).mkdir(parents=True, exist_ok=True)
            (tsv / folder / file).write_text("".join(lines), encoding="utf-8")
            rows = list(csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE))
            if folder == "MRPC":  # Quality, #1 ID, #2 ID, #1 String, #2 String
                splits[hub_split] = {"sentence1": [r[3] for r in rows], "sentence2": [r[4] for r in rows],
                                     "label": [int(r[0]) for r in rows]}
            else:  # ..., sentence1, sentence2, score
                splits[hub_split] = {"sentence1": [r[7] for r in rows], "sentence2": [r[8] for r in rows],
                                     "label": [float(r[9]) for r in rows]}
        config = folder.lower().replace("-", "")
        configs[config], infos[config] = _hub_config(hub, config, splits, ["sentence1", "sentence2"])

    n_train, n_matched, n_mismatched = SIZES["mnli"]
    mnli = {"train": (_pairs(glue_dir, "RTE", "train.tsv", 0, n_train), "fiction", "train.tsv"),
            "validation_matched": (_pairs(glue_dir, "RTE", "dev.tsv", 0, n_matched), "fiction", "dev_matched.tsv"),
            "validation_mismatched": (_pairs(glue_dir, "RTE", "dev.tsv", 100, 100 + n_mismatched), "letters",
                                      "dev_mismatched.tsv")}
    splits = {}
    for hub_split, (pairs, genre, file) in mnli.items():
        _write(tsv / "MNLI" / file, _mnli(pairs, genre, dev=hub_split != "train"))
        splits[hub_split] = {"premise": [a for a, _ in pairs], "hypothesis": [b for _, b in pairs],
                             "label": [i % 3 for i in range(len(pairs))]}  # _mnli's gold labels
    for hub_split in ("test_matched", "test_mismatched"):  # the hub's hidden test labels: -1
        splits[hub_split] = {"premise": ["A test premise."] * 3, "hypothesis": ["A hypothesis."] * 3, "label": [-1] * 3}
    configs["mnli"], infos["mnli"] = _hub_config(hub, "mnli", splits, ["premise", "hypothesis"])

    card = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(card)
    MetadataConfigs(configs).to_dataset_card_data(card)
    DatasetCard(f"---\n{card}\n---\n").save(hub / "README.md")


@pytest.mark.slow
def test_the_hub_layout_and_the_tsvs_give_the_same_records(run_cli, glue_dir: Path, tmp_path: Path) -> None:
    """The real hub loader (data.dir=null, datasets.load_dataset on a folder in the hub's layout,
    offline) and the original TSVs holding the same rows give equal records for MRPC, STS-B and
    MNLI (both test sets). Two multiruns of three jobs (both sources are the same run's identity:
    the second would skip what the first finished, so the first's records are moved aside). ~75 s."""
    hub, tsv = tmp_path / "hub", tmp_path / "tsv"
    write_hub_and_tsv(hub, tsv, glue_dir)
    records = {}
    for source, data in (("tsv", [f"data.dir={tsv}"]), ("hub", ["data.dir=null", f"data.hub_dataset={hub}"])):
        run_cli("task=mrpc,stsb,mnli", *data, *QUICK, multirun=True,
                env={"OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")})
        recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("train/**/*.json")]
        assert len(recs) == 3 and all(r["status"] == "finished" for r in recs), source
        records[source] = {r["task"]: r for r in recs}
        (tmp_path / "runs").rename(tmp_path / f"runs_{source}")
    assert all(r["config"]["data"]["dir"] is None for r in records["hub"].values())
    keys = ("history", "selected", "sizes", "metrics", "test_sets", "trainable_params")
    for task in ("mrpc", "stsb", "mnli"):
        from_hub, from_tsv = records["hub"][task], records["tsv"][task]
        assert {k: from_hub[k] for k in keys} == {k: from_tsv[k] for k in keys}, task
    assert records["hub"]["mnli"]["sizes"] == {"train": 54, "validation": 6, "matched": 30, "mismatched": 24}
    assert records["hub"]["stsb"]["sizes"] == {"train": 72, "validation": 8, "test": 40}
