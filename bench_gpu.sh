#!/usr/bin/env bash
# The 124M configs on one GPU, through bench.py on random data: ms/step, tokens/s, MFU, peak memory.
# A step is one micro-batch of 12 x 1024 tokens (gradient_accumulation_steps is ignored), compiled, bf16.
# Under 8 minutes on an H100/H200: the runs after the first of each model hit the compile cache.
# Overrides (tests/test_bench.py runs it on the CPU with them): PYTHON, NVIDIA_SMI (the command that names the GPU),
# BENCH_DEVICE_ARGS (bench.py's device flags) and BENCH_ARGS (more bench.py flags for every run, after the config's).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
BENCH_DEVICE_ARGS=${BENCH_DEVICE_ARGS:---device=cuda --dtype=bfloat16 --compile=True}
BENCH_ARGS=${BENCH_ARGS:-}
$NVIDIA_SMI --query-gpu=name,memory.total,driver_version --format=csv,noheader
for config in config/gpt2.py config/dnt_gpt2.py config/dnt_gpt2_adamw.py; do
    echo "== $config"
    $PYTHON bench.py "$config" $BENCH_DEVICE_ARGS $BENCH_ARGS
done
# side by side, interleaved: the optimizer step alone (mSGDW's not above AdamW's?), then the paper's two cells
echo "== config/dnt_gpt2.py, opt=adamw,msgdw"
$PYTHON bench.py config/dnt_gpt2.py $BENCH_DEVICE_ARGS $BENCH_ARGS --compare="opt=adamw,msgdw"
echo "== standard + AdamW vs DNT + mSGDW"
$PYTHON bench.py config/gpt2.py $BENCH_DEVICE_ARGS $BENCH_ARGS --compare="preset=standard,dnt;opt=adamw,msgdw"
