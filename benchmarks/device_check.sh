#!/usr/bin/env bash
# One prepared check of this harness on a borrowed GPU machine (docs/device.md says what each
# section measures and what it found). Within DEVICE_CHECK_BUDGET_S (default 280 s: one H100,
# room to rerun it once in a short loan) it runs the sections below in order of priority, each
# cut off at its own budget or at what is left, and always ends with ONE tarball,
# OUTDIR/device_check.tar.gz (summary.txt: every section's status; one JSON or log per section).
# Nothing from the hub: random weights (model.pretrained=false) with the offline MiniLM
# tokenizer as a stated proxy for each model's own, and the offline MiniLM for the resume check.
# On the device machine it needs the kit of sweeps/device.sh (packages, GLUE TSVs, MiniLM):
#   bash sweeps/device.sh pack                      # here, once
#   run(command="bash benchmarks/device_check.sh $OUT", carry=[".device"], timeout_s=330)
# DEVICE_CHECK_SMOKE=1: every section tiny, on this CPU, with this machine's packages
# (tests/test_device_check.py; docs/device.md gives its cost): the code paths, not the numbers.
#   syncs        steps under torch.cuda.set_sync_debug_mode("warn"): host syncs in the step, counted
#   ratios       step time C3A b=1, b=6 / LoRA and qGOFT / LoRA r=2, RoBERTa-base 64 x 256, fp32 and bf16
#   resume       a run killed (SIGKILL) after a checkpoint and relaunched vs the same run uninterrupted
#   concurrency  aggregate throughput of 1, 2 and 4 MRPC-size jobs at once on one GPU
#   runner_vs_trainer  this runner vs Trainer + PEFT at their best (bf16, group_by_length, fused AdamW)
#   calibrate_*  runners.calibrate for the C3A and qGOFT tables' models and methods, fp32 and bf16
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: bash benchmarks/device_check.sh OUTDIR}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
SMOKE=${DEVICE_CHECK_SMOKE:-0}
BUDGET=${DEVICE_CHECK_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 120 || echo 280)}
START=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$SMOKE" = 1 ]; then
    SM=(--smoke)
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        WANDB_MODE=disabled
else
    SM=()
    source sweeps/device.sh && kit_env
    set +e  # device.sh sets -e: a failed section must not end the check
fi
: "${GLUE_DIR:?GLUE_DIR: the GLUE TSVs (the kit sets it)}"
export HARNESS_CACHE=$WORK/cache

# section NAME SECONDS CMD...: run CMD with stdout+stderr in NAME.log, cut off at SECONDS or at
# what is left of the budget; one status line in summary.txt
section() {
    local name=$1 want=$2 left=$((BUDGET - (SECONDS - START))); shift 2
    local limit=$((want < left ? want : left)) t0=$SECONDS rc
    if [ "$limit" -lt 5 ]; then
        echo "$name: skipped (budget spent)" >> "$WORK/summary.txt"; return
    fi
    timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    local state=ok
    [ $rc = 124 ] || [ $rc = 137 ] && state="cut off at ${limit} s"
    [ $rc != 0 ] && [ "$state" = ok ] && state="failed (exit $rc; see $name.log)"
    echo "$name: $state in $((SECONDS - t0)) s" >> "$WORK/summary.txt"
}

{
    echo "device_check $(date -u +%FT%TZ) smoke=$SMOKE budget=${BUDGET}s commit=$(git rev-parse --short HEAD 2>/dev/null)"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} > "$WORK/summary.txt" 2>&1

# runners.calibrate NAME --plan PLAN --out WORK: NAME.json in the tarball, measured at each plan's
# own batch sizes and over its tasks' lengths. data.dir=null: the lengths come from conf/lengths
# (MiniLM's tokenizer as the stated proxy), since the kit lacks QNLI, MNLI and QQP; the plans'
# fp32 first (what `runners.plan PLAN --calibration NAME` prices as the plans stand), then bf16.
# What the budget leaves is skipped and said so in summary.txt (docs/device.md).
calibrations() {
    if [ "$SMOKE" = 1 ]; then
        cals=("device_check_smoke --plan table2_base method=lora task=rte seed=0 model.config.num_hidden_layers=2 \
    model.config.hidden_size=48 model.config.num_attention_heads=2 model.config.intermediate_size=96")
    else
        cals=("cuda_roberta-base_fp32 --plan table2_base"
              "cuda_deberta-v3-base_fp32 --plan qgoft_glue"
              "cuda_roberta-large_fp32 --plan table2_large"
              "cuda_roberta-base_bf16 --plan table2_base trainer.precision=bf16"
              "cuda_deberta-v3-base_bf16 --plan qgoft_glue trainer.precision=bf16"
              "cuda_roberta-large_bf16 --plan table2_large trainer.precision=bf16")
    fi
    for cal in "${cals[@]}"; do
        read -r -a words <<< "$cal"
        section "calibrate_${words[0]}" "$([ "$SMOKE" = 1 ] && echo "$BUDGET" || echo 120)" python3 -m runners.calibrate \
            "${words[@]}" model.pretrained=false data.dir=null --steps 2 --out "$WORK"  # commit to results/calibrations/
    done
}

CHECK=(python3 benchmarks/device_check.py --work "$WORK" "${SM[@]}")
if [ "$SMOKE" = 1 ]; then  # only the whole budget cuts a section off: the code paths are the point
    # two lanes at once (each process one thread): the smoke's cost is mostly process start-ups
    section checks "$BUDGET" "${CHECK[@]}" syncs ratios resume concurrency --jobs 1 2 &  # one process: imports once
    section runner_vs_trainer "$BUDGET" python3 benchmarks/bench_runner.py --methods lora --rounds 1 --steps 2 \
        --threads 1 --json "$WORK/runner_vs_trainer.json"
    calibrations
    wait
else
    # about 210 s with the kit's installation; the calibrations get what is left (about 70 s)
    section syncs_ratios 50 "${CHECK[@]}" syncs ratios
    section resume 35 "${CHECK[@]}" resume
    section concurrency 80 "${CHECK[@]}" concurrency --jobs 1 2 4
    section runner_vs_trainer 45 python3 benchmarks/bench_runner.py --methods lora --rounds 1 --steps 60 \
        --device cuda --precision bf16 --json "$WORK/runner_vs_trainer.json"
    calibrations
fi

echo "total: $((SECONDS - START)) s" >> "$WORK/summary.txt"
rm -rf "$WORK/runs" "$WORK/cache"
tar czf "$OUTDIR/device_check.tar.gz" -C "$WORK" .
cat "$WORK/summary.txt"
echo "tarball: $OUTDIR/device_check.tar.gz"
