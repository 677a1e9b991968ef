#!/usr/bin/env bash
# The whole toy recipe (configs/toy.yaml) in ONE short call of a GPU machine (at most 10 minutes a command).
# On a 2-core CPU the recipe gets about 16,000 samples of pretraining in an hour, far too few for a toy GLIDE
# that follows its captions (docs/experiments.md); an H100 gives hundreds of thousands in minutes.
#
#   phase 1 (PRETRAIN_MIN minutes): pretrain (toy GLIDE base, batch 128) beside pretrain-upsampler (batch 32);
#   phase 2 (TASK_MIN minutes): for each task one lane encoder -> encoder-dropout -> joint (shares
#            ENCODER_SHARE / DROPOUT_SHARE / the rest of TASK_MIN, batch 64) and one lane upsampler (batch 32),
#            all six side by side on the one GPU;
#   then:    every stage's model file exported in fp16 with eval/export_toy.py to $OUT/toy/ (the six shipped
#            files piti-toy-{task}-{base,upsample}.safetensors and toy-glide-base-pretrain.safetensors),
#            and the runs' configs and logs in $OUT/toy_runs.tar.gz (for the model card's loss curves).
#
# Every stage is stopped by `time_limit` (iterations 0 = no step ceiling): it saves its checkpoint and model
# file and ends cleanly, so the phases end on time whatever the machine's speed. Stages that are not the
# recipe's own settings here: precision bf16 (autocast on the GPU), the batches above, ema_rate 0.999 (the
# runs are thousands of steps, not hundreds), save_interval 1000, no sample grids (the CPU draws them later).
#
# On the device, from the repository root (the defaults fit one call with time to spare, ~8.5 minutes):
#   bash scripts/toy_models_device.sh
# Back here: the alignment check and the card, e.g.
#   python eval/toy_alignment.py --models-dir /work/.device/.../toy --out checkpoints/toy/alignment.json
# A miniature run on a CPU, to check the script itself (a few steps per stage):
#   PY=.venv/bin/python DEVICE=cpu PRETRAIN_MIN=0.02 TASK_MIN=0.05 BATCH=2 WORKERS=0 OUT=/tmp/toydev \
#       RUNS=/tmp/toydev/runs bash scripts/toy_models_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
CONFIG=${CONFIG:-configs/toy.yaml}
TASKS=${TASKS:-"mask sketch depth"}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-$([[ $DEVICE == cuda ]] && echo bf16 || echo fp32)}
PRETRAIN_MIN=${PRETRAIN_MIN:-3.5}
TASK_MIN=${TASK_MIN:-3.5}
ENCODER_SHARE=${ENCODER_SHARE:-0.2}
DROPOUT_SHARE=${DROPOUT_SHARE:-0.1}
BATCH=${BATCH:-}            # one batch for every stage (a CPU miniature); default per stage, above
WORKERS=${WORKERS:-}        # data-loader workers per lane; default from the machine's cores
OUT=${OUT:-runs/toy-device}
RUNS=${RUNS:-runs/toy}
read -r -a export_flags <<< "${EXPORT_FLAGS:-}"  # sampling flags of eval/export_toy.py (unset: its recipe)
CORES=$(nproc)

minutes() { "$PY" -c "print(round($1 * $2, 3))"; }  # minutes TOTAL FRACTION

# one recipe section as one run: train SECTION TASK OUT_NAME INIT_NAME MINUTES BATCH WORKERS
train() {
    local section=$1 task=$2 name=$3 init=$4 limit=$5 batch=${BATCH:-$6} workers=${WORKERS:-$7}
    local args=(out_dir="$RUNS/$name" device="$DEVICE" precision="$PRECISION" batch_size="$batch"
                num_workers="$workers" iterations=0 time_limit="$limit" ema_rate=0.999 save_interval=1000
                sample_interval=0 log_interval=25)
    [[ -n $task ]] && args+=(task="$task")
    [[ -n $init ]] && args+=(init="$RUNS/$init/model.safetensors")
    echo "=== $name: $limit min, batch $batch, $workers workers ($(date +%T))"
    "$PY" -m piti.cli train --config "$CONFIG" --stage "$section" "${args[@]}" > "$RUNS/$name.log" 2>&1 \
        || { echo "!!! $name failed, its log:"; tail -n 30 "$RUNS/$name.log"; return 1; }
    tail -n 1 "$RUNS/$name/log.csv" | sed "s/^/    $name last log row: /"
}

# wait for background lanes; fail if any failed
wait_all() { local ok=0; for pid in "$@"; do wait "$pid" || ok=1; done; return $ok; }

mkdir -p "$RUNS" "$OUT/toy"
start=$SECONDS
train pretrain "" pretrain "" "$PRETRAIN_MIN" 128 $((CORES * 3 / 4)) & p1=$!
train pretrain-upsampler "" pretrain-upsampler "" "$PRETRAIN_MIN" 32 $((CORES / 4)) & p2=$!
wait_all $p1 $p2

lanes=()
n_tasks=$(wc -w <<< "$TASKS")
base_workers=$((CORES * 2 / 3 / n_tasks)); up_workers=$((CORES / 3 / n_tasks))
for task in $TASKS; do
    ( train encoder "$task" "encoder-$task" pretrain "$(minutes "$TASK_MIN" "$ENCODER_SHARE")" 64 $base_workers &&
      train encoder-dropout "$task" "encoder-dropout-$task" "encoder-$task" \
          "$(minutes "$TASK_MIN" "$DROPOUT_SHARE")" 64 $base_workers &&
      train joint "$task" "joint-$task" "encoder-dropout-$task" \
          "$(minutes "$TASK_MIN" "(1 - $ENCODER_SHARE - $DROPOUT_SHARE)")" 64 $base_workers ) &
    lanes+=($!)
    train upsampler "$task" "upsampler-$task" pretrain-upsampler "$TASK_MIN" 32 $up_workers & lanes+=($!)
done
wait_all "${lanes[@]}"
echo "=== training done in $((SECONDS - start)) s"

for task in $TASKS; do
    "$PY" eval/export_toy.py --task "$task" ${export_flags[@]+"${export_flags[@]}"} \
        --base "$RUNS/joint-$task/model.safetensors" --upsampler "$RUNS/upsampler-$task/model.safetensors" \
        --out-dir "$OUT/toy"
done
"$PY" -c 'import sys; from piti.checkpoints import copy_model; copy_model(*sys.argv[1:])' \
    "$RUNS/pretrain/model.safetensors" "$OUT/toy/toy-glide-base-pretrain.safetensors"
tar -czf "$OUT/toy_runs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls -d -- */config.yaml */log.csv *.log)
ls -l "$OUT/toy" "$OUT/toy_runs.tar.gz"
echo "=== all done in $((SECONDS - start)) s"
