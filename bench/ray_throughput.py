"""Local engine vs Ray Data engine on the same folders, process start to finished CSV, one table.

    MNIST_DATA=../shared/data/mnist python bench/ray_throughput.py [--repeats 1]

Needs the ray extra (pip install '.[ray]'). Ray starts a local instance (2 CPUs here) in each run, so
its figures include Ray's start-up; peak RSS is the whole process tree (driver, raylet, GCS, workers).
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import OUT  # noqa: E402
from bench.infer_throughput import FOLDERS, ensure, timed  # noqa: E402


def main() -> None:
    parser = common.parser(__doc__, repeats=1)
    args = parser.parse_args()
    exe = common.mnist_infer_exe()
    csv_out = str(OUT / "rows.csv")
    rows = []
    for key in ("mnist", "realistic"):  # bench/infer_throughput.py's folders: 10,000 and 200,000 PNGs
        folder = FOLDERS[key]
        ensure(folder, args.data_dir)
        for engine in ("local", "ray"):
            runs = [timed([exe, str(folder.path), "-m", args.model, "-o", csv_out, "-q", "--force",
                           "--engine", engine]) for _ in range(args.repeats)]
            secs = statistics.median(r.seconds for r in runs)
            rows.append((folder.name, engine, secs, folder.count / secs, max(r.peak_mb for r in runs)))
            print(f"{key} {engine} done", file=sys.stderr)
    print(f"\nmnist-infer engines on {os.cpu_count()} CPU cores, process start to finished CSV "
          f"(median of {args.repeats})\n")
    print(f"| {'folder':<42} | {'engine':<6} | {'seconds':>8} | {'images/s':>9} | {'peak RSS (tree)':>15} |")
    print(f"|{'-' * 44}|{'-' * 8}|{'-' * 10}|{'-' * 11}|{'-' * 17}|")
    for folder, engine, secs, rate, rss in rows:
        print(f"| {folder:<42} | {engine:<6} | {secs:>8.2f} | {rate:>9,.0f} | {rss:>12.0f} MB |")


if __name__ == "__main__":
    main()
