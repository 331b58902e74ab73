"""Merges `kiln selftest --gpu --json` and bench_torch.py's JSON into one markdown report."""
import json
import sys


def main():
    kiln = json.load(open(sys.argv[1]))
    runs = [json.load(open(path)) for path in sys.argv[2:]]
    torch = runs[0] if runs else {"gemm": [], "attention": []}
    # PyTorch's faster time of its runs, entry by entry.
    for other in runs[1:]:
        for mine, theirs in zip(torch["gemm"], other["gemm"]):
            mine["ms"] = min(mine["ms"], theirs["ms"])
        for mine, theirs in zip(torch["attention"], other["attention"]):
            for key in ("cudnn_ms", "flash_ms"):
                if key in mine and key in theirs:
                    mine[key] = min(mine[key], theirs[key])
    out = []
    out.append(f"GPU: {kiln['gpu']}; kiln: cuBLASLt {kiln['cublasLt']}, cuDNN {kiln.get('cudnn', '?')}, NVRTC {kiln['nvrtc']}; "
               f"torch {torch.get('torch', '?')} (cuDNN {torch.get('cudnn', '?')}, BLAS backend {torch.get('cublas', '?')})\n")
    out.append(f"## Conformance: {kiln['passed']} passed, {kiln['failed']} failed\n")
    out.append("| op | shape | precision | rel. error | tol | kiln ms | result | note |")
    out.append("|---|---|---|---|---|---|---|---|")
    for r in kiln["conformance"]:
        err = "nan" if r["error"] is None else f"{r['error']:.2e}"
        ms = "" if r["ms"] is None else f"{r['ms']:.4f}"
        out.append(f"| {r['op']} | {r['shape']} | {r['precision']} | {err} | {r['tolerance']:.0e} | {ms} | {'pass' if r['passed'] else 'FAIL'} | {r['note']} |")
    tg = {(g["n"], g["k"], g["precision"]): g for g in torch.get("gemm", [])}
    out.append("\n## GEMM, M = 4608 (ms, median; CUDA events)\n")
    out.append("| N x K | precision | kiln autotuned | TFLOP/s | best of all configurations (count) | autotuned / best | heuristic #1 | torch | torch / kiln | autotuned algorithm | best algorithm |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for g in kiln.get("gemm", []):
        t = tg.get((g["n"], g["k"], g["precision"]))
        tms = t["ms"] if t else None
        tcol = "" if tms is None else "%.4f" % tms
        rcol = "" if tms is None else "%.3f" % (tms / g["ms"])
        out.append(f"| {g['n']}x{g['k']} | {g['precision']} | {g['ms']:.4f} | {g['tflops']:.0f} | {g['best_of_all_ms']:.4f} ({int(g['candidates'])}) | "
                   f"{g['ms']/g['best_of_all_ms']:.3f} | {g['heuristic_ms']:.4f} | {tcol} | {rcol} | {g['algorithm']} | {g.get('best_algorithm', '')} |")
    for other in runs[1:]:
        for mine, theirs in zip(torch.get("conv", []), other.get("conv", [])):
            mine["ms"] = min(mine["ms"], theirs["ms"])
    tc = {(c["size"], c["channels"]): c for c in torch.get("conv", [])}
    out.append("\n## Convolution BF16 NHWC 3x3 (FLUX VAE decoder layers), ms\n")
    out.append("| input | kiln kernel | kiln | TFLOP/s | torch conv2d (channels_last, cudnn.benchmark) | torch / kiln |")
    out.append("|---|---|---|---|---|---|")
    for c in kiln.get("conv", []):
        t = tc.get((c["size"], c["channels"]))
        tcol = "" if t is None else "%.4f" % t["ms"]
        rcol = "" if t is None else "%.3f" % (t["ms"] / c["ms"])
        out.append(f"| {c['size']}x{c['size']}x{c['channels']} | {c['kernel']} | {c['ms']:.4f} | {c['tflops']:.0f} | {tcol} | {rcol} |")
    ta = {a["l"]: a for a in torch.get("attention", [])}
    out.append("\n## Attention BF16, 1 x 24 heads x L x 128 (ms)\n")
    out.append("| L | kiln kernel | kiln | TFLOP/s | torch SDPA cuDNN | torch SDPA flash | torch cuDNN / kiln |")
    out.append("|---|---|---|---|---|---|---|")
    for a in kiln.get("attention", []):
        t = ta.get(a["l"], {})
        c, f = t.get("cudnn_ms"), t.get("flash_ms")
        ccol = "" if c is None else "%.4f" % c
        fcol = "" if f is None else "%.4f" % f
        rcol = "" if c is None else "%.3f" % (c / a["ms"])
        out.append(f"| {a['l']} | {a.get('kernel', 'own')} | {a['ms']:.4f} | {a['tflops']:.0f} | {ccol} | {fcol} | {rcol} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
