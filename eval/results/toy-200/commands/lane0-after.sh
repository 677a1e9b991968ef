#!/bin/bash
# lane 0, after the sampling experiments: the finetune arms on a second block of scenes and seeds (the spread of
# that comparison, no retraining), then the upsampler ablation at a reduced equal budget; stops by 10:35 UTC
cd /work/main
while pgrep -f lane0b.sh >/dev/null; do sleep 10; done
END=$(date -u -d "10:35" +%s)
hours() { python3 -c "import time; print(round(($END - time.time()) / 3600, 3))"; }
run() { OMP_NUM_THREADS=1 .venv/bin/python eval/reproduce_toy.py --threads 1 --hours $(hours) "$@"; }
run --experiments finetune --train-steps 200 --seed 1
run --experiments upsampler --upsampler-steps 100
