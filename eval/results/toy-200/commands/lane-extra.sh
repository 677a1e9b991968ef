#!/bin/bash
# lane $1 of 2, after the rest: the sketch and upsampler comparisons with a second training seed; stops by 10:40 UTC
cd /work/main
END=$(date -u -d "10:40" +%s)
hours() { python3 -c "import time; print(round(($END - time.time()) / 3600, 3))"; }
OMP_NUM_THREADS=1 .venv/bin/python eval/reproduce_toy.py --threads 1 --hours $(hours) --lane $1 --lanes 2 --train-steps 200 --upsampler-steps 100 --train-seed 1 --experiments pretraining upsampler --arms sketch-pretrained sketch-scratch no-degradation degradation perceptual adversarial
