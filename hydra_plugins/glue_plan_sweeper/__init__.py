"""Hydra finds sweepers only under the `hydra_plugins` namespace: see plan_sweeper.py."""
