#!/usr/bin/env python3
"""Merges scripts/device/flux.sh's results into one markdown table: Kiln per-stage times and Kiln / PyTorch ratios."""

import glob
import json
import os
import sys

out = sys.argv[1]
torch_results = json.load(open(os.path.join(out, "torch-flux.json")))
print(f"GPU: {torch_results['gpu']}, torch {torch_results['torch']}\n")
print("| run | step ms (median) | TFLOP/s | eager step ms | step ratio | VAE ms | eager VAE ms | VAE ratio | "
      "loop s | first image s | load s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "kiln-*.json"))):
    k = json.load(open(path))
    size = f"{k['height']}x{k['width']}"
    eager_step = torch_results["step_ms"].get(size)
    eager_vae = torch_results["vae_decode_ms"].get(size)
    loop = sum(k["step_ms"]) / 1000
    print(f"| {os.path.basename(path)[5:-5]} | {k['step_median_ms']:.1f} | {k['step_tflops']:.0f} | "
          f"{eager_step:.1f} | {k['step_median_ms'] / eager_step:.2f} | {k['vae_decode_median_ms']:.1f} | {eager_vae:.1f} | "
          f"{k['vae_decode_median_ms'] / eager_vae:.2f} | {loop:.2f} | {k['process_start_to_first_image_s']:.1f} | {k['load_s']:.1f} |")
