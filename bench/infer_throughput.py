"""Inference throughput, process start to finished CSV, one table.

    MNIST_DATA=../shared/data/mnist python bench/infer_throughput.py [--repeats 3] [--model M.onnx]

Folders (built once under bench/out/): the 10,000 MNIST test digits as PNG; 1,000 digits as 256x256
black-on-white JPEGs (enlarged, off-centre, on light paper), once clean and once with scanner noise
(noise makes JPEG's entropy decoding, which draft mode cannot skip, 3x slower); and 100,000 PNG (the
10,000 hard-linked ten times) for the memory check.
Rows: the naive pipeline (bench/naive_infer.py: Pillow open, resize to 28x28, one session.run per
image), the pure decode ceiling (Pillow open+load of every file in this process, no model), and
`mnist-infer` end to end with the full MNIST-style preprocessing. Peak RSS is the largest
of each run's whole process tree (main process plus decode workers), sampled every 20 ms.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import OUT, ROOT  # noqa: E402


def build_folders(data_dir: str) -> dict[str, Path]:
    from bench.realistic import jpeg, scan_like, write_mnist_pngs
    from trainer.data import load_mnist

    pngs, big = OUT / "mnist_png", OUT / "mnist_png_100k"
    if not (pngs / "9").exists() or sum(1 for _ in pngs.rglob("*.png")) != 10000:
        data = load_mnist(data_dir, download=False)
        shutil.rmtree(pngs, ignore_errors=True)
        write_mnist_pngs(pngs, data.test_images.numpy(), data.test_labels.numpy())
    jpgs = {"jpg": OUT / "clean_jpg", "jpgnoisy": OUT / "scans_jpg"}
    for kind, folder in jpgs.items():
        if not folder.exists() or sum(1 for _ in folder.rglob("*.jpg")) != 1000:
            import numpy as np

            data = load_mnist(data_dir, download=False)
            rng = np.random.default_rng(0)
            shutil.rmtree(folder, ignore_errors=True)
            for i in range(1000):
                sub = folder / str(int(data.test_labels[i]))
                sub.mkdir(parents=True, exist_ok=True)
                noise = 4.0 if kind == "jpgnoisy" else 0.0
                (sub / f"{i:05d}.jpg").write_bytes(jpeg(scan_like(data.test_images[i].numpy(), rng, 256, noise), 90))
    if not big.exists():
        for copy in range(10):
            for src in pngs.rglob("*.png"):
                dst = big / f"copy{copy}" / src.parent.name / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
    return {"png": pngs, **jpgs, "png100k": big}


def _tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 2**20


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of a command's whole process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-500:]}")
    return seconds, int(peak)


def decode_ceiling(folder: Path) -> float:
    from PIL import Image

    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return time.perf_counter() - t0


def main() -> None:
    parser = common.parser(__doc__, repeats=3)
    args = parser.parse_args()
    folders = build_folders(args.data_dir)
    exe = common.mnist_infer_exe()
    csv_out = str(OUT / "rows.csv")
    counts = {"png": 10000, "jpg": 1000, "jpgnoisy": 1000, "png100k": 100000}

    runs: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for r in range(args.repeats):
        for kind in ("png", "jpg", "jpgnoisy"):
            folder = str(folders[kind])
            runs.setdefault((kind, "naive pipeline (1 process, session.run per image)"), []).append(
                timed([sys.executable, str(ROOT / "bench" / "naive_infer.py"), args.model, folder, csv_out]))
            runs.setdefault((kind, "decode ceiling (Pillow open+load, 1 process, no model)"), []).append(
                (decode_ceiling(folders[kind]), 0))
            runs.setdefault((kind, "mnist-infer (end to end, MNIST preprocessing)"), []).append(
                timed([exe, folder, "-m", args.model, "-o", csv_out, "-q", "--force"]))
        if r == 0:
            runs.setdefault(("png100k", "naive pipeline (1 process, session.run per image)"), []).append(
                timed([sys.executable, str(ROOT / "bench" / "naive_infer.py"), args.model, str(folders["png100k"]),
                       csv_out]))
            runs.setdefault(("png100k", "mnist-infer (end to end, MNIST preprocessing)"), []).append(
                timed([exe, str(folders["png100k"]), "-m", args.model, "-o", csv_out, "-q", "--force"]))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    helps = [timed([exe, "--help"])[0] for _ in range(7)]

    print(f"\nmnist-infer throughput on {os.cpu_count()} CPU cores; medians of {args.repeats} runs "
          f"(100k: one run), process start to finished CSV\n")
    print(f"| {'folder':<25} | {'pipeline':<56} | {'seconds':>8} | {'images/s':>9} | {'vs naive':>8} | {'peak RSS':>8} |")
    print(f"|{'-' * 27}|{'-' * 58}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    names = {"png": "10,000 MNIST PNG 28x28", "jpg": "1,000 JPEG 256x256, clean", "jpgnoisy": "1,000 JPEG 256x256, noisy",
             "png100k": "100,000 MNIST PNG"}
    naive = {}
    for (kind, pipeline), values in runs.items():
        secs = statistics.median(v[0] for v in values)
        rss = max(v[1] for v in values)
        if pipeline.startswith("naive"):
            naive[kind] = secs
        ratio = f"{naive[kind] / secs:.2f}x" if kind in naive else "-"
        print(f"| {names[kind]:<25} | {pipeline:<56} | {secs:>8.2f} | {counts[kind] / secs:>9,.0f} | {ratio:>8} | "
              f"{(str(rss) + ' MB') if rss else '-':>8} |")
    print(f"\nmnist-infer --help: median {statistics.median(helps):.3f} s of 7 runs")


if __name__ == "__main__":
    main()
