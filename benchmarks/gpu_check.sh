#!/usr/bin/env bash
# One-shot GPU check of the Triton kernels (issue 12); fits one <= 9-minute run on a lent GPU.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: the same code paths on the CPU interpreter, tiny sizes
#
# Writes benchmarks/results/gpu_check_<device>.{json,md}: versions and device, registers / spills of every
# compiled variant, the B=64 determinism check, CUDA-graph timings next to the reference and torch.softmax,
# and the tail of the CUDA parity suite. Nothing is estimated: a section that does not fit is marked skipped.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
START=$(date +%s)
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi

echo "== versions"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'hip', getattr(torch.version, 'hip', None), 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
command -v rocm-smi >/dev/null && rocm-smi --showproductname || true

if [ -n "$DRY" ]; then
  OUT="${TMPDIR:-/tmp}/gpu_check_dry"
else
  OUT="benchmarks/results/gpu_check_$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")"
fi

echo "== compile, determinism, timings (budget 330 s)"
timeout 420 $PY benchmarks/gpu_check.py $DRY --out "$OUT" --budget 330
RC=$?
echo "gpu_check.py exit $RC after $(( $(date +%s) - START )) s"

echo "== parity suite"
LEFT=$(( 530 - ($(date +%s) - START) ))
if [ -n "$DRY" ]; then
  echo "(dry run: parity suite skipped; it is the interpreter lane of the normal test suite)"
  echo "dry run: parity suite skipped" > "$OUT.pytest.log"
elif [ "$LEFT" -gt 30 ]; then
  timeout "$LEFT" $PY -m pytest -q -p no:cacheprovider tests/test_verify_parity.py \
      tests/test_triton_kernels.py tests/test_continuous.py -k "triton or (test_continuous and parity)" 2>&1 | tee "$OUT.pytest.log" | tail -15
else
  echo "no time left for the parity suite" | tee "$OUT.pytest.log"
fi
[ -f "$OUT.json" ] && $PY benchmarks/gpu_check.py --merge-pytest "$OUT.pytest.log" --out "$OUT" $DRY
echo "== done in $(( $(date +%s) - START )) s: $OUT.json $OUT.md"
