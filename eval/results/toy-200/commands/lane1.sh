#!/bin/bash
# lane 1: after the seed-1 spread process (pid 23566), the training arms at a reduced equal budget; stops by 10:35 UTC
cd /work/main
while kill -0 23566 2>/dev/null; do sleep 5; done
END=$(date -u -d "10:35" +%s)
hours() { python3 -c "import time; print(round(($END - time.time()) / 3600, 3))"; }
run() { OMP_NUM_THREADS=1 .venv/bin/python eval/reproduce_toy.py --threads 1 --hours $(hours) "$@"; }
run --experiments finetune pretraining --train-steps 200 --arms fixed-decoder one-stage two-stage mask-pretrained mask-scratch
run --experiments pretraining --train-steps 200
run --experiments upsampler --upsampler-steps 100
