"""mnist-infer --engine ray: the same rows as the local engine, through Ray Data on a local Ray instance."""
from __future__ import annotations

import csv
import io
import os
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


def _exe() -> str:
    return shutil.which("mnist-infer", path=str(Path(sys.executable).parent))


# These start (or look for) Ray instances of their own: they run before the module's shared one starts.


def test_ray_cluster_addresses_that_cannot_be_joined_are_one_line(exported, tmp_path):
    pytest.importorskip("ray")
    import socket
    import time

    base = [_exe(), str(ROOT / "samples" / "1"), "-m", str(exported), "--engine", "ray"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    refused = subprocess.run([*base, "--ray-address", "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                             env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1] == "Error: cannot reach a Ray cluster at 127.0.0.1:1: Connection refused"
    auto = subprocess.run([*base, "--ray-address", "auto"], capture_output=True, text=True, timeout=60, env=env)
    assert auto.returncode == 1 and "Traceback" not in auto.stderr
    assert auto.stderr.splitlines()[-1].startswith("Error: --ray-address auto: no Ray cluster is running")
    with socket.socket() as silent:  # something listens there, but it is not Ray and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        hung = subprocess.run([*base, "--ray-address", address, "--ray-timeout", "4"], capture_output=True,
                              text=True, timeout=120, env=env)
    assert hung.returncode == 1 and time.monotonic() - t0 < 60
    assert hung.stderr.splitlines()[-1] == f"Error: a Ray cluster at {address} did not answer within 4 s (--ray-timeout)"
    assert "rpc_client" not in hung.stderr and "gcs_client" not in hung.stderr  # Ray's retry lines: silenced


def test_ray_run_is_quiet_and_names_the_actors_provider(exported, tmp_path):
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp_path / "rows.csv"
    proc = subprocess.run([_exe(), str(ROOT / "samples"), "-m", str(exported), "--engine", "ray", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "core_worker.cc" not in proc.stderr and "] " not in proc.stderr.split("\n")[0]
    assert "45 images: 45 classified, 0 failed" in proc.stderr and "on ray (cpu actors)" in proc.stderr
    assert len(rows(out.read_text())) == 45


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


def test_ray_gives_the_local_rows_for_warnings_numbers_and_errors(ray_local, exported, request):
    """Several digits (--multi-digit), preprocessing warnings and error rows, from a stand-in for the
    preprocessing steps not written yet, through both engines."""
    from ray import cloudpickle

    from infer.engine import Classifier
    from infer.pipeline import ClassifyOptions, classify_batches
    from infer.ray_engine import classify_batches_ray

    folder = ROOT / "samples"
    clf = Classifier(exported, provider="cpu")
    # Ray's workers cannot import this test module: the stand-in travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    request.addfinalizer(lambda: cloudpickle.unregister_pickle_by_value(sys.modules[__name__]))
    for multi in (True, False):
        options = ClassifyOptions(multi_digit=multi, top_k=2, workers=0, batch_size=16, prepare=_pairs_prepare,
                                  min_confidence=0.9, keep_pixels=True)
        local = [p for b in classify_batches([folder], clf, options) for p in b.predictions(multi)]
        seen: set = set()
        remote = [p for b in classify_batches_ray([folder], str(exported), options, labels=list(clf.labels),
                                                  on_providers=seen.update)
                  for p in b.predictions(multi)]
        assert seen == {"cpu"} and len(local) == len(remote) == 45
        for a, b in zip(local, remote):
            assert (a.path, a.prediction, a.warnings, a.error, a.label) == (b.path, b.prediction, b.warnings, b.error,
                                                                             b.label)
            assert a.digits == b.digits and a.top_k == b.top_k and np.array_equal(a.pixels, b.pixels)
        numbers = [p for p in local if p.prediction and len(p.prediction) > 1]
        assert (len(numbers) > 5) == multi and any(p.error for p in local)
        assert any("low-confidence" in p.warnings for p in local)


def _pairs_prepare(path, mode="mnist", *, multi_digit=False):
    """The samples, read as they are, with every third image doubled into a two-digit number."""
    from infer.preprocess import ImageError, Prepared, prepare_file

    name = os.path.basename(path)
    if name.startswith("photo-0004"):
        raise ImageError("no digit found: stand-in")
    prepared = prepare_file(path, mode)
    if int("".join(c for c in name if c.isdigit()) or 0) % 3 == 0:
        pair = np.concatenate([prepared.digits, prepared.digits[:, :, ::-1]])
        return Prepared(pair if multi_digit else pair[:1], ("several-digits",))
    return prepared


def test_ray_passes_input_scale_and_ink_like_the_local_engine(ray_local, wrapped_foreign):
    flags = ["--input-scale", "255", "--ink", "black", "-q"]
    local = CliRunner().invoke(main, [str(ROOT / "samples"), "-m", str(wrapped_foreign), *flags])
    remote = CliRunner().invoke(main, [str(ROOT / "samples"), "-m", str(wrapped_foreign), *flags, "--engine", "ray"])
    assert local.exit_code == remote.exit_code == 0
    assert [r["prediction"] for r in rows(local.stdout)] == [r["prediction"] for r in rows(remote.stdout)]
