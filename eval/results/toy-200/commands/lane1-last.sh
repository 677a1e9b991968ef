#!/bin/bash
# lane 1, last: the training comparison repeated with a second training seed (200 steps per arm); stops by 10:35 UTC
cd /work/main
while pgrep -f lane1b.sh >/dev/null; do sleep 10; done
END=$(date -u -d "10:35" +%s)
hours() { python3 -c "import time; print(round(($END - time.time()) / 3600, 3))"; }
OMP_NUM_THREADS=1 .venv/bin/python eval/reproduce_toy.py --threads 1 --hours $(hours) --train-steps 200 --train-seed 1 --experiments finetune pretraining --arms two-stage mask-pretrained mask-scratch
