#!/usr/bin/env bash
# Every check that needs a GPU, as one command (a lent GPU session is short: run this, not pieces).
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# 1. benchmarks/kernels.py: token_kl / fused_linear_token_kl vs eager, torch.compile, Liger-Kernel
# 2. tests/ops on CUDA (hypothesis against the references), the CUDA teacher test and the
#    no-host-sync test of a MAD step
# 3. benchmarks/training_overhead.py on CUDA (plain vs MAD live vs MAD cache; --profile: the
#    ops and kernel launches of each mode's step)
# Wheels found in .whl/ (liger-kernel, open_clip_torch, ftfy, wcwidth: see benchmarks/README.md)
# are installed with --no-deps into /tmp/site first, for a machine with no package registry.
# Each step has its own time limit (env T_KERNELS, T_TESTS, T_OVERHEAD, seconds) and writes its
# log and results into OUT_DIR as it goes, so a step cut short loses only its own tail.
set -u -o pipefail
OUT_DIR=${1:-benchmarks/results}
mkdir -p "$OUT_DIR"
source benchmarks/gpu_env.sh "$OUT_DIR/gpu-session.log"

echo "== kernels benchmark" | tee -a "$OUT_DIR/gpu-session.log"
timeout "${T_KERNELS:-300}" python3 benchmarks/kernels.py --out "$OUT_DIR" 2>&1 \
  | tee "$OUT_DIR/kernels.log" | grep -v "^ " | tail -40
echo "kernels exit ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/gpu-session.log"

echo "== tests on CUDA" | tee -a "$OUT_DIR/gpu-session.log"
timeout "${T_TESTS:-150}" python3 -m pytest -q -p no:cacheprovider -rs tests/ops \
  tests/teachers/test_teachers_clip.py::test_cuda_outputs_and_identity \
  tests/test_mixin.py::test_mad_step_makes_no_host_sync_on_cuda 2>&1 \
  | tee "$OUT_DIR/tests-cuda.log" | tail -25
echo "tests exit ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/gpu-session.log"

echo "== training overhead on CUDA" | tee -a "$OUT_DIR/gpu-session.log"
timeout "${T_OVERHEAD:-60}" python3 benchmarks/training_overhead.py --device cuda \
  --steps 5 --repeats 3 --batch-builtin 64 --batch-vilt 8 --profile 15 --out "$OUT_DIR" 2>&1 \
  | tee "$OUT_DIR/overhead.log" | tail -25
echo "overhead exit ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/gpu-session.log"
