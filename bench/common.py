"""What the benchmarks share: where things are, and their common options."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def parser(doc: str, repeats: int | None = None) -> argparse.ArgumentParser:
    """--data-dir (default $MNIST_DATA, else ../shared/data/mnist), --model (the shipped one), --repeats."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MNIST_DATA", str(ROOT.parent / "shared" / "data" / "mnist")))
    p.add_argument("--model", default=str(ROOT / "infer" / "models" / "default.onnx"))
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats)
    return p


def mnist_infer_exe() -> str:
    return shutil.which("mnist-infer", path=os.path.dirname(sys.executable)) or "mnist-infer"
