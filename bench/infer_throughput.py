"""Inference throughput: mnist-infer against the naive pipeline, process start to finished CSV; two tables.

    MNIST_DATA=../shared/data/mnist python bench/infer_throughput.py [--repeats 3] [--model M.onnx]
    python bench/infer_throughput.py --folders mnist,scans --repeats 5 --stage-files 1000

Folders (generated once, cached under bench/out/, seeded):
  realistic  200,000 tiny PNGs as users' folders hold them: the 10,000 MNIST test digits twenty times,
             each shifted by up to 2 px in each direction and half of them inverted (black on white),
             1,000 files a folder (bench/realistic.py `shifted_inverted`). Half are not in MNIST's
             layout, so the preprocessing has real work on them.
  mnist      the 10,000 MNIST test digits as PNG, in folders named by label: they pass through.
  scans      5,000 256x256 greyscale JPEGs made like a flatbed scan of a handwritten digit: an MNIST
             test digit enlarged to 35-70% of the page at a random place, ink 0-60 on paper 200-250,
             Gaussian sensor noise (sigma 4 grey levels), JPEG quality 75-95 (`scan_like`).

Table 1, per folder, each pipeline run `--repeats` times, alternately, medians (peak RSS: the largest
of the runs, whole process tree, sampled every 20 ms):
  naive        bench/naive_infer.py: Pillow open, convert to L, resize to 28x28, one session.run per image
  mnist-infer  the command, default options (one decode process per core), CSV to a file
`accuracy` is the share of rows whose prediction is the file's label (from its folder or its name);
`main CPU` is the share of the run's CPU seconds spent in mnist-infer's main process (listing,
model, rows), the rest in its decode workers.

Table 2, per-stage cost in microseconds per image, one process, on `--stage-files` files of each folder:
  list     listing the folder (infer.files.list_images)                        main process
  decode   reading the file and decoding it to grey (infer.preprocess.read_grey)  workers
  prep     the rest of a worker's task: preprocessing (and deskew, when the model asks), by
           infer.pipeline.decode_chunk on chunks of 256 paths, minus `decode`        workers
  ipc      pickling a chunk's task and its result, and unpickling them           both
  model    Classifier.predict on chunks of 256                                   main process
  rows     infer.pipeline.score (less the model) and the CSV writer              main process
and what the main process's share caps the rate at: 1 / (list + ipc + model + rows) images/s.
Also: `mnist-infer --help`, median of 7 runs (it must not load the heavy libraries).
"""
from __future__ import annotations

import compileall
import csv
import io
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import OUT, ROOT  # noqa: E402

CHUNK = 256


@dataclass(frozen=True)
class Folder:
    key: str
    name: str  # as the table says it
    count: int
    path: Path
    build: Callable[[Path, object], None]  # (folder, MNIST data) -> writes it


def _build_realistic(folder: Path, data) -> None:
    from bench.realistic import write_shifted_inverted_pngs

    write_shifted_inverted_pngs(folder, data.test_images.numpy(), data.test_labels.numpy(), 200_000, 1000, seed=0)


def _build_mnist(folder: Path, data) -> None:
    from bench.realistic import write_mnist_pngs

    write_mnist_pngs(folder, data.test_images.numpy(), data.test_labels.numpy())


def _build_scans(folder: Path, data) -> None:
    import numpy as np

    from bench.realistic import jpeg, scan_like

    rng = np.random.default_rng(0)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    for i in range(5000):
        sub = folder / str(int(labels[i]))
        sub.mkdir(parents=True, exist_ok=True)
        page = scan_like(images[i], rng, 256, noise=4.0)
        (sub / f"{i:05d}.jpg").write_bytes(jpeg(page, int(rng.integers(75, 96))))


FOLDERS = {f.key: f for f in (
    Folder("realistic", "200,000 PNG 28x28, shifted, half inverted", 200_000, OUT / "realistic_200k", _build_realistic),
    Folder("mnist", "10,000 MNIST test PNG 28x28", 10_000, OUT / "mnist_png", _build_mnist),
    Folder("scans", "5,000 JPEG 256x256 scans", 5_000, OUT / "scans_jpg_5k", _build_scans),
)}


def ensure(folder: Folder, data_dir: str) -> None:
    """Build the folder unless a complete copy is cached (a marker beside it, written last)."""
    marker = folder.path.with_name(folder.path.name + ".complete")
    if marker.exists():
        return
    from trainer.data import load_mnist

    print(f"building {folder.path.relative_to(ROOT)} ({folder.count:,} files, once)", file=sys.stderr)
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.path.mkdir(parents=True)
    folder.build(folder.path, load_mnist(data_dir, download=False))
    marker.write_text(f"{folder.count}\n")


# --- one timed run of a whole pipeline ---------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds so far, RSS bytes), from Linux /proc."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, int(fields[21]) * page)
    return table


@dataclass
class Run:
    seconds: float
    peak_mb: float
    cpu_main: float  # CPU seconds of the process itself (sampled: up to 20 ms short)
    cpu_total: float  # CPU seconds of the process and every descendant it waited for (exact, wait4)


def timed(cmd: list[str]) -> Run:
    """Wall seconds, peak RSS of the whole process tree, CPU seconds of the main process and in all.
    Exit code 1 is a finished run with error rows (mnist-infer's `no digit found`): counted, not a failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, cpu_main = 0.0, 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for p, (parent, _, _) in table.items():
            children.setdefault(parent, []).append(p)
        rss, todo = 0, [proc.pid]
        while todo:
            p = todo.pop()
            rss += table.get(p, (0, 0.0, 0))[2]
            todo += children.get(p, [])
        peak = max(peak, rss / 2**20)
        cpu_main = max(cpu_main, table.get(proc.pid, (0, 0.0, 0))[1])
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-800:]}")
    return Run(seconds, peak, cpu_main, usage.ru_utime + usage.ru_stime)


def accuracy(rows_csv: Path) -> tuple[float, int]:
    """(Share of rows whose prediction is the label in the file's name (`...-7.png`) or its folder (`7/`),
    error rows counted wrong; the number of error rows)."""
    right = total = errors = 0
    with open(rows_csv, newline="") as f:
        for row in csv.DictReader(f):
            stem, parent = Path(row["path"]).stem, Path(row["path"]).parent.name
            label = stem.rsplit("-", 1)[1] if "-" in stem else parent
            right += row["prediction"] == label
            errors += bool(row.get("error"))
            total += 1
    return right / max(total, 1), errors


# --- per-stage costs, in one process -----------------------------------------------------------------


class _TimedClassifier:
    """A Classifier whose predict calls are timed (score() calls it)."""

    def __init__(self, clf):
        self.clf, self.seconds = clf, 0.0
        self.labels, self.deskew = clf.labels, clf.deskew

    def predict(self, pixels):
        t = time.perf_counter()
        out = self.clf.predict(pixels)
        self.seconds += time.perf_counter() - t
        return out


def stage_costs(folder: Folder, model: str, files: int) -> dict[str, float]:
    """Microseconds per image of each stage, on `files` files spread over the folder (best of 3 passes)."""
    import cv2

    from infer.contract import LABELS
    from infer.engine import Classifier
    from infer.evaluate import folder_labeller
    from infer.files import list_images
    from infer.output import RowWriter
    from infer.pipeline import ClassifyOptions, DecodeTask, decode_chunk, score
    from infer.preprocess import read_grey

    cv2.setNumThreads(1)  # as in the decode workers
    t = time.perf_counter()
    every = list(list_images([folder.path]))
    list_us = 1e6 * (time.perf_counter() - t) / len(every)
    paths = every[:: max(1, len(every) // files)][:files]
    clf = _TimedClassifier(Classifier(model, provider="cpu", threads=1))
    options = ClassifyOptions()
    label_of = folder_labeller(LABELS)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    best: dict[str, float] = {}
    for _ in range(3):
        got = {}
        t = time.perf_counter()
        for p in paths:
            read_grey(p)
        got["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        decoded = [decode_chunk(DecodeTask(c, "mnist", False, clf.deskew)) for c in chunks]
        got["prep"] = time.perf_counter() - t - got["decode"]
        t = time.perf_counter()
        for c, d in zip(chunks, decoded):
            pickle.loads(pickle.dumps(DecodeTask(c, "mnist", False, clf.deskew), protocol=pickle.HIGHEST_PROTOCOL))
            pickle.loads(pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL))
        got["ipc"] = time.perf_counter() - t
        clf.seconds = 0.0
        writer = RowWriter(io.BytesIO(), "csv", 1)
        t = time.perf_counter()
        for c, d in zip(chunks, decoded):
            writer.write(score(c, d, clf, options, label_of))
        got["rows"] = time.perf_counter() - t - clf.seconds
        got["model"] = clf.seconds
        for k, v in got.items():
            best[k] = min(best.get(k, v), v)
    out = {"list": list_us}
    out.update({k: 1e6 * v / len(paths) for k, v in best.items()})
    return out


# --- the tables --------------------------------------------------------------------------------------


def main() -> None:
    parser = common.parser(__doc__, repeats=3)
    parser.add_argument("--folders", default=",".join(FOLDERS), help=f"comma-separated, of {', '.join(FOLDERS)}")
    parser.add_argument("--stage-files", type=int, default=2000, help="files per folder for the per-stage table")
    args = parser.parse_args()
    folders = [FOLDERS[k] for k in args.folders.split(",")]
    for folder in folders:
        ensure(folder, args.data_dir)
    # Byte-compile the package as an installation does (pip compiles on install), so that no run
    # pays for compiling it: with PYTHONDONTWRITEBYTECODE or a fresh checkout each run would.
    compileall.compile_dir(str(ROOT / "infer"), quiet=1)
    exe = common.mnist_infer_exe()
    naive = [sys.executable, str(ROOT / "bench" / "naive_infer.py"), args.model]

    runs: dict[tuple[str, str], list[Run]] = {}
    acc: dict[tuple[str, str], tuple[float, int]] = {}
    for folder in folders:
        for r in range(args.repeats):
            for pipeline in ("naive", "mnist-infer"):
                out = OUT / f"rows-{folder.key}-{pipeline}.csv"
                cmd = (naive + [str(folder.path), str(out)] if pipeline == "naive"
                       else [exe, str(folder.path), "-m", args.model, "-o", str(out), "-q", "--force"])
                runs.setdefault((folder.key, pipeline), []).append(timed(cmd))
            print(f"{folder.key}: repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        for pipeline in ("naive", "mnist-infer"):
            acc[folder.key, pipeline] = accuracy(OUT / f"rows-{folder.key}-{pipeline}.csv")
    stages = {folder.key: stage_costs(folder, args.model, args.stage_files) for folder in folders}
    helps = [timed([exe, "--help"]).seconds for _ in range(7)]

    print(f"\nmnist-infer against the naive pipeline on {os.cpu_count()} CPU cores: process start to finished CSV, "
          f"medians of {args.repeats} runs\n")
    print("| folder | pipeline | seconds | images/s | vs naive | peak RSS | main CPU | accuracy | error rows |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        base = statistics.median(r.seconds for r in runs[folder.key, "naive"])
        for pipeline in ("naive", "mnist-infer"):
            rs = runs[folder.key, pipeline]
            secs = statistics.median(r.seconds for r in rs)
            share = statistics.median(r.cpu_main / max(r.cpu_total, 1e-9) for r in rs)
            ratio = f"**{base / secs:.2f}x**" if pipeline != "naive" else "1.00x"
            right, errors = acc[folder.key, pipeline]
            print(f"| {folder.name} | {pipeline} | {secs:.2f} | {folder.count / secs:,.0f} | {ratio} "
                  f"| {max(r.peak_mb for r in rs):.0f} MB | {100 * share:.0f}% | {100 * right:.2f}% | {errors} |")

    print(f"\nmnist-infer --help: median {statistics.median(helps):.3f} s of 7 runs")
    print("\nmnist-infer's main process in those runs (CPU seconds per image, start-up included), and the rate "
          "at which it alone would keep up:\n")
    for folder in folders:
        rs = runs[folder.key, "mnist-infer"]
        main_us = 1e6 * statistics.median(r.cpu_main for r in rs) / folder.count
        workers_us = 1e6 * statistics.median(r.cpu_total - r.cpu_main for r in rs) / folder.count
        print(f"- {folder.name}: main {main_us:.1f} us/image, workers {workers_us:.1f} us/image; the main process "
              f"caps the rate at {1e6 / main_us:,.0f} images/s")

    names = ["list", "decode", "prep", "ipc", "model", "rows"]
    print(f"\nPer-stage cost, microseconds per image, one process ({args.stage_files} files a folder, best of 3)\n")
    print("| folder | " + " | ".join(names) + " | workers (decode+prep) | main (list+ipc+model+rows) | main caps at |")
    print("|---|" + "---|" * (len(names) + 3))
    for folder in folders:
        s = stages[folder.key]
        main_us = s["list"] + s["ipc"] + s["model"] + s["rows"]
        cells = " | ".join(f"{s[n]:.1f}" for n in names)
        print(f"| {folder.name} | {cells} | {s['decode'] + s['prep']:.1f} | {main_us:.1f} "
              f"| {1e6 / main_us:,.0f} images/s |")


if __name__ == "__main__":
    main()
