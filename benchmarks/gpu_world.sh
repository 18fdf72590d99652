#!/usr/bin/env bash
# World grids on the lent GPU itself (train.accelerator=cuda), as one command:
#
#   bash benchmarks/gpu_world.sh OUT_DIR GRID.yaml [GRID.yaml ...]
#
# First the CUDA test of the world runner (every path: teacher store, unlabelled rows, augmented
# views labelled live, the test pass), then each grid with `--set train.accelerator=cuda` into
# OUT_DIR/<grid>_cuda (CUDA results are other runs than the CPU ones: their own directory),
# WORKERS processes sharing the GPU (default 4), each grid under T_GRID seconds (default 240).
# The harness writes every finished run at once, so a grid cut short keeps its finished runs and
# a rerun resumes it. (Session 17 ran grids as 16 CPU processes on the GPU machine's cores: none
# of its 1260-step runs finished in 525 s. Use the GPU.)
set -u -o pipefail
OUT_DIR=${1:?usage: gpu_world.sh OUT_DIR GRID.yaml ...}
shift
mkdir -p "$OUT_DIR"
source benchmarks/gpu_env.sh "$OUT_DIR/gpu-world.log"

echo "== world runner on CUDA (test)" | tee -a "$OUT_DIR/gpu-world.log"
timeout "${T_TEST:-120}" python3 -m pytest -q -p no:cacheprovider -rs \
  tests/bench/test_world.py::test_a_run_trains_on_cuda 2>&1 | tail -15 \
  | tee -a "$OUT_DIR/gpu-world.log"

for grid in "$@"; do
  name=$(basename "$grid" .yaml)
  echo "== $name on CUDA" | tee -a "$OUT_DIR/gpu-world.log"
  timeout "${T_GRID:-240}" python3 -m mad_distill.cli bench --config "$grid" \
    --set train.accelerator=cuda --out-dir "$OUT_DIR/${name}_cuda" --workers "${WORKERS:-4}" \
    >"$OUT_DIR/$name.log" 2>&1
  echo "$name exit $?; $(ls "$OUT_DIR/${name}_cuda/runs" 2>/dev/null | wc -l) runs finished" \
    | tee -a "$OUT_DIR/gpu-world.log"
  tail -n 5 "$OUT_DIR/$name.log"
done
