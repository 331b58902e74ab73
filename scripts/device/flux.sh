#!/bin/bash
# FLUX.1 end to end on the GPU machine, in one call: `kiln bench` at full size with random weights (dev and schnell,
# several resolutions) next to diffusers eager BF16 measured in the same call, and the ratios.
# Run from the repository root there (binary at .device/kiln, diffusers wheels in .whl/), normally through
#   KILN_STAGES=flux bash scripts/device/run.sh
set -uo pipefail
OUT=${OUT:-/tmp/kiln-out}
mkdir -p "$OUT"
BIN=${KILN_BIN:-.device/kiln}
export KILN_KERNEL_DIR=${KILN_KERNEL_DIR:-$PWD/Sources/KilnCUDA/Kernels}
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}
export KILN_CUDA_LIBS=${KILN_CUDA_LIBS:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)}
SIZES=${KILN_FLUX_SIZES:-1024x1024 768x1360 512x512}
# Parts can be left out to fit a call: KILN_FLUX_PARTS lists tiny, bf16, cold, profile, fp8, batch (default: all).
PARTS=" ${KILN_FLUX_PARTS:-tiny bf16 cold profile fp8 batch} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
# Tiny fixtures through the CUDA backend (BF16) against diffusers fp32: the whole pipeline, also from a prompt.
part tiny && for case in "tiny-flux-dev pipeline_dev_96x160 96 160 4" "tiny-flux-schnell pipeline_schnell_128x128 128 128 2"; do
  set -- $case
  ref=fixtures/reference/$2.safetensors
  $BIN generate --device cuda --precision bf16 --model fixtures/$1 --latents $ref --prompt-embeds $ref --height $3 --width $4 --steps $5 \
    --save-latents "$OUT/$2-cuda.safetensors" --out "$OUT/$2-cuda.png" 2>&1 | grep -v '^denoising' | tail -2
  python3 scripts/device/compare.py "$OUT/$2-cuda.safetensors:latents" "$ref:final_latents" "CUDA $1 $2 final latents"
done
if part tiny; then
ref=fixtures/reference/pipeline_prompt_a.safetensors
$BIN generate --device cuda --precision bf16 --model fixtures/tiny-flux-dev-text --prompt "a red kiln at dusk, 35mm photo" --latents $ref \
  --height 128 --width 128 --steps 3 --save-latents "$OUT/prompt-cuda.safetensors" --save-prompt-embeds "$OUT/prompt-embeds-cuda.safetensors" \
  --out "$OUT/prompt-cuda.png" 2>&1 | grep -v '^denoising' | tail -2
python3 scripts/device/compare.py "$OUT/prompt-embeds-cuda.safetensors:prompt_embeds" "$ref:prompt_embeds" "CUDA T5 embeddings"
python3 scripts/device/compare.py "$OUT/prompt-embeds-cuda.safetensors:pooled_prompt_embeds" "$ref:pooled_prompt_embeds" "CUDA CLIP pooled"
python3 scripts/device/compare.py "$OUT/prompt-cuda.safetensors:latents" "$ref:final_latents" "CUDA prompt final latents"
fi

part bf16 && for variant in dev schnell; do
  steps=$([ $variant = dev ] && echo 28 || echo 4)
  for size in $SIZES; do
    [ $variant = schnell ] && [ $size != 1024x1024 ] && continue
    echo "== kiln bench $variant $size, $steps steps"
    $BIN bench --random-weights $variant --device cuda --precision bf16 --width ${size#*x} --height ${size%x*} --steps $steps --runs 3 \
      --json "$OUT/kiln-$variant-$size.json" 2>&1 | grep -v '^denoising' | tail -3
  done
done
# Cold start: process start to first image with empty caches (NVRTC kernels, GEMM choices), then again with them warm.
COLD=$(mktemp -d)
part cold && for state in empty warm; do
  echo "== cold start, caches $state: dev 1024x1024 FP8"
  KILN_CACHE_DIR=$COLD $BIN bench --random-weights dev --device cuda --precision fp8 --width 1024 --height 1024 --steps 28 --runs 1 \
    --json "$OUT/coldstart-$state.json" 2>&1 | grep -v '^denoising' | tail -2
done
# Device time per op (CUDA events around every launch): 2 eager steps and a VAE decode, then two more decodes. Kernels
# load eagerly (CUDA_MODULE_LOADING=EAGER) so that the first run's figures hold no one-time loading of cuBLASLt kernels.
part profile && for precision in ${KILN_PROFILE_PRECISIONS-bf16 fp8}; do
  echo "== op profile: dev 1024x1024 $precision, 2 eager steps and the VAE decode"
  CUDA_MODULE_LOADING=EAGER KILN_PROFILE=1 $BIN bench --random-weights dev --device cuda --precision $precision --width 1024 --height 1024 --steps 2 --runs 2 \
    --json "$OUT/profile-$precision.json" 2>&1 | grep -v '^denoising' | grep -v '^{' | tail -52
done
# Five timed runs: the loop replays from the second, the VAE decode from the third (the medians take replays).
part fp8 && for variant in ${KILN_FP8_VARIANTS-dev schnell}; do
  steps=$([ $variant = dev ] && echo 28 || echo 4)
  echo "== kiln bench $variant 1024x1024 FP8, $steps steps"
  $BIN bench --random-weights $variant --device cuda --precision fp8 --width 1024 --height 1024 --steps $steps --runs 5 \
    --json "$OUT/kiln-$variant-fp8-1024x1024.json" 2>&1 | grep -v '^denoising' | tail -3
done
# Batch 2 (its images equal single runs with seed + index: a CPU test checks that); outside the ratio table.
part batch && echo "== kiln bench dev 512x512 batch 2" && $BIN bench --random-weights dev --device cuda --precision bf16 --width 512 --height 512 --steps 4 --batch 2 --runs 2 \
  --json "$OUT/batch2-dev-512x512.json" 2>&1 | grep -v '^denoising' | tail -3
echo "== diffusers eager BF16"
PYTHONUNBUFFERED=1 python3 scripts/device/flux_torch.py --json "$OUT/torch-flux.json" --sizes "$(echo $SIZES | tr ' ' ',')"
python3 scripts/device/flux_report.py "$OUT" | tee "$OUT/flux.md"
