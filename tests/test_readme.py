"""README.md's examples run as written: every command line of its example blocks and its Python API
block, executed in order in fresh folders as a reader would (section "Bring your own model" has its
own test, tests/test_byo_readme.py). Slow: it trains the default recipe twice; CI runs it explicitly.

A line runs with bash in the section's folder; `export NAME=VALUE` lines carry over to the next
lines, as in a shell. A few examples need what this machine has not (a GPU, a Ray cluster): they
must fail the way the README says, with their one line (EXPECTED). Lines that install software are
not run here (NOT_RUN says which test covers them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("mnist-train", "mnist-export", "mnist-infer", "find ", "export ", "python ", "pip ", "MNIST_DATA=")
# Sections whose examples run, each list in one folder, in README order (a reader's session).
SESSIONS = {
    "main job": ["The two commands"],
    "tutorial": ["mnist-train", "mnist-export", "mnist-infer", "On a cluster: `--engine ray`"],
}
NOT_RUN = {  # start of a line -> why this test does not run it
    "pip install": "installs software: .ci/run installs the package, tests/test_install.py the core alone",
    "MNIST_DATA=../shared/data/mnist python -m pytest": "the test suite itself (this test is part of it)",
}
EXPECTED = {  # words of a line -> (exit code, words of its one line on stderr) on a machine without them
    "--verify-provider cuda": (1, "libcuda.so.1"),  # no NVIDIA driver here
    "--ray-address auto": (1, "no Ray cluster is running"),  # no Ray cluster here
}


def sections() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def examples(body: str) -> list[tuple[str, str]]:
    """('sh', line) for each command line of the indented example blocks and ('python', code) for each
    fenced Python block, in the order they appear."""
    found: list[tuple[int, str, str]] = []
    for m in re.finditer(r"^```python\n(.*?)^```", body, flags=re.S | re.M):
        found.append((m.start(), "python", m.group(1)))
    fenced = [(m.start(), m.end()) for m in re.finditer(r"^```.*?^```", body, flags=re.S | re.M)]
    for m in re.finditer(r"^    (\S.*)$", body, flags=re.M):
        inside = any(a <= m.start() < b for a, b in fenced)
        if not inside and m.group(1).startswith(COMMANDS):
            found.append((m.start(), "sh", m.group(1)))
    return [(kind, code) for _, kind, code in sorted(found)]


def test_the_readme_lists_examples_for_each_tool():
    """The parser finds what the sessions will run (a README reshuffle cannot silently empty them)."""
    found = {title: examples(body) for title, body in sections().items()}
    lines = [code for title in SESSIONS["tutorial"] for kind, code in found[title] if kind == "sh"]
    for tool in ("mnist-train", "mnist-export", "mnist-infer"):
        assert sum(line.startswith(tool) for line in lines) >= 3, tool
    assert any(kind == "python" for kind, _ in found["mnist-infer"])
    assert [c for k, c in found["The two commands"] if k == "sh"][0].startswith("mnist-train")
    assert all(any(line.startswith(k) for k in NOT_RUN) or line.startswith(COMMANDS) for line in lines)


def _run(code: str, kind: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if kind == "python":
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
    return subprocess.run(["bash", "-o", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_readme_examples_run_as_written(session, tmp_path):
    """Each example line, in README order, in a fresh folder holding a copy of samples/ and, beside it,
    ../shared (as on this project's machines); what each one leaves behind is checked below."""
    shared = ROOT.parent / "shared"
    if not (shared / "data" / "mnist").is_dir():
        pytest.skip("MNIST is not in ../shared/data/mnist beside the repository, where the README's examples look")
    (tmp_path / "shared").symlink_to(shared)
    work = tmp_path / "work"
    shutil.copytree(ROOT / "samples", work / "samples")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DATA"}  # the README says where MNIST is
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)  # this checkout, as the installed commands run it
    by_title = sections()
    ran: list[tuple[str, subprocess.CompletedProcess]] = []
    for title in SESSIONS[session]:
        for kind, code in examples(by_title[title]):
            if kind == "sh" and any(code.startswith(k) for k in NOT_RUN):
                continue
            if kind == "sh" and code.startswith("export "):
                name, value = code.split("#")[0].split(None, 1)[1].strip().split("=", 1)
                env[name] = value  # relative, as written: every line runs in the same folder
                continue
            proc = _run(code, kind, work, env)
            expected = next((v for k, v in EXPECTED.items() if k in code), None)
            if expected is not None:
                assert proc.returncode == expected[0], (code, proc.returncode, proc.stderr[-2000:])
                assert expected[1] in proc.stderr and "Traceback" not in proc.stderr, (code, proc.stderr[-2000:])
            else:
                assert proc.returncode == 0, (code, proc.returncode, proc.stderr[-3000:])
            ran.append((code, proc))

    if session == "main job":
        assert (work / "model.pt").is_file() and (work / "model.onnx").is_file()
        assert ran[0][1].stdout.count("samples/") == sum(1 for p in (work / "samples").rglob("*.*")
                                                         if p.suffix != ".md" and p.suffix != ".py")
        return
    # What the tutorial's examples promise they leave behind.
    for name in ("model.pt", "model.metrics.json", "model.curves.png", "model.weights.png", "model.confusion.png",
                 "runs/seed.pt", "runs/seed.metrics.json", "runs/relu/model.pt", "runs/plain.pt",
                 "model.onnx", "model.onnx.json", "seed.onnx", "out/rows.csv", "report/confusion.png",
                 "report/misclassified.png", "report/metrics.json", "rows.csv"):
        assert (work / name).is_file(), name
    assert not (work / "gpu.onnx").exists() and not (work / "gpu-rows.csv").exists()  # failed: nothing written
    train = json.loads(ran[0][1].stdout)
    assert train["test_accuracy"] > 0.97  # the default recipe as the README states it
    jsonl = next(p for c, p in ran if "--format jsonl" in c)
    assert all(len(json.loads(line)["top_k"]) == 3 for line in jsonl.stdout.splitlines())
    api = next(p for c, p in ran if c.startswith("import infer"))
    assert api.stdout.count("samples/") >= 45
