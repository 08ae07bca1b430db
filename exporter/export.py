"""Checkpoint -> self-contained, reproducible model.onnx, and the proof that ONNX Runtime agrees with PyTorch."""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infer import contract as C
from infer.engine import make_session
from infer.output import escape_path
from infer.preprocess import deskew, to_model_input
from trainer.checkpoint import Checkpoint

if TYPE_CHECKING:
    from exporter.foreign import Source

EDGE_SEED = 1234
BATCH_SIZES = (1, 7, 1000)
# The proof's checks in three groups, as the command's JSON reports them (`check_group` names each check's).
CHECK_GROUPS = ("test_set", "edge_inputs", "batch_sizes")


def check_group(name: str) -> str:
    """"test set" -> test_set, "batch 7" -> batch_sizes, the edge inputs (zeros, ones, uniform) -> edge_inputs."""
    if name == "test set":
        return "test_set"
    return "batch_sizes" if name.startswith("batch ") else "edge_inputs"


class VerificationError(Exception):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance; carries the report."""

    def __init__(self, report: "VerificationReport"):
        self.report = report
        worst = report.failures[0] if report.failures else "unknown"
        super().__init__(f"verification failed: {worst}")


@dataclass(frozen=True)
class ExportConfig:
    """How to export and what to prove."""

    opset: int = 18
    verify: bool = True
    # PyTorch float32 itself is ~2e-5 away from a float64 reference on trained logits (the report's
    # noise_floor), so an atol of 1e-5 would reject PyTorch against itself; 1e-4 is 5x that floor.
    atol: float = 1e-4
    rtol: float = 1e-5
    providers: tuple[str, ...] = ("cpu",)
    data_dir: str | None = None  # MNIST for the test-set check; None: $MNIST_DATA or the user cache


@dataclass
class OutputDiff:
    """One output of one check: how far ORT is from PyTorch."""

    max_abs_diff: float
    max_rel_diff: float
    argmax_agreement: float
    within_tolerance: bool


@dataclass
class CheckResult:
    name: str  # e.g. "test set", "zeros", "batch 7"
    provider: str
    n: int
    outputs: dict[str, OutputDiff]
    accuracy_torch: float | None = None
    accuracy_ort: float | None = None

    @property
    def passed(self) -> bool:
        ok = all(d.within_tolerance for d in self.outputs.values())
        if self.name == "test set":
            ok = ok and all(d.argmax_agreement == 1.0 for d in self.outputs.values())
        return ok


@dataclass
class VerificationReport:
    """Every check ORT-vs-PyTorch, with the tolerances they were held to."""

    atol: float
    rtol: float
    checks: list[CheckResult] = field(default_factory=list)
    test_set_checked: bool = False
    note: str = ""
    noise_floor: float | None = None  # max |PyTorch float32 - PyTorch float64| logits on the test digits

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check_status(self) -> dict[str, str]:
        """Per group of CHECK_GROUPS: "passed", "failed", or "not run: <why>"."""
        status = {}
        for group in CHECK_GROUPS:
            ran = [c for c in self.checks if check_group(c.name) == group]
            if not ran:
                status[group] = "not run: MNIST test set not found" if group == "test_set" else "not run"
            else:
                status[group] = "passed" if all(c.passed for c in ran) else "failed"
        return status

    @property
    def failures(self) -> list[str]:
        out = []
        for c in self.checks:
            for name, d in c.outputs.items():
                if not d.within_tolerance:
                    out.append(f"{c.name} on {c.provider}: output {name!r} max abs diff {d.max_abs_diff:.3g} "
                               f"exceeds atol {self.atol:g} + rtol {self.rtol:g}*|ref|")
                elif c.name == "test set" and d.argmax_agreement < 1.0:
                    out.append(f"test set on {c.provider}: output {name!r} argmax agrees on only "
                               f"{100 * d.argmax_agreement:.2f}% of images")
        return out

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "test_set_checked": self.test_set_checked,
            "note": self.note,
            "noise_floor": self.noise_floor,
            "failures": self.failures,
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
        }

    def summary(self) -> dict:
        """The figures stored in the model's metadata (deterministic: no timings)."""
        test = next((c for c in self.checks if c.name == "test set"), None)
        worst = {name: max(c.outputs[name].max_abs_diff for c in self.checks) for name in self.checks[0].outputs}
        return {
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "providers": sorted({c.provider for c in self.checks}),
            "checks": [c.name for c in self.checks if c.provider == self.checks[0].provider],
            "max_abs_diff": worst,
            "noise_floor": self.noise_floor,
            "test_set": None if test is None else {
                "n": test.n,
                "accuracy_torch": test.accuracy_torch,
                "accuracy_ort": test.accuracy_ort,
                "argmax_agreement": test.outputs[C.LOGITS_NAME].argmax_agreement,
            },
        }


def check_status(report: VerificationReport | None, why_not: str = "--no-verify") -> tuple[bool, dict[str, str]]:
    """(verified, status per check group): verified only when every group ran and passed, the test set included."""
    if report is None:
        return False, {group: f"not run: {why_not}" for group in CHECK_GROUPS}
    status = report.check_status()
    return report.passed and all(v == "passed" for v in status.values()), status


@dataclass
class ExportResult:
    """The verified ONNX file's bytes (not yet written), the proof, and for imported files the guesses scored."""

    onnx_bytes: bytes
    report: VerificationReport | None
    seconds: dict[str, float]
    sha256: str
    source: "Source"
    alternatives: list | None = None  # exporter.foreign.Alternative, given reading first; None: not scored
    hint: str | None = None  # one line when another activation/scaling reads the digits much better

    def to_dict(self, checkpoint: Path, output: Path) -> dict:
        """The report file's content (the proof, the source's format, the alternatives scored); paths as
        infer.output.escape_path writes them."""
        verified, status = check_status(self.report)
        payload = {"checkpoint": escape_path(str(checkpoint)), "output": escape_path(str(output)), "sha256": self.sha256,
                   "source_format": self.source.format, "verified": verified, "check_status": status,
                   "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.alternatives is not None:
            payload["alternatives"] = [a.to_dict() for a in self.alternatives]
        payload["hint"] = self.hint
        payload.update(self.report.to_dict() if self.report is not None
                       else {"passed": None, "note": "not verified (--no-verify)", "checks": []})
        return payload


def build_onnx(ckpt: Checkpoint, opset: int = 18):
    """Export the checkpoint's network (normalisation folded in) with a dynamic batch axis; strip debug info."""
    import torch

    model = ckpt.build_normalised(with_probs=True)
    example = torch.rand(2, 1, C.IMAGE_SIZE, C.IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    # The exporter narrates its progress on stdout; our stdout is for results.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[C.INPUT_NAME],
            output_names=list(C.OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    # The exporter lists every initializer in value_info too. That copy is redundant (an initializer
    # carries its own dims) and goes stale when a tool rewrites a weight: onnxruntime's quantizer
    # transposes the Gemm weights, then shape inference fails on "(784) vs (16)". Keep value_info
    # for computed tensors only.
    weights = {t.name for t in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in weights]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    strip_debug_metadata(proto)
    return proto


def strip_debug_metadata(proto) -> None:
    """Drop node-level metadata (stack traces with absolute paths, class names) and doc strings."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for seq in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in seq:
            del item.metadata_props[:]
            item.doc_string = ""
    del graph.metadata_props[:]
    graph.doc_string = ""
    proto.doc_string = ""
    del proto.metadata_props[:]


def _diff(ort_out: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    abs_diff = np.abs(ort_out.astype(np.float64) - ref.astype(np.float64))
    rel = abs_diff / np.maximum(np.abs(ref.astype(np.float64)), 1e-12)
    return OutputDiff(
        max_abs_diff=float(abs_diff.max()) if abs_diff.size else 0.0,
        max_rel_diff=float(rel.max()) if rel.size else 0.0,
        argmax_agreement=float((ort_out.argmax(1) == ref.argmax(1)).mean()) if len(ref) else 1.0,
        within_tolerance=bool(np.all(abs_diff <= atol + rtol * np.abs(ref))),
    )


def _torch_outputs(model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        logits, probs = model(torch.from_numpy(pixels))
    return {C.LOGITS_NAME: logits.numpy(), C.PROBS_NAME: probs.numpy()}


def _ort_outputs(session, pixels: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [session.run(list(C.OUTPUT_NAMES), {C.INPUT_NAME: pixels[i : i + batch]}) for i in range(0, len(pixels), batch)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(C.OUTPUT_NAMES)}


def load_test_set(data_dir, deskewed: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """MNIST test pixels [N,1,28,28] float32 in [0,1] (deskewed when the model reads deskewed digits)
    and labels int64 [N], or None when the user cache (data_dir None, no $MNIST_DATA) lacks it.

    A folder the user named (data_dir, $MNIST_DATA) must hold MNIST: raises trainer.data.DataError
    otherwise, since a proof quietly made without the test set is not what was asked for."""
    from trainer.data import DataError, load_mnist, named_data_dir

    try:
        data = load_mnist(data_dir, download=False)
    except DataError:
        if named_data_dir(data_dir) is not None:
            raise
        return None
    images = data.test_images.numpy()
    return to_model_input(deskew(images) if deskewed else images), data.test_labels.numpy()


def verify_export(onnx_bytes: bytes, ckpt: Checkpoint, config: ExportConfig,
                  test_set: tuple[np.ndarray, np.ndarray] | None) -> VerificationReport:
    """Run the ONNX model through ONNX Runtime and PyTorch on real digits, edge inputs and odd batch sizes."""
    import torch

    torch.set_num_threads(1)
    model = ckpt.build_normalised(with_probs=True)
    report = VerificationReport(atol=config.atol, rtol=config.rtol, test_set_checked=test_set is not None)
    if test_set is None:
        report.note = "MNIST test set not found: checked edge inputs and random digits only"
    rng = np.random.default_rng(EDGE_SEED)
    shape = (C.IMAGE_SIZE, C.IMAGE_SIZE)
    edge = {
        "zeros": np.zeros((4, 1, *shape), np.float32),
        "ones": np.ones((4, 1, *shape), np.float32),
        "uniform": rng.random((64, 1, *shape), dtype=np.float32),
    }
    digits = test_set[0][:1000] if test_set is not None else rng.random((1000, 1, *shape), dtype=np.float32)
    # (name, pixels, ORT batch size, labels); the PyTorch reference of each input is computed once.
    checks = [("test set", test_set[0], 1000, test_set[1])] if test_set is not None else []
    checks += [(name, pixels, len(pixels), None) for name, pixels in edge.items()]
    checks += [(f"batch {batch}", digits, batch, None) for batch in BATCH_SIZES]
    refs: dict[int, dict[str, np.ndarray]] = {}
    for _, pixels, _, _ in checks:
        refs.setdefault(id(pixels), _torch_outputs(model, pixels))
    with torch.no_grad():
        floor_input = checks[0][1] if test_set is not None else digits
        fp64 = model.double()(torch.from_numpy(floor_input).double())[0].numpy()
        model.float()
    report.noise_floor = float(np.abs(refs[id(floor_input)][C.LOGITS_NAME] - fp64).max())
    for provider in config.providers:
        cuda_options = {"use_tf32": 0} if provider == "cuda" else None
        session = make_session(onnx_bytes, provider, threads=1, cuda_options=cuda_options)
        for name, pixels, batch, labels in checks:
            ref, got = refs[id(pixels)], _ort_outputs(session, pixels, batch)
            result = CheckResult(name, provider, len(pixels),
                                 {k: _diff(got[k], ref[k], config.atol, config.rtol) for k in C.OUTPUT_NAMES})
            if labels is not None:
                result.accuracy_torch = float((ref[C.LOGITS_NAME].argmax(1) == labels).mean())
                result.accuracy_ort = float((got[C.LOGITS_NAME].argmax(1) == labels).mean())
            report.checks.append(result)
    return report


def add_metadata(proto, ckpt: Checkpoint, opset: int, report: VerificationReport | None,
                 source_format: dict) -> None:
    """Attach the contract's metadata_props; no paths, no timestamps: the same inputs give the same bytes."""
    import onnx
    import onnxruntime
    import torch

    versions = {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "tool": C.TOOL_VERSION}
    verification = report.summary() if report is not None else {"passed": None, "note": "not verified (--no-verify)"}
    props = {
        C.META_FORMAT: C.META_FORMAT_VALUE,
        C.META_LABELS: json.dumps(list(ckpt.data["labels"])),
        C.META_INPUT: json.dumps(C.input_layout(ckpt.deskew), sort_keys=True),
        C.META_SOURCE_SHA256: ckpt.sha256,
        C.META_SOURCE_FORMAT: json.dumps(source_format, sort_keys=True),
        C.META_SOURCE_TEST_ACCURACY: json.dumps(ckpt.test_accuracy),
        C.META_MODEL_CONFIG: json.dumps({**ckpt.config.to_dict(), "normalisation": ckpt.data["normalisation"]},
                                        sort_keys=True),
        C.META_RECIPE: json.dumps(ckpt.data.get("recipe", {}), sort_keys=True),
        C.META_VERIFICATION: json.dumps(verification, sort_keys=True),
        C.META_OPSET: str(opset),
        C.META_VERSIONS: json.dumps(versions, sort_keys=True),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = C.TOOL_NAME, C.TOOL_VERSION
    proto.model_version = 1


def export_onnx(source: "Source", config: ExportConfig, test_set="load") -> ExportResult:
    """Source -> verified ONNX bytes with the contract's metadata; raises VerificationError when the proof
    fails. Writes nothing: the caller commits the model and its report together (exporter.outputs)."""
    import hashlib

    import onnx

    from exporter.foreign import SCORE_DIGITS, alternatives_hint, score_alternatives

    ckpt = source.checkpoint
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    proto = build_onnx(ckpt, config.opset)
    seconds["export"] = time.perf_counter() - t0
    onnx.checker.check_model(proto, full_check=True)
    report = alternatives = hint = None
    if config.verify:
        t1 = time.perf_counter()
        if isinstance(test_set, str):
            test_set = load_test_set(config.data_dir, deskewed=ckpt.deskew)
        report = verify_export(proto.SerializeToString(), ckpt, config, test_set)
        seconds["verify"] = time.perf_counter() - t1
        if not report.passed:
            raise VerificationError(report)
        if source.imported and test_set is not None:
            alternatives = score_alternatives(source, test_set[0][:SCORE_DIGITS], test_set[1][:SCORE_DIGITS])
            hint = alternatives_hint(alternatives)
    add_metadata(proto, ckpt, config.opset, report, source.format)
    onnx.checker.check_model(proto, full_check=True)
    payload = proto.SerializeToString(deterministic=True)
    seconds["total"] = time.perf_counter() - t0
    return ExportResult(onnx_bytes=payload, report=report, seconds=seconds,
                        sha256=hashlib.sha256(payload).hexdigest(), source=source, alternatives=alternatives, hint=hint)
