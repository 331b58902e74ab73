#!/usr/bin/env python3
"""Merges scripts/device/flux.sh's results into one markdown table: Kiln per-stage times and Kiln / PyTorch ratios. The
image time is the median later run of `kiln bench` (embeddings given: no text encoders; text.json has them warm). The VAE
figure is the decoder's device time (CUDA events, as diffusers' is timed) where the JSON has it (from session 5 on), else
its wall time; "VAE wall" adds the image's conversion to PNG rows and its download."""

import glob
import json
import os
import sys

out = sys.argv[1]
torch_results = json.load(open(os.path.join(out, "torch-flux.json")))
print(f"GPU: {torch_results['gpu']}, torch {torch_results['torch']}\n")
print("| run | step ms | from | TFLOP/s | eager step ms | step ratio | VAE ms | eager VAE ms | VAE ratio | VAE wall ms | "
      "loop s (eager / graph) | PNG ms | image ms (setup + loop + VAE + PNG, replayed) | first image s | device GB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "kiln-*.json"))):
    k = json.load(open(path))
    size = f"{k['height']}x{k['width']}"
    eager_step, eager_vae = torch_results["step_ms"][size], torch_results["vae_decode_ms"][size]
    loops = {r["loop"]: r["loop_ms"] / 1000 for r in k["runs"]}
    vae = k.get("vae_decode_device_median_ms") or k.get("vae_decode_median_ms") or float("nan")
    vae_wall = k.get("vae_decode_median_ms") or float("nan")
    loop = f"{loops.get('eager', float('nan')):.2f} / {loops.get('replayed', float('nan')):.2f}"
    print(f"| {os.path.basename(path)[5:-5]} | {k['step_median_ms']:.1f} | {k['step_source'].split(' ')[0]} | "
          f"{k['step_tflops']:.0f} | {eager_step:.1f} | {k['step_median_ms'] / eager_step:.2f} | {vae:.1f} | "
          f"{eager_vae:.1f} | {vae / eager_vae:.2f} | {vae_wall:.1f} | {loop} | {k['png_median_ms']:.1f} | "
          f"{k.get('image_median_ms') or float('nan'):.0f} | {k['process_start_to_first_image_s']:.1f} | "
          f"{k.get('peak_device_memory_gb', k.get('device_memory_reserved_gb'))} |")
