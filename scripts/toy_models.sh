#!/usr/bin/env bash
# Retrain the embedded toy models from scratch (`make toy-models`), ship them, and check their alignment.
#
#   1. the toy recipe's stages (configs/toy.yaml), in order: pretrain, pretrain-upsampler, then for each
#      task (mask, sketch, depth): encoder, encoder-dropout, joint, upsampler. A stage whose run folder
#      already holds training states is resumed (`--resume`), so an interrupted run goes on where it
#      stopped, and a finished stage costs only its start-up;
#   2. the wall seconds of every stage run, added to checkpoints/toy/training_times.json;
#   3. the final EMA model files copied to checkpoints/toy/piti-toy-{task}-{base,upsample}.safetensors
#      (fp16, with the recommended sampling settings in the header: eval/export_toy.py);
#   4. the alignment check of the shipped models (eval/toy_alignment.py -> checkpoints/toy/alignment.json).
#
# Settings (environment): PY (python, default .venv/bin/python), CONFIG (default configs/toy.yaml),
# TASKS (default "mask sketch depth"), ALIGN_NUM (held-out scenes per task, default 50), TOY_OUT (the
# shipped folder, default checkpoints/toy; the pipeline loads the models from there), ONLY (run just these
# stages, "section[:task] ...", then stop: to split the work into lanes, e.g. one per core with
# OMP_NUM_THREADS=1), and EXPORT_FLAGS: sampling flags of eval/export_toy.py for the recommended settings
# written into the files' headers (e.g. EXPORT_FLAGS="--guidance 8 --steps 30"; unset: piti.settings.TOY_RECIPE,
# chosen on held-out selection scenes: docs/experiments.md). Extra arguments are passed to every
# `piti train` call as key=value overrides (e.g. device=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/toy.yaml}
TASKS=${TASKS:-"mask sketch depth"}
read -r -a export_flags <<< "${EXPORT_FLAGS:-}"
ALIGN_NUM=${ALIGN_NUM:-50}
OUT=${TOY_OUT:-checkpoints/toy}
TIMES=$OUT/training_times.json

# the run folder of a recipe section (its out_dir, {task} filled in)
run_dir() {
    "$PY" -c 'import sys; from piti.train.config import load_recipe
overrides = {"task": sys.argv[3]} if sys.argv[3] else {}
print(load_recipe(sys.argv[1], sys.argv[2], overrides).out_dir)' "$CONFIG" "$1" "${2:-}"
}

# add one stage run (name, seconds, resumed 0/1) to the timing file
record_time() {
    "$PY" - "$TIMES" "$1" "$2" "$3" <<'EOF'
import datetime, json, os, sys
from pathlib import Path

path, name, seconds, resumed = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
times = json.loads(path.read_text()) if path.is_file() else {
    "what": "wall seconds of every stage run of scripts/toy_models.sh; a resumed stage adds a run",
    "cpus": os.cpu_count(), "stages": {}}
stage = times["stages"].setdefault(name, {"seconds": 0.0, "runs": []})
stage["runs"].append({"seconds": round(seconds, 1), "resumed": resumed,
                      "finished": datetime.datetime.now().isoformat(timespec="seconds")})
stage["seconds"] = round(sum(r["seconds"] for r in stage["runs"]), 1)
times["total_seconds"] = round(sum(s["seconds"] for s in times["stages"].values()), 1)
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(times, indent=2) + "\n")
EOF
}

# run one recipe section (and task), resuming when its run folder holds states; time it
stage() {
    local section=$1 task=${2:-} name dir resume=() args=()
    name=$section${task:+-$task}
    dir=$(run_dir "$section" "$task")
    if compgen -G "$dir/checkpoints/state_*.pt" >/dev/null; then
        resume=(--resume)
    fi
    [[ -n $task ]] && args=("task=$task")
    echo "=== $name (${resume[*]:-from the start}) -> $dir"
    local start=$SECONDS
    "$PY" -m piti.cli train --config "$CONFIG" --stage "$section" "${resume[@]}" "${args[@]}" "${EXTRA[@]}"
    record_time "$name" $((SECONDS - start)) $((${#resume[@]} > 0))
}

EXTRA=("$@")
if [[ -n ${ONLY:-} ]]; then
    # a chosen list of stages, e.g. ONLY="encoder:mask joint:mask": one lane of a run split over cores
    for item in $ONLY; do
        stage "${item%%:*}" "$([[ $item == *:* ]] && echo "${item#*:}")"
    done
    exit 0
fi
stage pretrain
stage pretrain-upsampler
for task in $TASKS; do
    for section in encoder encoder-dropout joint upsampler; do
        stage "$section" "$task"
    done
    "$PY" eval/export_toy.py --task "$task" ${export_flags[@]+"${export_flags[@]}"} \
        --base "$(run_dir joint "$task")/model.safetensors" \
        --upsampler "$(run_dir upsampler "$task")/model.safetensors" --out-dir "$OUT"
done
echo "=== stage times: $TIMES"
# shellcheck disable=SC2086  # TASKS is a list of words
"$PY" eval/toy_alignment.py --tasks $TASKS --num "$ALIGN_NUM" --models-dir "$OUT" --out "$OUT/alignment.json"
