"""Session fixtures built through the real tools: real MNIST, a briefly trained checkpoint, its ONNX export."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_EPOCHS = 15  # ~2.5 s on 2 cores; ~94% test accuracy, enough to tell right from wrong


def mnist_root() -> Path:
    root = Path(os.environ.get("MNIST_DATA") or ROOT.parent / "shared" / "data" / "mnist")
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.exit(f"MNIST not found under {root}: set MNIST_DATA to a folder holding MNIST/raw/", returncode=3)
    return root.resolve()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return mnist_root()


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from trainer.data import load_mnist

    return load_mnist(mnist_dir, download=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """A checkpoint written by the real `mnist-train` (default recipe, shortened)."""
    from trainer.cli import main

    out = tmp_path_factory.mktemp("trained") / "model.pt"
    result = CliRunner().invoke(
        main,
        ["--data-dir", str(mnist_dir), "--no-download", "--epochs", str(FIXTURE_EPOCHS), "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out
