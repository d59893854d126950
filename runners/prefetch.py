"""Fill the Hugging Face cache for runs that will have no internet:
python -m runners.prefetch [PLAN] [key=value ...]

The runs are selected as `python -m runners.plan` selects them (runners.sweep; with PLAN: every
job of the plan, filtered and overridden by the key=value arguments; without: the runs `python
run.py -m key=value ...` would launch, one unless an override sweeps). For each distinct pretrained model it
downloads into HF_HOME what those runs read (config, tokenizer, weights), for each distinct GLUE
task the dataset `load_dataset` reads; one line per item says `fetched`, `already cached` or
`skipped: ...` (a model with `model.local_dir`, a task read from `data.dir`). Whether an item
is cached is checked from the cache alone, so a run with everything cached makes no network
call and works offline (HF_HUB_OFFLINE=1); offline, a missing item is one `error:` line.
The last lines give the cache folders and their size.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runners.errors import HarnessError
from runners.sweep import CONF, error_line, selected_configs, split_args

WEIGHTS = OmegaConf.load(CONF / "prefetch.yaml").weights


@dataclass
class Pretrained:
    """A pretrained model on the hub and the parts of it the selected runs read."""

    repo: str
    local_dir: str | None
    parts: set[str] = field(default_factory=set)  # of "config", "tokenizer", "weights"

    @property
    def label(self) -> str:
        return f"model {self.repo}"


@dataclass(frozen=True)
class Glue:
    hub_dataset: str
    task: str
    dir: str | None

    @property
    def label(self) -> str:
        return f"data {self.hub_dataset}/{self.task}"


def needs(configs: Sequence[DictConfig]) -> tuple[list[Pretrained], list[Glue]]:
    """The distinct pretrained models (with the parts any run reads) and GLUE tasks of these runs.
    Training reads config, tokenizer, pretrained weights and data; mode=count builds the model
    (pretrained weights unless model.pretrained=false); mode=memory builds it with random
    weights. A model yaml's `config` values replace config.json where no weights are loaded."""
    models: dict[tuple[str, str | None], Pretrained] = {}
    tasks: dict[Glue, None] = {}
    for cfg in configs:
        m = cfg.model
        weights = cfg.mode in ("train", "count") and bool(m.pretrained)
        parts = {"weights"} if weights else set()
        if weights or not m.get("config"):
            parts.add("config")
        if cfg.mode == "train":
            parts.add("tokenizer")
            tasks[Glue(cfg.data.hub_dataset, cfg.task.name, cfg.data.dir)] = None
        key = (m.name_or_path, m.get("local_dir"))
        models.setdefault(key, Pretrained(*key)).parts |= parts
    return list(models.values()), list(tasks)


@contextmanager
def offline() -> Iterator[None]:
    """huggingface_hub and datasets read HF_HUB_OFFLINE (HF_DATASETS_OFFLINE) once, into
    huggingface_hub.constants and datasets.config; with both switches on, transformers and
    load_dataset read only the cache, as they will on the offline compute node. (local_files_only
    alone is not enough: huggingface_hub still asks the hub for a user-agent registry.)"""
    import datasets.config
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = before


def _weights_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> str | None:
        path = try_to_load_from_cache(repo, name)
        return path if isinstance(path, str) else None  # None: unknown; _CACHED_NO_EXIST: known absent

    for fmt in WEIGHTS:
        if cached(fmt.file):
            return True
        index = cached(fmt.index)
        if index:
            shards = set(json.loads(Path(index).read_text())["weight_map"].values())
            return all(cached(s) for s in shards)
    return False


def missing_parts(pre: Pretrained) -> list[str]:
    """The parts not in the cache, found from the cache alone (no network call): config and
    tokenizer by loading them as a run does, the weights by their files."""
    from transformers import AutoConfig, AutoTokenizer

    missing = []
    with offline():
        for part, load in (("config", AutoConfig.from_pretrained), ("tokenizer", AutoTokenizer.from_pretrained)):
            if part in pre.parts:
                try:
                    load(pre.repo)
                except OSError:  # transformers' "not found" (offline: not in the cache)
                    missing.append(part)
                except Exception as e:  # cached but unusable (e.g. a tokenizer package missing): say why
                    raise HarnessError(f"{pre.label}: cannot load its {part}: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0]}") from e
        if "weights" in pre.parts and not _weights_cached(pre.repo):
            missing.append("weights")
    return missing


def fetch_pretrained(pre: Pretrained, parts: list[str]) -> None:
    from huggingface_hub import hf_hub_download, list_repo_files
    from transformers import AutoConfig, AutoTokenizer

    if "config" in parts:
        AutoConfig.from_pretrained(pre.repo)
    if "tokenizer" in parts:
        AutoTokenizer.from_pretrained(pre.repo)
    if "weights" in parts:
        files = set(list_repo_files(pre.repo))
        fmt = next((f for f in WEIGHTS if f.file in files or f.index in files), None)
        if fmt is None:
            names = ", ".join(n for f in WEIGHTS for n in (f.file, f.index))
            raise HarnessError(f"{pre.label}: the hub repo has none of {names}")
        if fmt.file in files:
            hf_hub_download(pre.repo, fmt.file)
        else:
            index = hf_hub_download(pre.repo, fmt.index)
            for shard in sorted(set(json.loads(Path(index).read_text())["weight_map"].values())):
                hf_hub_download(pre.repo, shard)


def glue_cached(glue: Glue) -> bool:
    from datasets import load_dataset

    with offline():
        try:
            load_dataset(glue.hub_dataset, glue.task)
        except Exception:  # offline, the missing-cache errors vary by version (ConnectionError, FileNotFoundError, ...)
            return False
    return True


def folder_size(path: Path) -> int:
    """Bytes of the files under path; symbolic links (the hub cache's snapshots point at its
    blobs) are not counted twice."""
    files = (Path(root, name) for root, _, names in os.walk(path) for name in names)
    return sum(f.lstat().st_size for f in files if not f.is_symlink())


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def prefetch(models: list[Pretrained], tasks: list[Glue]) -> tuple[int, list[str]]:
    """Print one line per item; returns (items fetched, items missing while offline)."""
    import datasets.config
    from huggingface_hub import is_offline_mode

    fetched, missing = 0, []
    for pre in models:
        if pre.local_dir:
            print(f"{pre.label}: skipped: local copy at {pre.local_dir} (model.local_dir)")
        elif Path(pre.repo).is_dir():
            print(f"{pre.label}: skipped: a local folder")
        elif not pre.parts:
            print(f"{pre.label}: skipped: nothing to download (random weights from the model yaml's config)")
        elif not (lacking := missing_parts(pre)):
            print(f"{pre.label}: already cached ({', '.join(sorted(pre.parts))})")
        elif is_offline_mode():
            missing.append(f"{pre.label} ({', '.join(lacking)})")
        else:
            try:
                fetch_pretrained(pre, lacking)
            except HarnessError:
                raise
            except Exception as e:  # the hub's and transformers' errors vary by version
                raise HarnessError(f"cannot fetch {pre.label}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
            if still := missing_parts(pre):  # what was fetched must be what an offline run reads
                raise HarnessError(f"{pre.label}: fetched, but still not readable offline: {', '.join(still)}")
            print(f"{pre.label}: fetched ({', '.join(lacking)})")
            fetched += 1
    for glue in tasks:
        if glue.dir is not None:
            print(f"{glue.label}: skipped: local TSVs in data.dir={glue.dir}")
        elif glue_cached(glue):
            print(f"{glue.label}: already cached")
        elif datasets.config.HF_HUB_OFFLINE:
            missing.append(glue.label)
        else:
            from datasets import load_dataset

            try:
                load_dataset(glue.hub_dataset, glue.task)
            except Exception as e:
                raise HarnessError(f"cannot fetch {glue.label}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
            print(f"{glue.label}: fetched")
            fetched += 1
    return fetched, missing


def cache_report(fetched: int) -> str:
    import datasets.config
    from huggingface_hub import constants

    folders = {"hub": Path(constants.HF_HUB_CACHE), "datasets": Path(datasets.config.HF_DATASETS_CACHE)}
    sizes = ", ".join(f"{name} {path} {human(folder_size(path))}" for name, path in folders.items())
    done = (f"fetched {fetched} item(s)" if fetched else
            "nothing fetched: everything the runs need is already cached")
    return f"cache: {sizes}\n{done}; the runs can go offline (HF_HUB_OFFLINE=1)"


def main(argv: Sequence[str] | None = None) -> int:
    plan, overrides = split_args(sys.argv[1:] if argv is None else argv)
    if plan is not None and plan.startswith("-"):
        print("usage: python -m runners.prefetch [PLAN] [key=value ...]", file=sys.stderr)
        return 2
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()  # no "newly initialized" / cache-fallback chatter
    datasets.logging.set_verbosity_error()
    try:
        models, tasks = needs(selected_configs(plan, overrides))
        fetched, missing = prefetch(models, tasks)
    except (HarnessError, HydraException, OmegaConfBaseException, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    if missing:
        print(f"error: offline and not in the cache: {'; '.join(missing)}; run python -m runners.prefetch "
              "with the same arguments where there is internet, with the same HF_HOME", file=sys.stderr)
        return 1
    print(cache_report(fetched))
    return 0


if __name__ == "__main__":
    sys.exit(main())
