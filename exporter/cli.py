"""mnist-export: checkpoint -> verified model.onnx (thin: parse, call the library, report)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from infer.atomic import atomic_path
from infer.contract import TOOL_VERSION

EPILOG = """\b
Examples:
  mnist-export model.pt                        # -> model.onnx + model.onnx.json (the proof)
  mnist-export runs/a/model.pt -o a.onnx --data-dir ../shared/data/mnist
  mnist-export model.pt --verify-provider cpu --verify-provider cuda
  mnist-export model.pt --check model.onnx     # re-prove an existing file, write nothing

\b
The proof: ONNX Runtime and PyTorch are run on the full MNIST test set (when
found: --data-dir, else $MNIST_DATA, else the user cache), on all-zeros,
all-ones and random inputs, and at batch sizes 1, 7 and 1000. Every output must
agree within --atol + --rtol*|ref| and the argmax must agree on every test
image, else the command exits 1 and writes no model. Exit codes: 0 verified,
1 verification or export failed, 2 usage error.
"""


def _table(report) -> str:
    rows = [f"{'check':<10} {'provider':<8} {'n':>6}  {'output':<7} {'max abs diff':>12} {'max rel diff':>12} "
            f"{'argmax':>7}  ok"]
    for c in report.checks:
        for name, d in c.outputs.items():
            rows.append(f"{c.name:<10} {c.provider:<8} {c.n:>6}  {name:<7} {d.max_abs_diff:>12.3g} "
                        f"{d.max_rel_diff:>12.3g} {100 * d.argmax_agreement:>6.2f}%  {'yes' if d.within_tolerance else 'NO'}")
        if c.accuracy_ort is not None:
            rows.append(f"{'':<10} {'':<8} {'':>6}  test accuracy: PyTorch {100 * c.accuracy_torch:.2f}%, "
                        f"ONNX Runtime {100 * c.accuracy_ort:.2f}%")
    if report.noise_floor is not None:
        rows.append(f"float32 noise floor (PyTorch float32 vs float64 logits): {report.noise_floor:.3g}")
    return "\n".join(rows)


def _write_report(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="mnist-export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write.  [default: CHECKPOINT with .onnx]")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Verification report (JSON).  [default: OUTPUT.json]")
@click.option("--opset", type=click.IntRange(min=17, max=23), default=18, show_default=True, help="ONNX opset.")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Absolute tolerance (PyTorch float32 vs float64 alone differs by ~2e-5).")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="Relative tolerance.")
@click.option("--verify-provider", "providers", type=click.Choice(["cpu", "cuda"]), multiple=True,
              default=("cpu",), show_default=True, help="ONNX Runtime provider(s) to verify on (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="MNIST folder for the test-set check.")
@click.option("--no-verify", is_flag=True, help="Skip the proof (says so loudly; the model records it).")
@click.option("--check", "check_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Verify this existing ONNX file against CHECKPOINT; write nothing but the report.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="No table on stderr.")
def main(checkpoint, output, report, opset, atol, rtol, providers, data_dir, no_verify, check_path, force, quiet):
    """Export CHECKPOINT (a model.pt from mnist-train) to ONNX and prove ONNX Runtime computes what PyTorch does."""
    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # an inference-only install: say which extra brings them
        raise click.ClickException(f"mnist-export needs the 'train' extra ({', '.join(missing)} not installed): "
                                   "pip install 'mnist-toolkit[train]'")
    from exporter.export import ExportConfig, VerificationError, export_onnx, load_test_set, verify_export
    from infer.engine import ProviderError
    from trainer.checkpoint import CheckpointError, load_checkpoint

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    config = ExportConfig(opset=opset, verify=not no_verify, atol=atol, rtol=rtol, providers=tuple(dict.fromkeys(providers)),
                          data_dir=data_dir)
    if check_path is not None:
        report_path = report or check_path.with_name(check_path.name + ".check.json")
        try:
            ckpt = load_checkpoint(checkpoint)
            result = verify_export(check_path.read_bytes(), ckpt, config, load_test_set(data_dir, deskewed=ckpt.deskew))
        except (CheckpointError, ProviderError) as exc:
            raise click.ClickException(str(exc)) from None
        _write_report(report_path, result.to_dict())
        log(_table(result))
        if not result.passed:
            raise click.ClickException("; ".join(result.failures))
        log(f"{check_path} verified against {checkpoint}; report: {report_path}")
        return

    output = output or checkpoint.with_suffix(".onnx")
    report_path = report or output.with_name(output.name + ".json")
    if output.exists() and not force:
        raise click.UsageError(f"{output} already exists; use --force to overwrite")
    if no_verify:
        click.echo("WARNING: --no-verify: NOTHING WAS CHECKED. This ONNX file has not been compared with PyTorch "
                   "and its metadata says so.", err=True)
    try:
        result = export_onnx(checkpoint, output, config)
    except (CheckpointError, ProviderError) as exc:
        raise click.ClickException(str(exc)) from None
    except VerificationError as exc:
        _write_report(report_path, {"checkpoint": str(checkpoint), "output": None, **exc.report.to_dict()})
        log(_table(exc.report))
        click.echo(f"Error: {exc}; no model was written (report: {report_path})", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: no model was written", err=True)
        sys.exit(130)

    payload = {"checkpoint": str(checkpoint), "output": str(output), "sha256": result.sha256,
               "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    if result.report is not None:
        payload.update(result.report.to_dict())
        log(_table(result.report))
        if not result.report.test_set_checked:
            log(f"note: {result.report.note}")
        _write_report(report_path, payload)
        log(f"verified: wrote {output} ({result.seconds['total']:.1f}s); report: {report_path}")
    else:
        log(f"wrote {output} UNVERIFIED ({result.seconds['total']:.1f}s)")
    click.echo(json.dumps({"model": str(output), "verified": result.report is not None, "sha256": result.sha256}))
