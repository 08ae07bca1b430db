"""mnist-train: data, recipes, the hand-written maths, determinism, outputs, bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from infer.output import escape_path
from infer.preprocess import deskew
from trainer.augment import THICKER, THINNER, affine_matrices, augment, build_pool, stroke_changes
from trainer.checkpoint import file_sha256, load_checkpoint
from trainer.cli import main
from trainer.data import MNIST_FILES, DataError, cache_dir, default_data_dir, load_mnist, split_validation
from trainer.model import ModelConfig, build_model
from trainer.recipes import RECIPES, Recipe
from trainer.train import FlatMLP, FlatOptimizer, TrainConfig, prepare_pixels, schedule_at, train
from trainer.whiten import fit_whitening, fold_whitening

ROOT = Path(__file__).resolve().parent.parent


def run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _slant(image: np.ndarray) -> float:
    """cov(row, col) / var(row) of an image: 0 for an upright digit."""
    img = image.astype(np.float64)
    mass, axis = img.sum(), np.arange(28.0)
    cy, cx = img.sum(1) @ axis / mass, img.sum(0) @ axis / mass
    return float((np.outer(axis - cy, axis - cx) * img).sum() / ((axis - cy) ** 2 * img.sum(1)).sum())


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    img = image.astype(np.float64)
    axis = np.arange(28.0)
    return img.sum(1) @ axis / img.sum(), img.sum(0) @ axis / img.sum()


# --- 1. data ---------------------------------------------------------------------------------------


def test_mnist_is_read_and_checked(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert abs(mnist.train_images.float().mean().item() / 255 - 0.1307) < 1e-4
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(mnist.fingerprint) == 64


def test_data_dir_from_environment(monkeypatch, mnist_dir):
    monkeypatch.setenv("MNIST_DATA", str(mnist_dir))
    assert default_data_dir() == mnist_dir
    monkeypatch.delenv("MNIST_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent-cache")
    assert default_data_dir() == cache_dir() == Path("/nonexistent-cache/mnist-toolkit")


def _copy_raw(mnist_dir: Path, dest: Path) -> Path:
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        os.symlink(mnist_dir / "MNIST" / "raw" / name, raw / name)
    return raw


def test_missing_files_offline_name_the_four_files(tmp_path):
    result = run(["--data-dir", tmp_path, "--no-download", "--out", tmp_path / "m.pt"])
    assert result.exit_code == 2
    msg = result.stderr
    assert "Traceback" not in result.output
    for name in MNIST_FILES:
        assert name in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "Invalid value for '--data-dir'" in msg
    assert "could not be downloaded" not in msg  # nothing was tried
    assert list(tmp_path.iterdir()) == []  # no model, no folders


@pytest.mark.parametrize("typo", ["nonexistent/deeper", "."])
def test_a_data_dir_typo_creates_nothing(tmp_path, monkeypatch, typo):
    """A folder the user names is only read: a typo neither downloads nor makes MNIST/raw anywhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    result = run(["--data-dir", tmp_path / typo, "--out", tmp_path / "out" / "m.pt"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("MNIST not found" in result.stderr or "no such folder" in result.stderr) and "user cache" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and list((tmp_path / "out").iterdir()) == []


def named_data_folder(kind: str, tmp_path: Path, mnist_dir: Path) -> Path:
    """A folder a user could name for MNIST that does not hold it, one of each kind."""
    folder = tmp_path / "data"
    if kind == "missing":
        return tmp_path / "no-such" / "folder"
    folder.mkdir()
    if kind == "empty":
        return folder
    raw = _copy_raw(mnist_dir, folder)
    if kind == "one-file-missing":
        (raw / "t10k-labels-idx1-ubyte").unlink()
    elif kind == "truncated":
        (raw / "train-labels-idx1-ubyte").unlink()
        (raw / "train-labels-idx1-ubyte").write_bytes((mnist_dir / "MNIST/raw/train-labels-idx1-ubyte").read_bytes()[:999])
    elif kind == "raw-of-another-dataset":  # right names, wrong counts (e.g. EMNIST or a subset)
        for name in MNIST_FILES:
            (raw / name).unlink()
            (raw / name).write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5))
    return folder


NAMED_KINDS = {"missing": "no such folder", "empty": "MNIST not found", "one-file-missing": "t10k-labels-idx1-ubyte missing",
               "truncated": "truncated", "raw-of-another-dataset": "expected 0x00000803"}


@pytest.mark.parametrize("how", ["--data-dir", "$MNIST_DATA"])
@pytest.mark.parametrize("kind", NAMED_KINDS)
def test_a_named_folder_without_mnist_is_a_usage_error_before_any_work(tmp_path, mnist_dir, monkeypatch, kind, how):
    folder = named_data_folder(kind, tmp_path, mnist_dir)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if how == "$MNIST_DATA":
        monkeypatch.setenv("MNIST_DATA", str(folder))
        args = []
    else:
        args = ["--data-dir", folder]
    result = run([*args, "--epochs", 1, "--out", tmp_path / "runs" / "m.pt"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and NAMED_KINDS[kind] in errors[0] and "user cache" in errors[0], result.stderr
    prefix = "Error: Invalid value for '--data-dir': " if how == "--data-dir" else "Error: $MNIST_DATA: "
    assert errors[0].startswith(prefix)
    assert "training" not in result.stderr and "Traceback" not in result.output and result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before  # no runs/ folder, no cache, nothing downloaded


def test_no_download_with_an_empty_cache_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = run(["--no-download", "--out", tmp_path / "m.pt"])
    assert result.exit_code == 1
    assert "--no-download forbids fetching it" in result.stderr and "could not be downloaded" not in result.stderr
    assert not (tmp_path / "cache").exists()


def test_a_failed_download_says_why_and_leaves_no_cache_folder(tmp_path, mnist_dir):
    """Offline (every connection refused by a proxy that is not there): one line in words, exit 1,
    and no empty cache folder left behind. A real subprocess, so the proxy settings are its own."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("mnist_data", "no_proxy")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "trainer", "--out", str(tmp_path / "m.pt")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: MNIST is not in") and "could not be downloaded: the connection was refused" in last
    assert "RuntimeError" not in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "cache").exists() and not (tmp_path / "m.pt").exists()


def test_truncated_file_is_a_clear_error(tmp_path, mnist_dir):
    raw = _copy_raw(mnist_dir, tmp_path)
    (raw / "t10k-images-idx3-ubyte").unlink()
    data = (mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(tmp_path, download=False)
    result = run(["--data-dir", tmp_path, "--no-download", "--out", tmp_path / "m.pt"])
    assert result.exit_code == 2 and "truncated" in result.stderr and "Traceback" not in result.output


def test_wrong_magic_and_wrong_count(tmp_path, mnist_dir):
    raw = _copy_raw(mnist_dir, tmp_path)
    labels = (mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + labels[4:])
    with pytest.raises(DataError, match="magic 0x00000803, expected 0x00000801"):
        load_mnist(tmp_path, download=False)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels[:4] + (9999).to_bytes(4, "big") + labels[8:])
    with pytest.raises(DataError, match="holds 9999 items"):
        load_mnist(tmp_path, download=False)


def test_validation_split_is_seeded_and_disjoint():
    tr, va = split_validation(60000, 5000, seed=3)
    tr2, va2 = split_validation(60000, 5000, seed=3)
    _, va3 = split_validation(60000, 5000, seed=4)
    assert len(tr) == 55000 and len(va) == 5000
    assert torch.equal(va, va2) and not torch.equal(va, va3)
    assert len(set(tr.tolist()) | set(va.tolist())) == 60000


# --- 2. recipes ------------------------------------------------------------------------------------


def test_seed_recipe_is_the_write_ups():
    r = RECIPES["seed"]
    assert (r.optimizer, r.lr, r.batch_size, r.epochs, r.normalise, r.schedule) == ("sgd", 0.01, 32, 20, False, "constant")
    assert (r.weight_decay, r.momentum, r.shift, r.deskew, r.copies, r.pca) == (0.0, 0.0, 0, False, 0, 0)
    assert ModelConfig().sizes == (784, 16, 16, 10) and ModelConfig().activation == "sigmoid"


def test_default_recipe_is_the_issues():
    """Issue 8: deskew; clean + 4 copies (+-10 deg, scale 0.9-1.1, x-shear +-0.15, +-1 px, stroke
    changes); 100 PCA components whitened with eps 0.01; AdamW 2e-2, wd 0.05, batch 256, one-cycle
    pct 0.25, div 25, final lr = peak / 2.5e5; 200 epochs (README). v1 is the first default, unchanged."""
    r = RECIPES["default"]
    assert (r.deskew, r.copies, r.rotate, r.scale, r.shear, r.translate) == (True, 4, 10.0, 0.1, 0.15, 1.0)
    assert 0 < r.stroke <= 1 and (r.pca, r.pca_eps, r.normalise, r.shift) == (100, 0.01, True, 0)
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.schedule) == ("adamw", 0.02, 0.05, 256, "onecycle")
    assert (r.pct_start, r.div_factor) == (0.25, 25.0) and r.div_factor * r.final_div_factor == 2.5e5
    assert r.epochs == 200
    v1 = RECIPES["v1"]
    assert (v1.epochs, v1.shift, v1.pct_start, v1.deskew, v1.copies, v1.pca) == (160, 1, 0.3, False, 0, 0)


@pytest.mark.parametrize("fields, words", [
    ({"copies": 2, "shift": 1}, "do not combine"), ({"scale": 1.5}, "scale"), ({"stroke": 2.0}, "stroke"),
    ({"pca": -1}, "pca"), ({"pct_start": 1.0}, "pct_start"),
])
def test_nonsense_recipes_are_refused(fields, words):
    with pytest.raises(ValueError, match=words):
        RECIPES["default"].with_overrides(**fields)


def test_seed_recipe_reproduces_the_seed(mnist):
    """The full seed recipe: loss 2.3 -> ~0.5, test accuracy near the re-run median of 88.4%."""
    res = train(TrainConfig(ModelConfig(), RECIPES["seed"], seed=0), mnist)
    assert len(res.history) == 20
    assert 2.2 < res.history[0].loss < 2.31
    assert 0.35 < res.history[-1].loss < 0.6
    assert 0.85 < res.test_accuracy < 0.91
    assert res.deskew is False and res.whitening is None


@pytest.mark.slow
def test_default_recipe_accuracy(mnist):
    """Issue 8's target: >= 97.4% test accuracy, median of 3 seeds (README: 97.37-97.49% measured).
    One thread, as mnist-train runs it (torch's default threads are ~5x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accs = sorted(train(TrainConfig(ModelConfig(), RECIPES["default"], seed=s), mnist).test_accuracy
                      for s in range(3))
    finally:
        torch.set_num_threads(threads)
    assert accs[1] >= 0.974, accs


def test_overrides_reach_the_checkpoint(tmp_path, mnist_dir):
    out = tmp_path / "m.pt"
    result = run(["--data-dir", mnist_dir, "--no-download", "--recipe", "seed", "--epochs", 1, "--hidden", "32,24",
                  "--activation", "relu", "--optimizer", "adam", "--lr", "0.001", "--batch-size", 64, "--seed", 5,
                  "--val-size", 1000, "--no-plots", "-q", "--out", out])
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(out)
    assert ck.config.sizes == (784, 32, 24, 10) and ck.config.activation == "relu"
    rec = ck.data["recipe"]
    assert (rec["optimizer"], rec["lr"], rec["batch_size"], rec["epochs"]) == ("adam", 0.001, 64, 1)
    assert rec["name"] == "seed+custom" and ck.deskew is False
    assert ck.data["training"]["seed"] == 5 and ck.data["data"]["val_size"] == 1000
    assert ck.build()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_every_step_is_a_flag_recorded_in_the_checkpoint(tmp_path, mnist_dir):
    out = tmp_path / "m.pt"
    result = run(["--data-dir", mnist_dir, "--no-download", "--epochs", 1, "--no-deskew", "--copies", 0, "--pca", 0,
                  "--stroke", 0, "--rotate", 5, "--scale", 0.05, "--shear", 0.1, "--translate", 0.5,
                  "--pct-start", 0.4, "--no-plots", "-q", "--out", out])
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(out)
    rec = ck.data["recipe"]
    assert (rec["deskew"], rec["copies"], rec["pca"], rec["stroke"]) == (False, 0, 0, 0.0)
    assert (rec["rotate"], rec["scale"], rec["shear"], rec["translate"], rec["pct_start"]) == (5.0, 0.05, 0.1, 0.5, 0.4)
    assert rec["name"] == "default+custom" and ck.deskew is False and ck.data["preprocessing"] == {"deskew": False}
    assert set(rec) == set(Recipe.field_names())


# --- 3. the hand-written maths ---------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_manual_backward_matches_autograd(activation):
    torch.manual_seed(0)
    config = ModelConfig(hidden=(16, 12), activation=activation)
    x, y = torch.rand(33, 784), torch.randint(0, 10, (33,))
    ref = build_model(config)
    model = build_model(config)
    model.load_state_dict(ref.state_dict())
    loss = torch.nn.functional.cross_entropy(ref(x), y, reduction="sum")
    (loss / len(x)).backward()

    flat = FlatMLP(model, max_batch=64)
    neg_loss = flat.step(x, torch.nn.functional.one_hot(y, 10).float())
    assert torch.allclose(-neg_loss, loss, rtol=1e-5)
    ours = [g for pair in zip(flat.gw, flat.gb) for g in pair]
    for (name, p_ref), grad in zip(ref.named_parameters(), ours):
        assert torch.allclose(grad, p_ref.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize(
    "recipe, make_opt",
    [
        (Recipe("t", "sgd", 0.1, 8, 1, weight_decay=0.01, momentum=0.9),
         lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)),
        (Recipe("t", "adam", 0.01, 8, 1, weight_decay=0.01), lambda p: torch.optim.Adam([p], lr=0.01, weight_decay=0.01)),
        (Recipe("t", "adamw", 0.02, 8, 1, weight_decay=0.05), lambda p: torch.optim.AdamW([p], lr=0.02, weight_decay=0.05)),
    ],
)
def test_flat_optimizer_matches_torch_optim(recipe, make_opt):
    torch.manual_seed(1)
    theta = torch.randn(100)
    ref = theta.clone().requires_grad_(True)
    grad = torch.zeros(100)
    ours = FlatOptimizer(recipe, theta, grad)
    theirs = make_opt(ref)
    for _ in range(5):
        g = torch.randn(100)
        grad.copy_(g)
        ref.grad = g.clone()
        ours.step(recipe.lr)
        theirs.step()
        assert torch.allclose(theta, ref.detach(), atol=1e-6)


@pytest.mark.parametrize("pct_start, div, final_div", [(0.3, 25.0, 1e4), (0.25, 25.0, 1e4), (0.4, 10.0, 100.0)])
def test_one_cycle_matches_torch_one_cycle_lr(pct_start, div, final_div):
    recipe = Recipe("t", "adamw", 0.02, 8, 1, schedule="onecycle", pct_start=pct_start, div_factor=div,
                    final_div_factor=final_div)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=1000, pct_start=pct_start,
                                                div_factor=div, final_div_factor=final_div)
    for step in range(999):
        lr, beta1 = schedule_at(recipe, step, 1000)
        group = opt.param_groups[0]
        assert lr == pytest.approx(group["lr"], rel=1e-3, abs=1e-9), step
        assert beta1 == pytest.approx(group["betas"][0], rel=1e-3), step
        opt.step()
        sched.step()


# --- 4. deskew, the augmentation pool, the whitening -----------------------------------------------


def test_affine_matrices_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    m = affine_matrices(5000, rng, rotate=10, scale=0.1, shear=0.15, translate=1)
    linear, offset = m[:, :, :2], m[:, :, 2]
    # det(s R H) = s^2: the x-shear and the rotation keep areas
    assert np.all((np.linalg.det(linear) >= 0.9**2 - 1e-9) & (np.linalg.det(linear) <= 1.1**2 + 1e-9))
    # the image centre moves by the translation only
    centre = np.array([13.5, 13.5])
    moved = linear @ centre + offset - centre
    assert np.abs(moved).max() <= 1 + 1e-9 and np.abs(moved).max() > 0.95
    # first column of s R H is s (cos, sin): the rotation angle
    angles = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert np.abs(angles).max() <= 10 + 1e-9 and np.abs(angles).max() > 9.5
    # with every range at 0 the map is the identity, and so is the augmentation
    still = affine_matrices(3, rng, rotate=0, scale=0, shear=0, translate=0)
    assert np.array_equal(still, np.tile(np.eye(2, 3), (3, 1, 1)))


def test_augment_is_the_opencv_operations(mnist):
    digits = mnist.test_images.numpy()[:300]
    rng = np.random.default_rng(1)
    identity = np.tile(np.eye(2, 3), (len(digits), 1, 1))
    assert np.array_equal(augment(digits, identity, np.zeros(len(digits), np.int8)), digits)
    strokes = stroke_changes(len(digits), rng, 0.5)
    out = augment(digits, identity, strokes)
    for d, o, s in zip(digits, out, strokes):
        if s == THICKER:
            assert np.array_equal(o, cv2.dilate(d, np.ones((2, 2), np.uint8))) and (o >= d).all()
        elif s == THINNER:
            assert np.array_equal(o, cv2.erode(d, np.ones((2, 2), np.uint8)))
        else:
            assert np.array_equal(o, d)
    # thicker strokes carry more ink, thinner less
    ink = lambda kind: (out[strokes == kind].astype(float).sum((1, 2)) / digits[strokes == kind].astype(float).sum((1, 2)))
    assert ink(THICKER).min() > 1.2 and ink(THINNER).max() < 0.85
    many = stroke_changes(20000, rng, 0.5)
    assert abs((many == THICKER).mean() - 0.25) < 0.02 and abs((many == THINNER).mean() - 0.25) < 0.02
    rotated = augment(digits, affine_matrices(len(digits), rng, rotate=10, scale=0, shear=0, translate=0), strokes * 0)
    assert not np.array_equal(rotated, digits)


def test_pool_is_deskewed_augmented_and_seeded(mnist):
    images = mnist.train_images.numpy()[:1000]
    recipe = RECIPES["default"].with_overrides(copies=2)
    pool = build_pool(images, recipe, seed=3)
    assert pool.shape == (3, 1000, 28, 28) and pool.dtype == np.uint8
    assert np.array_equal(pool[0], deskew(images))  # the clean copy: infer's own deskew
    assert np.array_equal(pool, build_pool(images, recipe, seed=3))
    assert not np.array_equal(pool[1:], build_pool(images, recipe, seed=4)[1:])
    assert not np.array_equal(pool[1], pool[2]) and (pool[1] != pool[0]).any(axis=(1, 2)).mean() > 0.99
    # deskewed after the augmentation: upright and centred by mass, though the raw digits slant
    before = np.median(np.abs([_slant(d) for d in images[:200]]))
    after = np.median(np.abs([_slant(d) for d in pool[1, :200]]))
    assert before > 0.1 and after < 0.02
    centres = np.array([_centre_of_mass(d) for d in pool[2, :200]])
    assert np.abs(centres - 14).max() < 0.6
    plain = build_pool(images, recipe.with_overrides(deskew=False), seed=3)
    assert np.array_equal(plain[0], images)


def test_whitening_whitens_and_folds_exactly():
    torch.manual_seed(0)
    mixing = torch.randn(784, 784) * torch.linspace(1, 0.01, 784)
    inputs = (torch.randn(20000, 784) @ mixing.t()).float()
    w = fit_whitening(inputs, 50, eps=1e-6)
    z = w.transform(inputs)
    cov = torch.cov(z.t().double())
    assert torch.allclose(cov, torch.eye(50, dtype=torch.float64), atol=2e-3)
    assert torch.all(w.eigenvalues[:-1] >= w.eigenvalues[1:])
    model = build_model(ModelConfig(input_size=50))
    folded = fold_whitening(model, w)
    assert folded.config.sizes == (784, 16, 16, 10)
    with torch.no_grad():
        assert torch.allclose(folded(inputs[:500]), model(z[:500]), atol=1e-4)
    with pytest.raises(ValueError, match="between 1 and the input size"):
        fit_whitening(inputs, 785, eps=0.01)


def test_trained_and_folded_nets_agree_on_every_test_digit(mnist):
    """The default recipe, shortened (1 augmented copy, 2 epochs): the network as trained (reading PCA-
    whitened, deskewed digits) and the saved one (the whitening folded into its first layer, reading
    deskewed pixels) agree on all 10,000 test digits; the recorded test accuracy is the saved net's on
    digits deskewed by infer.preprocess.deskew, the function mnist-infer applies."""
    recipe = RECIPES["default"].with_overrides(epochs=2, copies=1)
    res = train(TrainConfig(ModelConfig(), recipe, seed=0), mnist)
    assert res.deskew is True and res.whitening.components == 100
    assert res.trained_model.config.sizes == (100, 16, 16, 10) and res.model.config.sizes == (784, 16, 16, 10)
    pixels = prepare_pixels(torch.from_numpy(deskew(mnist.test_images.numpy())), res.mean, res.std, "cpu")
    with torch.no_grad():
        saved = res.model(pixels)
        trained = res.trained_model(res.whitening.transform(pixels))
    assert (saved.argmax(1) == trained.argmax(1)).all()
    assert (saved - trained).abs().max().item() < 1e-4
    assert (saved.argmax(1) == mnist.test_labels).float().mean().item() == res.test_accuracy
    assert 0.9 < res.test_accuracy < 1


# --- 5. determinism --------------------------------------------------------------------------------


def test_same_seed_same_weights(mnist):
    recipe = RECIPES["v1"].with_overrides(epochs=2)
    a = train(TrainConfig(ModelConfig(), recipe, seed=7), mnist).model.state_dict()
    b = train(TrainConfig(ModelConfig(), recipe, seed=7), mnist).model.state_dict()
    c = train(TrainConfig(ModelConfig(), recipe, seed=8), mnist).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- 6. outputs and pictures -----------------------------------------------------------------------


def test_checkpoint_is_self_describing(trained):
    raw = torch.load(trained, weights_only=True)
    assert raw["format"] == "mnist-toolkit.checkpoint" and raw["format_version"] == 1
    assert raw["model_config"]["hidden"] == [16, 16] and raw["model_config"]["activation"] == "sigmoid"
    assert raw["model_config"]["input_size"] == 784  # the whitening is folded away
    assert raw["labels"] == [str(d) for d in range(10)]
    assert raw["normalisation"] == {"mean": 0.1307, "std": 0.3081}
    assert raw["recipe"]["optimizer"] == "adamw" and len(raw["history"]) == raw["recipe"]["epochs"]
    assert raw["recipe"]["pca"] == 100 and raw["preprocessing"] == {"deskew": raw["recipe"]["deskew"]}
    m = raw["metrics"]
    assert 0.90 < m["test_accuracy"] < 1 and 0.90 < m["val_accuracy"] < 1
    assert m["prepare_seconds"] > 0 and m["train_seconds"] > 0
    assert sum(map(sum, m["test_confusion"])) == 10000
    assert len(raw["data"]["fingerprint"]) == 64
    summary = json.loads(trained.with_name("model.metrics.json").read_text())
    assert summary["metrics"]["test_accuracy"] == m["test_accuracy"] and "state_dict" not in summary
    assert summary["model"] == {"file": "model.pt", "sha256": file_sha256(trained)}
    for name in ("curves.png", "weights.png", "confusion.png"):
        picture = trained.with_name(f"model.{name}")
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(picture).text["Source"] == "model.pt"
    assert not [p for p in trained.parent.iterdir() if p.name.endswith((".tmp", ".probe"))]


def test_checkpoint_weights_reproduce_recorded_accuracy(trained, mnist):
    ck = load_checkpoint(trained)
    model = ck.build_normalised()
    digits = deskew(mnist.test_images.numpy()) if ck.deskew else mnist.test_images.numpy()
    with torch.no_grad():
        pred = model(torch.from_numpy(digits).float().div(255).unsqueeze(1)).argmax(1)
    assert (pred == mnist.test_labels).float().mean().item() == pytest.approx(ck.test_accuracy, abs=1e-4)


def test_side_files_are_named_after_their_model(tmp_path, mnist_dir):
    """Two models in one folder: each has its own NAME.metrics.json and pictures, saying which model
    they describe; neither run is refused or overwrites the other's."""
    common = ["--data-dir", mnist_dir, "--no-download", "--epochs", 1, "-q"]
    assert run(common + ["--copies", 0, "--no-deskew", "--out", tmp_path / "a.pt"]).exit_code == 0
    result = run(common + ["--recipe", "seed", "--out", tmp_path / "b.pt"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"] == str(tmp_path / "b.metrics.json")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{m}.{s}" for m in "ab" for s in ("pt", "metrics.json", "curves.png", "weights.png",
                                                                  "confusion.png"))
    for m, recipe in (("a", "default+custom"), ("b", "seed+custom")):
        summary = json.loads((tmp_path / f"{m}.metrics.json").read_text())
        assert summary["model"] == {"file": f"{m}.pt", "sha256": file_sha256(tmp_path / f"{m}.pt")}
        assert summary["recipe"]["name"] == recipe
        for picture in ("curves", "weights", "confusion"):
            assert Image.open(tmp_path / f"{m}.{picture}.png").text["Source"] == f"{m}.pt"
    again = run(common + ["--recipe", "seed", "--out", tmp_path / "b.pt"])
    assert again.exit_code == 2 and "b.metrics.json" in again.stderr and "a.metrics.json" not in again.stderr


def test_val_size_0_trains_on_all_60000_and_keeps_the_last_epoch(tmp_path, mnist_dir):
    out = tmp_path / "m.pt"
    result = run(["--data-dir", mnist_dir, "--no-download", "--recipe", "v1", "--epochs", 2, "--val-size", 0,
                  "--no-plots", "--out", out])
    assert result.exit_code == 0, result.output
    assert "keeping the last epoch" in result.stderr and "val " not in result.stderr
    ck = load_checkpoint(out)
    assert ck.data["data"]["train_size"] == 60000 and ck.data["data"]["val_size"] == 0
    m = ck.data["metrics"]
    assert m["val_accuracy"] is None and m["best_epoch"] == 2 and ck.data["training"]["keep"] == "last"
    assert all(h["val_accuracy"] is None for h in ck.data["history"]) and 0.85 < m["test_accuracy"] < 1


def test_progress_is_compact_off_a_terminal_and_quiet_is_silent(tmp_path, mnist_dir):
    args = ["--data-dir", mnist_dir, "--no-download", "--recipe", "seed", "--batch-size", 4096, "--epochs", 30,
            "--no-plots", "--val-size", 1000]
    loud = run(args + ["--out", tmp_path / "a" / "model.pt"])
    assert loud.exit_code == 0
    lines = [line for line in loud.stderr.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["1/30", "3/30", "6/30", "9/30", "12/30", "15/30", "18/30",
                                                   "21/30", "24/30", "27/30", "30/30"]
    assert "val " in lines[0] and "loss " in lines[0] and "\r" not in loud.stderr
    assert json.loads(loud.stdout)["model"].endswith("model.pt")
    quiet = run(args + ["--out", tmp_path / "b" / "model.pt", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert not (tmp_path / "b" / "model.curves.png").exists()


def test_progress_is_one_live_bar_on_a_terminal(tmp_path, mnist_dir):
    """On a terminal, one tqdm bar redrawn in place (carriage returns), not one line per epoch."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 wide
    with subprocess.Popen([sys.executable, "-m", "trainer", "--data-dir", str(mnist_dir), "--no-download",
                           "--recipe", "seed", "--batch-size", "1024", "--epochs", "12", "--no-plots",
                           "--out", str(tmp_path / "m.pt")], stderr=follower, stdout=subprocess.PIPE) as proc:
        os.close(follower)
        chunks = []
        while select.select([leader], [], [], 120)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        stdout = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    assert json.loads(stdout)["model"] == str(tmp_path / "m.pt")
    shown = b"".join(chunks).decode()
    assert shown.count("\r") >= 12 and "12/12" in shown
    assert not any(line.startswith("epoch 1/12") for line in shown.splitlines())
    assert "test " in shown.splitlines()[-1]


# --- 7. bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [(["--hidden", "abc"], "layer sizes"), (["--hidden", "16,0"], "between 1"), (["--lr", "-1"], "--lr"),
     (["--epochs", "0"], "--epochs"), (["--recipe", "fast"], "--recipe"), (["--copies", "2", "--shift", "1"], "combine"),
     (["--pca", "800"], "800 is more components than the 784 inputs"), (["--stroke", "1.5"], "--stroke")],
)
def test_nonsense_options_are_usage_errors(args, words, tmp_path):
    result = run(args + ["--out", tmp_path / "m.pt"])
    assert result.exit_code == 2
    assert words in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def _a_file(path: Path) -> Path:
    path.write_bytes(b"precious")
    return path


@pytest.mark.parametrize("make_out, words", [
    (lambda d: "", "is empty"),
    (lambda d: d / "m.onnx", "mnist-export"),
    (lambda d: d / "model", "ends in .pt"),
    (lambda d: _a_file(d / "model.pt") / "x.pt", "model.pt is a file, not a folder"),
    (lambda d: Path("/proc/mnist-toolkit-test/m.pt"), "cannot create the folder /proc/mnist-toolkit-test"),
])
def test_bad_destinations_are_refused_before_training(tmp_path, mnist_dir, make_out, words):
    out = make_out(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    result = run(["--data-dir", mnist_dir, "--no-download", "--out", out])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.output
    assert "training" not in result.stderr and "epoch" not in result.stderr  # refused before any work
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_output_folder_is_made_and_removed_again_if_nothing_is_written(tmp_path, mnist_dir, monkeypatch):
    out = tmp_path / "runs" / "a" / "model.pt"
    with monkeypatch.context() as env:  # an empty user cache and --no-download: fails after the folder was made
        env.delenv("MNIST_DATA", raising=False)
        env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        failed = run(["--no-download", "--out", out])
    assert failed.exit_code == 1 and "--no-download forbids" in failed.stderr and list(tmp_path.iterdir()) == []
    ok = run(["--data-dir", mnist_dir, "--no-download", "--recipe", "seed", "--epochs", 1, "--no-plots", "-q",
              "--out", out])
    assert ok.exit_code == 0 and out.is_file()


def test_existing_output_needs_force(tmp_path, mnist_dir):
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    args = ["--data-dir", mnist_dir, "--no-download", "--recipe", "seed", "--epochs", 1, "--no-plots", "-q", "--out", out]
    result = run(args)
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_bytes() == b"precious"
    assert run(args + ["--force"]).exit_code == 0
    assert load_checkpoint(out).data["recipe"]["epochs"] == 1


# Names a file system allows that a path parser may not: every kind of odd character in a file name.
ODD_NAMES = {
    "backslash": "back\\slash.pt",
    "non-utf8": os.fsdecode(b"r\xe9sum\xe9.pt"),
    "spaces": "my model .pt",
    "newline": "two\nlines.pt",
    "quotes-and-shell": "it's \"$HOME\" *?.pt",
}


@pytest.mark.parametrize("name", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_any_file_name_the_file_system_allows_is_written(tmp_path, mnist_dir, name, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare name, as a user types it: torch.save("back\\slash.pt") fails there
    out = Path(name)
    result = run(["--data-dir", mnist_dir, "--no-download", "--epochs", 1, "--copies", 0, "--pca", 0, "--no-deskew",
                  "--out", out])
    assert result.exit_code == 0, result.output + repr(result.exception)
    # Printed as mnist-infer prints paths (infer.output.escape_path): valid UTF-8, no lone surrogate.
    assert json.loads(result.stdout_bytes.decode("utf-8"))["model"] == escape_path(name)
    assert "\\ud" not in result.stdout and f"wrote {escape_path(name)}, " in result.stderr_bytes.decode("utf-8")
    written = sorted(os.listdir(os.fsencode(tmp_path)))
    stem = os.fsencode(name)[: -len(b".pt")]
    assert written == sorted(stem + s for s in (b".pt", b".metrics.json", b".curves.png", b".weights.png",
                                                  b".confusion.png"))
    ck = load_checkpoint(out)
    assert ck.data["recipe"]["epochs"] == 1 and ck.build() is not None
    assert json.loads((tmp_path / f"{out.stem}.metrics.json").read_text())["model"]["file"] == escape_path(name)


@pytest.mark.parametrize("args", [["--optimizer", "adamw"], ["--optimizer", "sgd", "--schedule", "constant"],
                                  ["--recipe", "seed", "--batch-size", "256"]], ids=["adamw", "sgd", "seed"])
def test_a_diverging_run_stops_at_once_and_writes_nothing(tmp_path, mnist_dir, args):
    out = tmp_path / "runs" / "nan.pt"
    result = run(["--data-dir", mnist_dir, "--no-download", "--lr", "1e9", "--epochs", 3, "--copies", 0, "--pca", 0,
                  "--no-deskew", "--out", out, *args])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    # AdamW's one-cycle run reaches NaN; plain SGD and the seed recipe a finite loss in the billions.
    loss = "nan" if "adamw" in args else r"(nan|inf|[0-9.]+e\+[0-9]+)"
    assert len(errors) == 1 and re.fullmatch(rf"Error: training diverged: the loss is {loss} at epoch 1 \(lr 1e\+09\): "
                                             r"lower --lr; nothing was written", errors[0]), errors
    assert "epoch 1/3" in result.stderr and "epoch 3/3" not in result.stderr  # stopped at the first bad epoch
    assert list(tmp_path.iterdir()) == []  # no model, no side files, not even the folder made for them


def test_ctrl_c_leaves_no_file(tmp_path, mnist_dir, monkeypatch):
    import trainer.checkpoint as checkpoint

    def interrupted(ckpt, f, **kw):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    out = tmp_path / "new" / "model.pt"
    result = run(["--data-dir", mnist_dir, "--no-download", "--recipe", "seed", "--epochs", 1, "--no-plots", "-q",
                  "--out", out])
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # neither a file nor the folder made for it


def test_cuda_asked_without_cuda_is_an_error(tmp_path, mnist_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run(["--data-dir", mnist_dir, "--device", "cuda", "--out", tmp_path / "m.pt"])
    assert result.exit_code == 1 and "CUDA" in result.stderr


def test_every_option_the_trainer_names_exists():
    """Every --option in a string of trainer/ (messages, hints, help) is one of mnist-train's, unless it
    is named with another command (`mnist-export ... --check`)."""
    import ast

    ours = {o for p in main.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "--version"}
    for path in sorted((ROOT / "trainer").glob("*.py")):
        texts = [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str)]
        named = re.finditer(r"(?:(mnist-\w+) )?(?<![\w-])(--[a-z][a-z0-9-]*)", "\n".join(texts))
        assert [m.group(2) for m in named if m.group(1) in (None, "mnist-train") and m.group(2) not in ours] == [], path.name


def test_installed_command_runs(tmp_path, mnist_dir):
    exe = shutil.which("mnist-train", path=os.path.dirname(sys.executable))
    assert exe, "mnist-train is not installed beside this Python"
    out = tmp_path / "model.pt"
    proc = subprocess.run([exe, "--data-dir", str(mnist_dir), "--no-download", "--recipe", "seed", "--epochs", "1",
                           "--no-plots", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stderr and load_checkpoint(out).data["recipe"]["epochs"] == 1
    mod = subprocess.run([sys.executable, "-m", "trainer", "--version"], capture_output=True, text=True)
    assert mod.returncode == 0 and "0.1.0" in mod.stdout


# --- 8. the shipped model --------------------------------------------------------------------------

SHIPPED = ROOT / "infer" / "models" / "default.onnx"


def _metadata(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_wheel_carries_every_data_file_of_its_packages():
    """pyproject's package-data covers each file in a package folder that is not Python (the shipped
    model and its provenance, default.onnx.json, which the README points to): the wheel leaves out what
    no pattern names. Checked on pyproject itself; building a wheel takes too long for the default run."""
    import fnmatch
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setup.get("package-data", {})
    uncovered = []
    for package in setup["packages"]:
        for path in sorted((ROOT / package.replace(".", "/")).iterdir()):
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                allowed = [*patterns.get(package, []), *patterns.get("*", [])]
                if not any(fnmatch.fnmatch(path.name, p) for p in allowed):
                    uncovered.append(str(path.relative_to(ROOT)))
    assert uncovered == []
    assert (ROOT / "infer" / "models" / "default.onnx.json").is_file()


def test_what_the_readmes_examples_write_is_ignored_by_git():
    """Every file the README's mnist-train, mnist-export and "Bring your own model" examples write in the
    repository's root (as named in their code, plus the reports and side files each implies) is
    ignored by git, and no tracked file is."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    parts = re.split(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    sections = {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}
    names = set()
    for title in ("mnist-train", "mnist-export", "Bring your own model"):
        fenced, code = False, []
        for line in sections[title].splitlines():
            if line.startswith("```"):
                fenced = not fenced
            elif fenced or line.startswith("    "):
                code.append(line)
        names |= set(re.findall(r"(?<![\w/.-])\w[\w./-]*\.(?:pt|pth|onnx|json|png|csv|py)\b", "\n".join(code)))
    assert {"model.pt", "model.metrics.json", "mine.py", "mine.pt", "mine-whole.pt", "runs/seed.pt"} <= names
    for name in list(names):
        stem = name.rsplit(".", 1)[0]
        if name.endswith(".pt"):
            names |= {f"{stem}.onnx", f"{stem}.onnx.json", f"{stem}.metrics.json", f"{stem}.curves.png"}
        if name.endswith(".onnx"):
            names |= {f"{name}.json", f"{name}.check.json"}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    names -= tracked  # the shipped model, e.g. infer/models/default.onnx, is named in the README too
    check = subprocess.run(["git", "check-ignore", "--no-index", "-v", "-n", *sorted(names)], cwd=ROOT,
                           capture_output=True, text=True)
    not_ignored = [line.split("\t")[-1] for line in check.stdout.splitlines() if line.startswith("::")]
    assert not_ignored == []
    ignored_but_tracked = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.split()
    assert ignored_but_tracked == []


def test_shipped_model_is_the_code_default_recipe():
    """The recorded recipe is the code's default recipe, field by field, so they cannot drift apart;
    the model reads deskewed digits, and says which version of the project made it."""
    from infer import contract as C

    meta = _metadata(SHIPPED)
    assert json.loads(meta[C.META_RECIPE]) == RECIPES["default"].to_dict()
    assert json.loads(meta[C.META_INPUT])["deskew"] is RECIPES["default"].deskew is True
    assert json.loads(meta[C.META_VERSIONS])["tool"] == C.TOOL_VERSION
    assert json.loads(meta[C.META_MODEL_CONFIG])["hidden"] == [16, 16]
    proof = json.loads(meta[C.META_VERIFICATION])
    assert proof["passed"] is True and proof["test_set"]["argmax_agreement"] == 1.0
    assert proof["test_set"]["accuracy_ort"] >= 0.973  # seed 0: 97.38% (README)
    report = json.loads(SHIPPED.with_name("default.onnx.json").read_text())
    assert report["sha256"] == file_sha256(SHIPPED) and report["passed"] is True


def test_shipped_model_scores_its_recorded_accuracy_on_the_mnist_pngs(mnist_pngs, tmp_path):
    """mnist-infer with the shipped model (deskewing, as its metadata asks) on the 10,000 MNIST test
    PNGs scores exactly the test accuracy recorded in the model."""
    import csv

    from infer import contract as C
    from infer.cli import main as infer_main

    rows = tmp_path / "rows.csv"
    result = CliRunner().invoke(infer_main, [str(mnist_pngs), "-m", str(SHIPPED), "-q", "-o", str(rows)])
    assert result.exit_code == 0, result.output
    with open(rows, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10000
    accuracy = sum(r["prediction"] == r["label"] for r in table) / 10000
    recorded = json.loads(_metadata(SHIPPED)[C.META_VERIFICATION])["test_set"]["accuracy_ort"]
    assert accuracy == recorded


def test_build_script_never_replaces_the_shipped_model_silently(tmp_path):
    before = SHIPPED.read_bytes()
    script = ROOT / "scripts" / "build-default-model"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "use --force" in proc.stderr
    assert SHIPPED.read_bytes() == before
    (tmp_path / "default.onnx").write_bytes(b"precious")
    proc = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and (tmp_path / "default.onnx").read_bytes() == b"precious"
    proc = subprocess.run([str(script), "--frce"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option --frce" in proc.stderr


@pytest.mark.slow
def test_build_script_reproduces_the_shipped_model(tmp_path, mnist_dir):
    """Same code, same data, seed 0, one thread: the same weights and the same test accuracy."""
    import onnx
    from onnx import numpy_helper

    from infer import contract as C

    env = {**os.environ, "MNIST_DATA": str(mnist_dir)}
    proc = subprocess.run([str(ROOT / "scripts" / "build-default-model"), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    weights = lambda path: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    built, shipped = weights(tmp_path / "default.onnx"), weights(SHIPPED)
    assert built.keys() == shipped.keys() and all(np.array_equal(built[k], shipped[k]) for k in built)
    for key in (C.META_RECIPE, C.META_SOURCE_TEST_ACCURACY, C.META_INPUT, C.META_MODEL_CONFIG):
        assert _metadata(tmp_path / "default.onnx")[key] == _metadata(SHIPPED)[key]
