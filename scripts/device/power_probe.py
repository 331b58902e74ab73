#!/usr/bin/env python3
"""How fast the H100 runs FLUX's kinds of work once it sits at its power limit, next to how fast it runs them from idle.

For each workload (an FP8 row-wise GEMM and a BF16 GEMM of FLUX's MLP shape, cuDNN BF16 attention of FLUX's shape, a
1 GiB device copy) the GPU first idles for a few seconds, then 20 calls are timed from that cool start ("burst"), then
the workload runs without pause for `--seconds`; windows of calls are timed with CUDA events, and the later half of them
gives the sustained rate, while `nvidia-smi` samples power and SM clock every 100 ms. Every result is first checked
against a float32 reference on fresh random inputs. Energy per unit of work = mean power / sustained rate.

    python3 scripts/device/power_probe.py --json OUT.json
"""

import argparse
import json
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F


def workloads():
    m, n, k = 4608, 12288, 3072
    a = torch.randn(m, k, device="cuda")
    b = torch.randn(n, k, device="cuda") * 0.02
    sa = a.abs().amax(dim=1, keepdim=True) / 448
    sb = b.abs().amax(dim=1, keepdim=True) / 448
    a8 = (a / sa).to(torch.float8_e4m3fn)
    b8 = (b / sb).to(torch.float8_e4m3fn)
    sbt = sb.t().contiguous()
    reference = a @ b.t()
    a16, b16 = a.bfloat16(), b.bfloat16()

    def fp8():
        return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sbt, out_dtype=torch.bfloat16, use_fast_accum=True)

    def bf16():
        return a16 @ b16.t()

    q, kk, v = (torch.randn(1, 24, 4608, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attention_reference = F.scaled_dot_product_attention(q.float(), kk.float(), v.float())

    def attention():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, kk, v)

    source = torch.randn(256 * 1024 * 1024, device="cuda")
    target = torch.empty_like(source)

    def copy():
        return target.copy_(source)

    return [
        ("fp8 rowwise GEMM 4608x12288x3072", fp8, 2.0 * m * n * k, reference),
        ("bf16 GEMM 4608x12288x3072", bf16, 2.0 * m * n * k, reference),
        ("cudnn bf16 attention 24x4608x128", attention, 4.0 * 24 * 4608 * 4608 * 128, attention_reference),
        ("copy 1 GiB (2 GiB moved)", copy, None, source),
    ]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def timed(fn, calls):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--idle", type=float, default=4)
    args = parser.parse_args()
    log = "/tmp/power_probe_smi.csv"
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu", "--format=csv,noheader,nounits",
                            "-lms", "100", "-f", log])
    results = []
    try:
        for name, fn, flops, reference in workloads():
            error = rel(fn().float(), reference)
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            time.sleep(args.idle)
            burst = timed(fn, 20)
            calls = max(1, int(20 / burst))  # windows of about 20 ms
            windows = []
            begin = time.time()
            while time.time() - begin < args.seconds:
                windows.append((time.time(), timed(fn, calls)))
            late = [ms for t, ms in windows if t - begin >= args.seconds / 2]
            sustained = statistics.median(late)
            results.append(dict(name=name, error_vs_fp32=error, flops=flops, burst_ms=burst, sustained_ms=sustained,
                                window_start=begin + args.seconds / 2, window_end=begin + args.seconds))
            print(f"{name}: err {error:.2e}, burst {burst:.4f} ms, sustained {sustained:.4f} ms", flush=True)
    finally:
        time.sleep(0.3)
        smi.terminate()
        smi.wait()
    samples = []
    for line in open(log):
        parts = [p.strip() for p in line.split(",")]
        try:
            stamp = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S")) + float("0." + parts[0].split(".")[1])
            samples.append((stamp, float(parts[1]), float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue
    for r in results:
        inside = [s for s in samples if r["window_start"] <= s[0] <= r["window_end"]]
        r["samples"] = len(inside)
        r["watts"] = statistics.mean(s[1] for s in inside) if inside else None
        r["sm_mhz"] = statistics.mean(s[2] for s in inside) if inside else None
        r["temperature_c"] = max(s[3] for s in inside) if inside else None
        if r["flops"]:
            r["burst_tflops"] = r["flops"] / r["burst_ms"] / 1e9
            r["sustained_tflops"] = r["flops"] / r["sustained_ms"] / 1e9
            if r["watts"]:
                r["joules_per_pflop"] = r["watts"] / r["sustained_tflops"] * 1000
        else:
            r["burst_gbps"] = 2 * 2**30 / r["burst_ms"] / 1e6
            r["sustained_gbps"] = 2 * 2**30 / r["sustained_ms"] / 1e6
        for key in ("window_start", "window_end"):
            del r[key]
    print(json.dumps(results, indent=1))
    json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, results=results), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
