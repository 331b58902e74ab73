#!/usr/bin/env python3
"""Relative error of one safetensors tensor against another: compare.py A.safetensors:name B.safetensors:name [label]."""

import sys

import torch
from safetensors.torch import load_file


def load(spec):
    path, name = spec.rsplit(":", 1)
    return load_file(path)[name].double()


a, b = load(sys.argv[1]), load(sys.argv[2])
error = ((a - b).norm() / b.norm()).item()
print(f"relative error {sys.argv[3] if len(sys.argv) > 3 else ''}: {error:.3e}")
