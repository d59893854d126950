"""Analysis of run records: tables, contrasts, the pilot's choice and a plan's cost. Imports no
torch, transformers or PEFT (tests/test_layers.py checks it): it reads JSON records and configs."""
