"""Every benchmark in bench/ runs as its docstring says: it imports what it needs and teaches with --help.

The benchmarks themselves take minutes (README: Benchmarks); a benchmark that no longer imports (a
helper renamed in another module) is found here in seconds instead of when someone next measures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py")
                 if p.read_text().find('if __name__ == "__main__":') >= 0 and "argparse" in p.read_text()
                 or "common.parser" in p.read_text())


def test_the_benchmarks_are_found():
    assert {"train_speed.py", "infer_throughput.py", "real_world.py", "ray_throughput.py"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_each_benchmark_imports_and_shows_its_help(name):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "MNIST_DATA" in proc.stdout
