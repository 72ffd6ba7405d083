#!/usr/bin/env bash
# The GPU suite: on one GPU (an H100 in about 7 minutes), the t2v-1.3B architecture with random weights at 480x832,
# 81 frames — openwan against diffusers per DiT forward and end to end, each acceleration's speed-up (int8, fp8,
# flash, sage, compiled blocks, the diffusion cache presets), peak memory in the default, offload and block-streaming
# modes, the DiT's MFU — then `pytest -m gpu`; all figures in one JSON (benchmarks/bench_gpu.py says what each is).
# Usage: bash benchmarks/gpu_suite.sh [OUT.json]      (default runs/gpu-suite.json)
#        TINY=1 bash benchmarks/gpu_suite.sh          (the tiny configuration on CPU, seconds)
# STEPS (20) sets the sampling steps of the end-to-end and cache runs; per-step figures extrapolate to 50 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu-suite.json}
STEPS=${STEPS:-20}
if [ -n "${TINY:-}" ]; then
  exec "$PY" benchmarks/bench_gpu.py --tiny --out "$OUT" --steps 6 --reps 1
fi
# 8 minutes in all: the benchmark sections, then the gpu test tier with the time left; the JSON is rewritten after
# each section, so a cut run keeps what it measured.
timeout "${SUITE_TIMEOUT:-480}" "$PY" benchmarks/bench_gpu.py --out "$OUT" --steps "$STEPS" --reps 3 --pytest \
  --budget-s "$(( ${SUITE_TIMEOUT:-480} - 10 ))"
echo "figures: $OUT"
