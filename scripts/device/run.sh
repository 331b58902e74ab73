#!/bin/bash
# Kiln's one device script: doctor, kernel compile (and the GPU-less NVRTC check), conformance + micro-benchmarks,
# the PyTorch comparison, and a merged report; then, when KILN_STAGES names them, FLUX end to end (scripts/device/flux.sh:
# tiny fixtures through CUDA, kiln bench at full size vs diffusers eager) and full-size parity (flux_parity.py). Run from
# the repository root on the GPU machine (one call may hold only some stages: each call has 10 minutes); "text" checks
# CLIP-L and T5-XXL at their real configs and the whole pipeline's memory with them (text_parity.py); "conformance" is
# the selftest without micro-benchmarks or PyTorch (a quick check of a new binary); "quality" makes
# the FP8 quality report (quality.py: images of FP32, BF16, torchao FP8, Kiln BF16 and FP8 on one model and noise);
# "power" measures sustained rates and power at the power limit (power_probe.py):
#   KILN_STAGES="selftest flux parity text" bash scripts/device/run.sh
# It expects the statically linked release binary at .device/kiln (built on the development machine with
#   swift build -c release --static-swift-stdlib -Xlinker -s --scratch-path .build-release
# and copied there). Results go to $OUT (default /tmp/kiln-out).
set -uo pipefail
OUT=${OUT:-/tmp/kiln-out}
mkdir -p "$OUT"
BIN=${KILN_BIN:-.device/kiln}
export KILN_KERNEL_DIR=${KILN_KERNEL_DIR:-$PWD/Sources/KilnCUDA/Kernels}
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}
LOG=$OUT/device.log
STAGES=${KILN_STAGES:-selftest}
stage() { [[ " $STAGES " == *" $1 "* ]]; }
if stage flux || stage parity || stage text || stage quality; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
WHEEL_LIBS=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)
if stage selftest; then
{
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  echo "== kiln doctor"; $BIN doctor; echo "rc=$?"
  echo "== kiln compile (fills the cache)"; $BIN compile; echo "rc=$?"
  echo "== kiln compile (again: from the cache)"; $BIN compile; echo "rc=$?"
  echo "== kiln compile --arch sm_90a --check with the pip wheel's NVRTC ($WHEEL_LIBS)"
  KILN_CUDA_LIBS=$WHEEL_LIBS $BIN compile --arch sm_90a --check; echo "rc=$?"
} 2>&1 | tee "$LOG"
echo "== PyTorch reference"
PYTHONUNBUFFERED=1 python3 scripts/device/bench_torch.py --json "$OUT/torch.json" 2>&1 | tee -a "$LOG"
# The selftest uses the same cuBLASLt as PyTorch (the venv's wheel), library for library; cuDNN comes from the
# system loader path (both versions are printed).
echo "== the cuBLASLt configuration torch.matmul runs at 4608x21504x3072 (API log)"
CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE=$OUT/cublaslt-torch.log python3 scripts/device/torch_gemm_choice.py 4608 21504 3072 \
  $OUT/cublaslt-torch.log 2>&1 | tail -20 | tee -a "$LOG"
echo "== kiln selftest --gpu (KILN_CUDA_LIBS=$WHEEL_LIBS)"
KILN_CUDA_LIBS=$WHEEL_LIBS $BIN selftest --gpu --json "$OUT/kiln.json" ${KILN_SELFTEST_ARGS:-} 2>&1 | tee "$OUT/selftest.txt"
echo "selftest rc=${PIPESTATUS[0]}"
echo "== PyTorch reference again (the report takes PyTorch's faster run of the two)"
PYTHONUNBUFFERED=1 python3 scripts/device/bench_torch.py --json "$OUT/torch2.json" 2>&1 | tee -a "$LOG"
if [ -f "$OUT/kiln.json" ]; then
  python3 scripts/device/report.py "$OUT/kiln.json" "$OUT/torch.json" "$OUT/torch2.json" > "$OUT/results.md" && cat "$OUT/results.md"
fi
fi
# Conformance alone (no micro-benchmarks, no PyTorch): the quick check of a new binary.
if stage conformance; then
  KILN_CUDA_LIBS=$WHEEL_LIBS $BIN selftest --gpu --no-bench --quick --json "$OUT/kiln.json" 2>&1 | tee "$OUT/selftest.txt"
  echo "selftest rc=${PIPESTATUS[0]}"
fi
if stage flux; then bash scripts/device/flux.sh; fi
if stage quality; then
  PYTHONUNBUFFERED=1 KILN_CUDA_LIBS=$WHEEL_LIBS python3 scripts/device/quality.py --kiln "$BIN" --out "$OUT" 2>&1 | tee "$OUT/quality.txt"
  rm -rf /tmp/quality  # 24 GB of weights: the disk (64 GB) holds one stage's model at a time
fi
if stage parity; then
  PYTHONUNBUFFERED=1 KILN_CUDA_LIBS=$WHEEL_LIBS python3 scripts/device/flux_parity.py --kiln "$BIN" --json "$OUT/parity.json" 2>&1 | tee "$OUT/parity.txt"
  rm -rf /tmp/parity
fi
# Sustained rates and power at the GPU's power limit against rates from idle (power_probe.py).
if stage power; then
  PYTHONUNBUFFERED=1 python3 scripts/device/power_probe.py --json "$OUT/power.json" 2>&1 | tee "$OUT/power.txt"
fi
if stage text; then
  PYTHONUNBUFFERED=1 python3 scripts/device/text_parity.py --kiln "$BIN" --json "$OUT/text.json" 2>&1 | tee "$OUT/text.txt"
fi
