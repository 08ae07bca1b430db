"""mnist-export: checkpoint -> verified model.onnx (thin: parse, call the library, report)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from infer.contract import TOOL_VERSION
from trainer.clitext import EscapingCommand, check_named_data, say, shown

# trainer.model.ACTIVATIONS, spelled out so that --help does not import torch (a test keeps them equal).
ACTIVATION_CHOICES = ("sigmoid", "relu", "tanh")

EPILOG = """\b
Examples:
  mnist-export model.pt                        # -> model.onnx + model.onnx.json (the proof)
  mnist-export runs/a/model.pt -o a.onnx --data-dir ../shared/data/mnist
  mnist-export model.pt --verify-provider cpu --verify-provider cuda
  mnist-export model.pt --check model.onnx     # re-prove an existing file, write nothing but a report
  mnist-export mine.pt                         # your own MLP: torch.save(model) or its state_dict
  mnist-export mine.pt --activation relu --input-scale mnist

\b
CHECKPOINT: mnist-train's model.pt, or a PyTorch MLP saved elsewhere: a bare
state_dict (any key names), a training-loop dict holding one ("model_state_dict",
"state_dict", "model", ...), a whole pickled module (read without running any of
it), or a .safetensors state_dict. Its Linear layers must chain 784 -> ... -> 10;
what the weights cannot tell comes from --activation and --input-scale, and the
report scores the other choices on 1,000 test digits.

\b
The proof: ONNX Runtime and PyTorch are run on the full MNIST test set (when
found: --data-dir, else $MNIST_DATA, else the user cache), on all-zeros,
all-ones and random inputs, and at batch sizes 1, 7 and 1000. Every output must
agree within --atol + --rtol*|ref| and the argmax must agree on every test
image, else the command exits 1 and writes no model. The model and its report
are written together or not at all; existing files need --force.
Exit codes: 0 written (stdout: one JSON line; "verified" is true only when every
check ran, the test set included), 1 verification or export failed, 2 usage error.
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


def _alternatives_table(alternatives) -> str:
    """Accuracy per activation (rows) and input scaling (columns), the given reading marked with *."""
    from exporter.foreign import PLAUSIBLE_SCALES, SCORE_DIGITS

    order = {s: i for i, s in enumerate(PLAUSIBLE_SCALES)}
    scales = sorted({a.input_scale for a in alternatives}, key=lambda s: order.get(s, len(order)))
    activations = sorted({a.activation for a in alternatives}, key=ACTIVATION_CHOICES.index)
    cell = {(a.activation, a.input_scale): a for a in alternatives}
    rows = [f"accuracy on {SCORE_DIGITS} test digits by activation and --input-scale (* as given):",
            f"{'':<9}" + "".join(f"{s.name:>10}" for s in scales)]
    for act in activations:
        rows.append(f"{act:<9}" + "".join(
            f"{100 * cell[act, s].accuracy:>8.1f}%{'*' if cell[act, s].given else ' '}" for s in scales))
    return "\n".join(rows)


def _sniff(path: Path):
    from infer.filekind import sniff

    try:
        return sniff(path)
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror or exc}") from None


def _provider_message(exc) -> str:
    """A ProviderError's one line in mnist-export's terms (its own option to verify on the CPU)."""
    return exc.message("leave out --verify-provider cuda to verify on the CPU alone")


def _report_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def _refuse_clashes(checkpoint: Path, outputs: dict[str, Path], force: bool) -> None:
    """Usage errors before any work: an output that is an input or another output; an existing output without --force."""
    from exporter.outputs import same_file

    named = list(outputs.items())
    for flag, path in named:
        if same_file(path, checkpoint):
            raise click.UsageError(f"{flag} {path} is the input checkpoint {checkpoint}: choose another name")
    for i, (flag, path) in enumerate(named):
        for other_flag, other in named[i + 1 :]:
            if same_file(path, other):
                raise click.UsageError(f"{flag} and {other_flag} name the same file {path}")
    existing = [str(p) for _, p in named if p.exists()]
    if existing and not force:
        raise click.UsageError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                               "use --force to overwrite")


def _commit(files: dict[Path, bytes]) -> None:
    from exporter.outputs import commit_files

    try:
        commit_files(files)
    except OSError as exc:
        where = exc.filename or ", ".join(map(str, files))
        raise click.ClickException(f"could not write {where}: {exc.strerror or exc}; nothing was written") from None


def _one_line(failures: list[str], report_path: Path) -> str:
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"verification failed: {failures[0]}{more}; report: {report_path}"


@click.command(cls=EscapingCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="mnist-export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write.  [default: CHECKPOINT with .onnx]")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Verification report (JSON).  [default: OUTPUT.json; with --check: MODEL.check.json]")
@click.option("--activation", type=click.Choice(ACTIVATION_CHOICES),
              help="For a model made elsewhere: the activation between its layers.  "
                   "[default: what a pickled module's tree shows, else sigmoid (the seed's)]")
@click.option("--input-scale", "input_scale", metavar="unit|mnist|MEAN,STD",
              help="For a model made elsewhere: the pixels it was trained on. unit: ToTensor() alone, [0,1]; "
                   "mnist: Normalize((0.1307,), (0.3081,)); MEAN,STD: Normalize((MEAN,), (STD,)).  [default: unit]")
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
@click.option("--force", is_flag=True, help="Overwrite existing output files (the model and its report).")
@click.option("--quiet", "-q", is_flag=True, help="No table on stderr.")
def main(checkpoint, output, report, activation, input_scale, opset, atol, rtol, providers, data_dir, no_verify,
         check_path, force, quiet):
    """Export CHECKPOINT (a model.pt from mnist-train, or your own PyTorch MLP) to ONNX and prove ONNX Runtime
    computes what PyTorch does."""
    missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:  # an inference-only install: say which extra brings them
        raise click.ClickException(f"mnist-export needs the 'train' extra ({', '.join(missing)} not installed): "
                                   "pip install 'mnist-toolkit[train]'")
    from exporter.export import ExportConfig, VerificationError, check_status, export_onnx
    from exporter.foreign import ImportOptions, InputScale
    from infer.engine import ProviderError
    from trainer.checkpoint import CheckpointError

    log = (lambda msg: None) if quiet else say
    try:
        scale = InputScale.parse(input_scale) if input_scale is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-scale") from None
    check_named_data(data_dir, env=not no_verify or check_path is not None)  # $MNIST_DATA only for a proof
    options = ImportOptions(activation=activation, input_scale=scale)
    config = ExportConfig(opset=opset, verify=not no_verify, atol=atol, rtol=rtol, providers=tuple(dict.fromkeys(providers)),
                          data_dir=data_dir)
    kind = _sniff(checkpoint)
    if not kind.pytorch:
        from exporter.foreign import refusal

        raise click.ClickException(refusal(kind, checkpoint))
    if check_path is not None:
        return _check(checkpoint, check_path, report, options, config, force, log)

    output = output or checkpoint.with_suffix(".onnx")
    report_path = report or output.with_name(output.name + ".json")
    _refuse_clashes(checkpoint, {"--output": output, "--report": report_path}, force)
    try:
        source = _load(checkpoint, options, log)
        if no_verify:
            click.echo("WARNING: --no-verify: NOTHING WAS CHECKED. This ONNX file has not been compared with PyTorch "
                       "and its metadata says so.", err=True)
        result = export_onnx(source, config)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    except ProviderError as exc:
        raise click.ClickException(_provider_message(exc)) from None
    except VerificationError as exc:
        payload = {"checkpoint": shown(checkpoint), "output": None, "verified": False,
                   "check_status": check_status(exc.report)[1], **exc.report.to_dict()}
        _commit({report_path: _report_bytes(payload)})
        log(_table(exc.report))
        say(f"Error: {_one_line(exc.report.failures, report_path)}; no model was written")
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)

    payload = result.to_dict(checkpoint, output)
    _commit({output: result.onnx_bytes, report_path: _report_bytes(payload)})
    if result.report is not None:
        log(_table(result.report))
        if not result.report.test_set_checked:
            log(f"note: {result.report.note}")
    if result.alternatives:
        log(_alternatives_table(result.alternatives))
    elif source.imported and result.report is not None:
        log("note: the activation and input scaling were not scored (MNIST test set not found)")
    if result.hint:
        say(f"hint: {result.hint}")
    verified, status = check_status(result.report)
    if result.report is not None:
        log(f"{'verified' if verified else 'partly verified'}: wrote {output} ({result.seconds['total']:.1f}s); "
            f"report: {report_path}")
    else:
        log(f"wrote {output} UNVERIFIED ({result.seconds['total']:.1f}s); report: {report_path}")
    test = next((c for c in (result.report.checks if result.report else []) if c.name == "test set"), None)
    click.echo(json.dumps({
        "model": shown(output), "report": shown(report_path), "sha256": result.sha256,
        "source_format": source.format["kind"], "verified": verified, "check_status": status,
        "test_accuracy": test.accuracy_ort if test else None, "hint": result.hint,
    }))


def _load(checkpoint: Path, options, log):
    from exporter.foreign import load_source

    source = load_source(checkpoint, options)
    if source.imported:
        fmt = source.format
        log(f"imported {fmt['kind']} ({fmt['container']}): Linear layers {', '.join(fmt['layers'])}; "
            f"{'-'.join(map(str, source.checkpoint.config.sizes))} {fmt['activation']} MLP")
    for note in source.notes:
        log(f"note: {note}")
    return source


def _check(checkpoint: Path, check_path: Path, report: Path | None, options, config, force: bool, log) -> None:
    """--check: the recorded source sha256 first, then the proof against the model file as it is."""
    import onnx

    from exporter.export import check_status, load_test_set, verify_export
    from exporter.foreign import ImportOptions, InputScale
    from infer import contract as C
    from infer.engine import ProviderError
    from trainer.checkpoint import CheckpointError, file_sha256

    kind = _sniff(check_path)
    if kind.name != "onnx":
        raise click.ClickException(f"{check_path}: {kind.what}; --check takes the ONNX file exported from {checkpoint}")
    report_path = report or check_path.with_name(check_path.name + ".check.json")
    _refuse_clashes(checkpoint, {"--report": report_path, "--check": check_path}, force=True)
    if report_path.exists() and not force:
        raise click.UsageError(f"{report_path} already exists; use --force to overwrite")
    model = onnx.load(str(check_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    recorded, actual = meta.get(C.META_SOURCE_SHA256), file_sha256(checkpoint)
    if recorded and recorded != actual:
        raise click.ClickException(
            f"{check_path} was exported from another checkpoint: its {C.META_SOURCE_SHA256} is {recorded[:12]}..., "
            f"{checkpoint} has sha256 {actual[:12]}...; check a model against the checkpoint it was exported from")
    if not recorded:
        log(f"note: {check_path} records no source checkpoint (not made by mnist-export): comparing outputs only")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([C.INPUT_NAME], list(C.OUTPUT_NAMES)):
        raise click.ClickException(
            f"{check_path}: inputs {names[0]} and outputs {names[1]} are not mnist-export's "
            f"({C.INPUT_NAME} -> {', '.join(C.OUTPUT_NAMES)}); --check re-proves files mnist-export made")
    try:
        from exporter.foreign import load_source

        source = load_source(checkpoint, options)
        recorded_config = json.loads(meta.get(C.META_MODEL_CONFIG, "{}"))
        if source.imported and options == ImportOptions() and recorded_config:
            # The guesses the model was exported with, read back: the proof compares like with like.
            norm = recorded_config.get("normalisation", {})
            options = ImportOptions(activation=recorded_config.get("activation"),
                                    input_scale=InputScale(float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))))
            source = load_source(checkpoint, options)
            log(f"note: reading {checkpoint} as {check_path} records: activation {options.activation}, "
                f"--input-scale {options.input_scale.name}")
        ckpt = source.checkpoint
        result = verify_export(check_path.read_bytes(), ckpt, config, load_test_set(config.data_dir, deskewed=ckpt.deskew))
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    except ProviderError as exc:
        raise click.ClickException(_provider_message(exc)) from None
    verified, status = check_status(result)
    payload = {"checkpoint": shown(checkpoint), "model": shown(check_path), "verified": verified,
               "check_status": status, **result.to_dict()}
    _commit({report_path: _report_bytes(payload)})
    log(_table(result))
    if not result.passed:
        raise click.ClickException(_one_line(result.failures, report_path))
    log(f"{check_path} {'verified' if verified else 'partly verified'} against {checkpoint}; report: {report_path}")
    test = next((c for c in result.checks if c.name == "test set"), None)
    # The fields of an export's line, for the file checked: scripts read both the same way.
    click.echo(json.dumps({"model": shown(check_path), "checkpoint": shown(checkpoint), "report": shown(report_path),
                           "sha256": file_sha256(check_path), "source_format": source.format["kind"],
                           "verified": verified, "check_status": status,
                           "test_accuracy": test.accuracy_ort if test else None, "hint": None}))
