"""Named experiment plans (Hydra config group `plan`, found via `hydra.searchpath: [pkg://sweeps]`).

A package so that Hydra locates it through run.py's folder on sys.path, from any working directory.
"""
