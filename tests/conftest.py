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
        # The default recipe without its slowest steps (the augmentation pool, deskewing): the PCA
        # whitening and its fold still run. Deskewed models are tested in test_train.py and by the
        # shipped model's tests.
        ["--data-dir", str(mnist_dir), "--no-download", "--epochs", str(FIXTURE_EPOCHS), "--copies", "0",
         "--no-deskew", "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained, mnist_dir) -> Path:
    """The fixture checkpoint exported and verified by the real `mnist-export`."""
    from exporter.cli import main

    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    result = CliRunner().invoke(main, [str(trained), "-o", str(out), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def mnist_pngs(tmp_path_factory, mnist) -> Path:
    """The 10,000 MNIST test digits as PNG files in label folders."""
    from bench.realistic import write_mnist_pngs

    out = tmp_path_factory.mktemp("mnist_png")
    write_mnist_pngs(out, mnist.test_images.numpy(), mnist.test_labels.numpy())
    return out
