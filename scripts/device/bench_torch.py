"""PyTorch side of Kiln's CUDA micro-benchmarks: torch.matmul (BF16), torch._scaled_mm (FP8 row-wise, fast
accumulation) at FLUX's GEMM shapes (M = 4608), and scaled_dot_product_attention (cuDNN and flash backends) at
24 heads x L x 128. CUDA events, median of 5 batches of 20 calls after 5 warm-up calls and a 200 ms pause, the
same method as `kiln selftest`."""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(3072, 3072), (9216, 3072), (12288, 3072), (3072, 12288), (21504, 3072), (3072, 15360)]
M = 4608


def bench(fn, warmup=5, repeats=20, batches=5):
    # Start from an idle GPU (as `kiln selftest` does): sustained load lowers the clocks.
    torch.cuda.synchronize()
    time.sleep(0.2)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / repeats)
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "cublas": str(torch.backends.cuda.preferred_blas_library()),
              "cudnn": torch.backends.cudnn.version(), "gemm": [], "attention": []}
    torch.manual_seed(0)
    for n, k in SHAPES:
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        ms = bench(lambda: torch.matmul(x, w.t()))
        result["gemm"].append({"m": M, "n": n, "k": k, "precision": "bf16", "ms": ms, "op": "torch.matmul"})
        sx = x.abs().amax(dim=1, keepdim=True).float() / 448
        sw = w.abs().amax(dim=1, keepdim=True).float() / 448
        xq = (x.float() / sx).to(torch.float8_e4m3fn)
        wq = (w.float() / sw).to(torch.float8_e4m3fn)
        ms8 = bench(lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw.t(), out_dtype=torch.bfloat16, use_fast_accum=True))
        result["gemm"].append({"m": M, "n": n, "k": k, "precision": "fp8", "ms": ms8, "op": "torch._scaled_mm row-wise"})
        print(f"{M}x{n}x{k}: matmul {ms:.4f} ms ({2*M*n*k/ms/1e9:.0f} TFLOP/s), _scaled_mm {ms8:.4f} ms ({2*M*n*k/ms8/1e9:.0f} TFLOP/s)", flush=True)
        del x, w, xq, wq
    torch.backends.cudnn.benchmark = True
    result["conv"] = []
    for size, channels in ((128, 512), (256, 512), (512, 256), (1024, 128)):
        x = torch.randn(1, channels, size, size, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        w = (torch.randn(channels, channels, 3, 3, device="cuda", dtype=torch.bfloat16) * 0.02).to(memory_format=torch.channels_last)
        b = torch.randn(channels, device="cuda", dtype=torch.bfloat16) * 0.1
        ms = bench(lambda: F.conv2d(x, w, b, padding=1))
        result["conv"].append({"size": size, "channels": channels, "ms": ms, "op": "F.conv2d channels_last, cudnn.benchmark"})
        print(f"conv {size}x{size}x{channels}: {ms:.4f} ms", flush=True)
        del x, w
    for length in (4608, 4096, 16384):
        q, k, v = (torch.randn(1, 24, length, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        entry = {"b": 1, "h": 24, "l": length, "d": 128}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    entry[name + "_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v))
            except Exception as error:  # a backend may be unavailable
                entry[name + "_error"] = str(error)[:200]
        result["attention"].append(entry)
        print(f"attention 1x24x{length}x128: {entry}", flush=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
