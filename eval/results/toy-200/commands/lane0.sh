#!/bin/bash
# lane 0: the sampling experiments on the shipped models, most telling arms first; stops by 10:35 UTC
cd /work/main
END=$(date -u -d "10:35" +%s)
hours() { python3 -c "import time; print(round(($END - time.time()) / 3600, 3))"; }
run() { OMP_NUM_THREADS=1 .venv/bin/python eval/reproduce_toy.py --threads 1 --hours $(hours) "$@"; }
run --experiments guidance --arms plain-w3 normalized-w3 plain-w5 normalized-w5 plain-w10 normalized-w10 trace-plain-w5 trace-normalized-w5 trace-plain-w10 trace-normalized-w10
run --experiments steps --arms ddpm-5 ddpm-10 ddpm-25 dpmpp-10 ddim-10 dpmpp-25 ddim-25 ddpm-50 dpmpp-5 ddim-5 upsampler-ddpm-2 upsampler-ddpm-10
run --experiments guidance --arms plain-w2 normalized-w2 plain-w7 normalized-w7
run --experiments steps
