"""mnist-infer --engine ray: the same rows as the local engine, through Ray Data on a local Ray instance."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from infer.cli import main

ROOT = Path(__file__).resolve().parent.parent
# Ray's own deprecation notices about its internals are not this project's warnings.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
              pytest.mark.filterwarnings("ignore::FutureWarning:ray"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, mnist) -> Path:
    """600 real digits (MNIST PNGs and scan-like JPEGs) in label folders, with broken files mixed in."""
    from bench.realistic import jpeg, scan_like

    root = tmp_path_factory.mktemp("mixed")
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    rng = np.random.default_rng(5)
    for i in range(600):
        folder = root / str(int(labels[i]))
        folder.mkdir(exist_ok=True)
        if i % 3:
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
        else:
            (folder / f"{i:04d}.jpg").write_bytes(jpeg(scan_like(images[i], rng, 96), 85))
    (root / "3" / "zero.png").write_bytes(b"")
    (root / "5" / "text.jpg").write_text("not a jpeg")
    data = sorted(root.rglob("*.png"))[0].read_bytes()
    (root / "7" / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("skipped")
    return root


def test_ray_and_local_engines_give_identical_rows(ray_local, mixed_folder, exported):
    runner = CliRunner()
    local = runner.invoke(main, [str(mixed_folder), "-m", str(exported), "--top-k", "3", "-q"])
    remote = runner.invoke(main, [str(mixed_folder), "-m", str(exported), "--top-k", "3", "-q", "--engine", "ray",
                                  "--batch-size", "64"])
    assert local.exit_code == 1 and remote.exit_code == 1, remote.output  # three bad files in both
    a, b = rows(local.stdout), rows(remote.stdout)
    assert len(a) == len(b) == 603
    assert [r["path"] for r in a] == [r["path"] for r in b]  # the local engine's order
    for x, y in zip(a, b):
        assert (x["prediction"], x["label"], x["error"]) == (y["prediction"], y["label"], y["error"]), x["path"]
        if x["confidence"]:
            assert abs(float(x["confidence"]) - float(y["confidence"])) <= 1e-6
            top_x = [tuple(t.split(":")) for t in x["top_k"].split()]
            top_y = [tuple(t.split(":")) for t in y["top_k"].split()]
            assert [d for d, _ in top_x] == [d for d, _ in top_y]
    errors = [r for r in b if r["error"]]
    assert {Path(r["path"]).name for r in errors} == {"zero.png", "text.jpg", "cut.png"}


def test_ray_labelled_evaluation_and_jsonl(ray_local, tmp_path, exported):
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, [str(ROOT / "samples"), "-m", str(exported), "--engine", "ray",
                                       "--format", "jsonl", "-o", str(out), "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 45
    assert "accuracy" in result.stderr and "on ray (cpu actors)" in result.stderr
    assert (tmp_path / "report" / "misclassified.png").exists()


def test_ray_cuda_without_gpu_is_one_line(ray_local, exported, tmp_path):
    result = CliRunner().invoke(main, [str(ROOT / "samples"), "-m", str(exported), "--engine", "ray",
                                       "--provider", "cuda", "-o", str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "has no GPU" in result.stderr
    assert not (tmp_path / "x.csv").exists()


BLOCK_RAY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray here")
sys.meta_path.insert(0, Block())
from infer.cli import main
main(sys.argv[1:])
"""


def test_engine_ray_without_ray_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-c", BLOCK_RAY, str(ROOT / "samples"), "--engine", "ray"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install" in proc.stderr and "Traceback" not in proc.stderr
    result = CliRunner().invoke(main, [str(ROOT / "samples"), "--ray-address", "auto"])
    assert result.exit_code == 2 and "--engine ray" in result.stderr


def test_ray_is_optional_for_the_package():
    assert shutil.which("mnist-infer", path=str(Path(sys.executable).parent))
    import infer.ray_engine as engine  # importable without touching ray

    assert "ray" not in engine.__dict__
