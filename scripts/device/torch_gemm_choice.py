#!/usr/bin/env python3
"""Which cuBLASLt configuration PyTorch's matmul runs for a GEMM shape: one call under cuBLASLt's API log
(CUBLASLT_LOG_LEVEL=5, set by the caller), the log lines about the matmul printed for comparison with Kiln's choice.

    CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE=/tmp/lt.log python3 scripts/device/torch_gemm_choice.py 4608 21504 3072 /tmp/lt.log
"""
import sys

import torch

m, n, k, log = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
torch.matmul(x, w.t())
torch.cuda.synchronize()
print(f"torch.matmul {m}x{n}x{k}, preferred BLAS {torch.backends.cuda.preferred_blas_library()}")
for line in open(log, errors="replace"):
    if "Matmul" in line or "algo" in line.lower():
        print(line.rstrip()[:600])
