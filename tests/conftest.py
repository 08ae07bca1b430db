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


@pytest.fixture(scope="session")
def wrapped_foreign(tmp_path_factory, exported) -> Path:
    """The fixture network re-wrapped as another tool would ship it: input 'image' [N,784] of [0,255]
    values with black ink on white paper (x = 255 - 255 * pixels), output 'scores' (logits), no
    mnist-toolkit metadata. Read with input_scale=255, ink='black' it is exactly our export."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from infer import contract as C

    graph = onnx.load(str(exported)).graph
    consts = [numpy_helper.from_array(np.array(255, np.float32), "c255"),
              numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "nchw_shape")]
    prelude = [helper.make_node("Sub", ["c255", "image"], ["inked"]),
               helper.make_node("Div", ["inked", "c255"], ["unit"]),
               helper.make_node("Reshape", ["unit", "nchw_shape"], [C.INPUT_NAME])]
    nodes = prelude + list(graph.node)
    nodes[-2].output[0] = "scores"  # the last Gemm wrote 'logits'; the Softmax node reads it
    nodes[-1].input[0] = "scores"
    new = helper.make_graph(nodes[:-1], "wrapped", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 784])],
                            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
                            list(graph.initializer) + consts)
    model = helper.make_model(new, opset_imports=[helper.make_opsetid("", 18)], producer_name="elsewhere")
    model.ir_version = 8  # what ONNX Runtime 1.18+ reads
    onnx.checker.check_model(model, full_check=True)
    out = tmp_path_factory.mktemp("foreign") / "wrapped.onnx"
    onnx.save(model, str(out))
    return out
