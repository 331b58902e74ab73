#!/usr/bin/env python3
"""Per-kernel device time of one eager FLUX step and the VAE decode from an Nsight Compute CSV (gzip or plain) of
`kiln bench --steps 1 --runs 0` run under `ncu --metrics gpu__time_duration.sum --csv`. Kernels run one at a time
under ncu, at the clocks of an otherwise idle GPU: the sums are kernel times, not the captured graph's step time.
The step spans from the image embedding GEMM (just before the first adaLN) to the scheduler's update after it (the first
add_bf16); the VAE decode is everything after."""

import collections
import csv
import gzip
import sys


def main():
    path = sys.argv[1]
    opened = gzip.open(path, "rt") if path.endswith(".gz") else open(path)
    rows = list(csv.DictReader(line for line in opened if line.startswith('"')))
    names = [r["Kernel Name"] for r in rows]
    micros = [float(r["Metric Value"].replace(",", "")) / 1000 for r in rows]  # ncu reports ns
    start = names.index("layernorm_modulate_warp") - 1
    end = next(i for i in range(start, len(rows)) if names[i].startswith("add_bf16")) + 1
    for title, (a, b) in [("step", (start, end)), ("VAE decode", (end, len(rows)))]:
        totals = collections.defaultdict(lambda: [0, 0.0])
        for i in range(a, b):
            name = names[i]
            if name.startswith("nvjet"):  # cuBLASLt: group by epilogue and grid
                name = f"GEMM{' gelu' if 'gelu' in name else ''} grid {rows[i]['Grid Size']}"
            totals[name[:72]][0] += 1
            totals[name[:72]][1] += micros[i]
        print(f"== {title}: {b - a} kernels, {sum(t for _, t in totals.values()) / 1000:.2f} ms")
        for name, (calls, total) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            print(f"{total / 1000:8.3f} ms {calls:5d}  {name}")


if __name__ == "__main__":
    main()
