#!/usr/bin/env bash
# Every GPU check in one command, under 8 minutes on one H100 (run from the repository root):
#   1. the CUDA tests (each piece on CUDA against the CPU; patched DLRM with --use-gpu, the packed
#      engine after dlrm.to(device));
#   2. benchmarks/gpu_step.py: the step and peak GPU memory at batch 2048 and 16384 with full
#      Criteo-Kaggle tables, baseline d=16 against MLET d=16 k=256 in fp32 and fp16 tables;
#   3. where TorchRec is installed, its tests on the GPU (fbgemm's fp16 tables round stochastically
#      on CUDA).
# Results: benchmarks/results/gpu_step.json and .md, and the logs, copied to $OUT when it is set.
#   CPU_CHECK=1 benchmarks/gpu_all.sh   checks the script on a CPU (tiny tables, nothing saved)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-benchmarks/results}/gpu_all
[ "${CPU_CHECK:-0}" = 1 ] && LOGS=$(mktemp -d)
mkdir -p "$LOGS"
status=0
step() {  # name, seconds, command...: run it with a deadline, keep its log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "== $name: exit $rc"; status=1; }
}
if [ "${CPU_CHECK:-0}" = 1 ]; then
  step gpu_step 300 python benchmarks/gpu_step.py --cpu-check --scale 0.001 --batches 256 --steps 10
  exit $status
fi
python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
  { echo "gpu_all.sh needs a GPU: torch sees none"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOGS/gpu.txt"
step cuda_tests 150 python -m pytest -q -ra tests/test_cuda.py
step gpu_step 300 python benchmarks/gpu_step.py --batches 2048,16384 --steps 50
if python -c "import torchrec" 2>/dev/null; then
  step torchrec_tests 60 python -m pytest -q -ra tests/test_torchrec_memory.py tests/test_torchrec_quantize.py
else
  echo "== torchrec_tests: skipped (TorchRec is not installed here)" | tee "$LOGS/torchrec_tests.log"
fi
[ -z "${OUT:-}" ] || cp benchmarks/results/gpu_step.* "$OUT/" 2>/dev/null
exit $status
