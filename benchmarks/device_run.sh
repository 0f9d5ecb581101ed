#!/usr/bin/env bash
# The prepared run for a lent GPU machine (the device tool runs it in a copy of the tree; ~6 min on an H100):
#   1. the CPU + GPU split tests of tests/tracing/test_devices.py (skipped on machines without CUDA);
#   2. benchmarks/devices.py: per-device peak memory and seconds, layers alternating CPU / cuda:0 vs one GPU;
#   3. benchmarks/gpu.py on the 1B and MoE shapes at L = 4096: AttnLRP and "sqrt" against the plain gradient,
#      with torch.profiler's top ops per method (--profile);
#   4. benchmarks/gpu_quantized.py: the bitsandbytes 4-bit row on CUDA.
# Results go to $OUT (the device tool's folder that comes back), else benchmarks/results/device_run.
#     bash benchmarks/device_run.sh
set -u
out=${OUT:-benchmarks/results/device_run}
mkdir -p "$out"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 MALLOC_MMAP_THRESHOLD_=65536
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 180 "$py" -m pytest tests/tracing/test_devices.py -q -p no:cacheprovider 2>&1 | tail -15 | tee "$out/test_devices.txt"
timeout 240 "$py" benchmarks/devices.py --out "$out/devices.md" 2>&1 | tail -30
timeout 300 "$py" benchmarks/gpu.py --model 1b moe --lengths 4096 --repeats 3 --profile 2>&1 | tee "$out/gpu_1b_moe.txt" | grep "^|"
timeout 120 "$py" benchmarks/gpu_quantized.py 2>&1 | tail -20 | tee "$out/gpu_quantized.txt"
