#!/usr/bin/env python3
"""Checks a PNG written by `kiln generate` against an fp32 reference image (a safetensors tensor `image` [1, 3, H, W] in
[0, 1]) in 8-bit levels: `python3 scripts/device/png_check.py OUT.png REFERENCE.safetensors`."""

import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

png = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(np.int32)
reference = load_file(sys.argv[2])["image"][0].transpose(1, 2, 0)
expected = np.clip(np.round(reference * 255), 0, 255).astype(np.int32)
difference = np.abs(png - expected)
print(f"{sys.argv[1]} vs {sys.argv[2]}: {png.shape}, mean |diff| {difference.mean():.3f} levels, max {difference.max()}, "
      f"exact {np.mean(difference == 0) * 100:.1f}%")
