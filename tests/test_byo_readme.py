"""README's "Bring your own model" runs as written: its code blocks, extracted and executed in a fresh folder."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def code_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.S | re.M)


def test_bring_your_own_model_section_runs_as_written(tmp_path, mnist_dir, mnist):
    blocks = code_blocks(readme_section("Bring your own model"))
    python = [code for lang, code in blocks if lang == "python"]
    shell = [code for lang, code in blocks if lang == "bash"]
    assert len(python) == 1 and len(shell) == 1
    name = re.match(r"# (\S+\.py)", python[0]).group(1)  # the block says which file it is
    (tmp_path / name).write_text(python[0])
    # The commands run from the repository's root, where samples/ is: a link to it stands in for the clone.
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    env = {**os.environ, "MNIST_DATA": str(mnist_dir), "PYTHONPATH": str(ROOT),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", shell[0]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = proc.stdout.splitlines()
    exports = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["model"] for e in exports] == ["mine.onnx", "mine-whole.onnx"]
    assert [e["source_format"] for e in exports] == ["state-dict", "module-pickle"]
    assert all(e["verified"] is True and e["hint"] is None for e in exports)
    assert exports[0]["test_accuracy"] > 0.8  # a few seconds of training reads digits
    assert exports[0]["test_accuracy"] == exports[1]["test_accuracy"]

    images = sorted(p for p in (ROOT / "samples").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    rows = [line for line in lines if line.startswith("samples/")]
    assert len(rows) == len(images) > 0

    # Saved both ways, the two exports are the same network.
    pixels = mnist.test_images[:500].numpy().astype(np.float32)[:, None] / 255
    logits = [ort.InferenceSession(str(tmp_path / e["model"]), providers=["CPUExecutionProvider"])
              .run(["logits"], {"pixels": pixels})[0] for e in exports]
    assert np.array_equal(logits[0], logits[1])
