"""mnist-infer: classify folders of digit images with ONNX Runtime (thin: parse, call the library, report).

Imports stay light at module level: `mnist-infer --help` must not load numpy, Pillow or onnxruntime.
"""
from __future__ import annotations

import sys
import time

import click

from infer.contract import TOOL_VERSION

EPILOG = """\b
Examples:
  mnist-infer samples/                          # CSV to stdout, shipped model, best provider
  mnist-infer scans/ photos/a.jpg -o out.csv --provider cpu
  mnist-infer digits/ --format jsonl --top-k 3 --model model.onnx
  mnist-infer labelled/ --report report/        # folders named 0-9 are labels: accuracy,
                                                # per-class precision/recall, confusion matrix
  mnist-infer --doctor                          # ONNX Runtime, providers, CUDA libraries
  mnist-infer /shared/scans --engine ray --ray-address auto -o rows.csv   # on a Ray cluster

\b
Every image gets one row: path, prediction, confidence (and alternatives with
--top-k, the true label when known), and an error column: a file that cannot
be read is an error row and the others are still classified. Images are made
to look like MNIST first (ink polarity, crop, 20x20 box, centre of mass);
--preprocess none only resizes. Model: --model, else ./model.onnx, else the
model shipped with the package. Exit codes: 0 all classified; 1 some file
failed or the provider could not be had; 2 usage error; 130 interrupted.
"""


def _doctor() -> None:
    from infer.doctor import doctor_report

    click.echo(doctor_report())


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="mnist-infer")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--model", "-m", type=click.Path(exists=True, dir_okay=False),
              help="ONNX model from mnist-export.  [default: ./model.onnx, else the shipped model]")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="cuda fails (exit 1) if CUDA cannot be had; auto says what it chose.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write rows here (atomically) instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--top-k", type=click.IntRange(min=1, max=10), default=1, show_default=True,
              help="Also list the next most likely digits.")
@click.option("--preprocess", type=click.Choice(["mnist", "none"]), default="mnist", show_default=True,
              help="mnist: polarity, crop, 20x20, centre of mass; none: plain resize to 28x28.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="CSV of path,label; otherwise a parent folder named 0-9 is the label.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="With labels: write confusion.png, misclassified.png and metrics.json here.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Walk sub-folders.")
@click.option("--batch-size", type=click.IntRange(min=1, max=65536), default=None,
              help="Images per decode task and per model call.  [default: 256; 2048 with --provider cuda]")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (0: decode in this process).  [default: one per core]")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the same job on Ray Data (pip install 'mnist-toolkit[ray]'), locally or on a cluster.")
@click.option("--ray-address", metavar="ADDRESS",
              help="Ray cluster to join (else $RAY_ADDRESS, else a local Ray instance is started).")
@click.option("--strict", is_flag=True, help="Stop at the first file that fails (exit 1, no output file).")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
@click.option("--verbose", "-v", is_flag=True, help="ONNX Runtime's own log, and every skipped file.")
@click.option("--doctor", is_flag=True, help="Print ONNX Runtime's version, providers and CUDA libraries, then exit.")
def main(paths, model, provider, output, fmt, top_k, preprocess, labels_file, report_dir, recursive, batch_size,
         workers, engine, ray_address, strict, quiet, verbose, doctor):
    """Classify every digit image under PATHS (files or folders) with ONNX Runtime; one row per image."""
    if doctor:
        _doctor()
        return
    if not paths:
        raise click.UsageError("give at least one image file or folder (e.g. mnist-infer samples/)")
    t0 = time.perf_counter()
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    if batch_size is None:
        batch_size = 2048 if provider == "cuda" else 256  # a GPU wants large batches; CPUs want early rows

    if engine == "ray":
        from infer.ray_engine import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as exc:
            raise click.UsageError(str(exc)) from None
    elif ray_address:
        raise click.UsageError("--ray-address needs --engine ray")
    try:
        _run(paths, model, provider, output, fmt, top_k, preprocess, labels_file, report_dir, recursive, batch_size,
             workers, engine, ray_address, strict, verbose, log, t0)
    except KeyboardInterrupt:
        click.echo("interrupted: no output file was left behind", err=True)
        sys.exit(130)


def _run(paths, model, provider, output, fmt, top_k, preprocess, labels_file, report_dir, recursive, batch_size,
         workers, engine, ray_address, strict, verbose, log, t0):
    import contextlib

    from infer.atomic import atomic_path
    from infer.contract import LABELS
    from infer.engine import Classifier, ModelError, ProviderError, default_model_path
    from infer.evaluate import Evaluation, LabelsError, file_labeller, folder_labeller
    from infer.output import RowWriter
    from infer.pipeline import classify_paths

    try:
        label_of = file_labeller(labels_file, LABELS) if labels_file else folder_labeller(LABELS)
    except LabelsError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from None
    used: list = []

    def make_classifier():
        # Called by classify_paths once decoding has started: loading ONNX Runtime overlaps with it.
        try:
            classifier = Classifier(model, provider=provider, threads=1, verbose=verbose)
        except (ModelError, ProviderError) as exc:
            raise click.ClickException(str(exc)) from None
        if provider == "auto":
            log(f"provider: {classifier.provider} (auto)")
        used.append(classifier)
        return classifier

    evaluation = Evaluation(LABELS)
    skipped: list[str] = []

    def on_skip(item):
        skipped.append(item.path)
        if verbose:
            log(f"skipped {item.path}: {item.skipped}")

    counts = {label: 0 for label in LABELS}
    errors = n = 0
    with contextlib.ExitStack() as stack:
        if output:
            tmp = stack.enter_context(atomic_path(output))
            stream = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        else:
            stream = sys.stdout
        writer = RowWriter(stream, fmt, top_k)
        common = dict(mode=preprocess, top_k=top_k, batch_size=batch_size, recursive=recursive, label_of=label_of,
                      keep_pixels=report_dir is not None, on_skip=on_skip)
        if engine == "ray":
            from infer.ray_engine import classify_paths_ray

            model_path = str(model or default_model_path())
            try:  # refuse a bad model here, before starting Ray; CUDA is the actors' business
                Classifier(model_path, provider="cpu", threads=1)
            except ModelError as exc:
                raise click.ClickException(str(exc)) from None
            predictions = classify_paths_ray(paths, model_path, labels=list(LABELS), provider=provider,
                                             ray_address=ray_address, **common)
        else:
            predictions = classify_paths(paths, make_classifier, workers=workers, **common)
        for p in _guarded(predictions):
            writer.write(p)
            n += 1
            if p.error is not None:
                errors += 1
                log(f"error: {p.path}: {p.error}")
                if strict:
                    raise click.ClickException(f"{p.path}: {p.error} (--strict)")
            else:
                counts[p.label] += 1
                evaluation.add(p)
        stream.flush()
        # leaving the stack closes the file, then renames it onto --output (only on success)

    seconds = time.perf_counter() - t0
    where = f" on {used[0].provider}" if used else (" on ray" if engine == "ray" else "")
    log(f"{n} images: {n - errors} classified, {errors} failed, {len(skipped)} skipped (not images) "
        f"in {seconds:.2f}s ({n / seconds:,.0f} images/s){where}")
    if n - errors:
        log("per digit: " + "  ".join(f"{k}:{v}" for k, v in counts.items()))
    if evaluation.total:
        log(evaluation.table())
    if report_dir:
        if evaluation.total:
            written = evaluation.write_report(report_dir)
            log("report: " + ", ".join(str(p) for p in written))
        else:
            log("report: no labelled images (folders named 0-9 or --labels), nothing written")
    if n == 0:
        raise click.ClickException("no images found under " + ", ".join(paths))
    if errors:
        sys.exit(1)



def _guarded(predictions):
    """Domain failures raised while streaming (a Ray job that failed) become one clear line."""
    from infer.ray_engine import RayJobError

    try:
        yield from predictions
    except RayJobError as exc:
        raise click.ClickException(str(exc)) from None
