"""mnist-infer: classify folders of digit images with ONNX Runtime (thin: parse, call the library, report).

Imports stay light at module level: `mnist-infer --help` must not load numpy, Pillow or onnxruntime.
"""
from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from infer.contract import DEFAULT_MIN_CONFIDENCE, TOOL_VERSION

EPILOG = f"""\b
Examples:
  mnist-infer samples/                          # CSV to stdout, shipped model, best provider
  mnist-infer samples/ -o out/rows.csv          # to a file (out/ is created)
  mnist-infer scans/ -o rows.csv --resume       # after Ctrl-C: continue from rows.csv.partial
  find scans -name '*.png' | mnist-infer - --format jsonl --top-k 3
  mnist-infer labelled/ --report report/        # folders named 0-9 are labels: accuracy,
                                                # per-class precision/recall, confusion matrix
  mnist-infer forms/ --multi-digit              # "17" written side by side is read as 17
  mnist-infer --doctor                          # ONNX Runtime, providers, CUDA libraries
  mnist-infer /shared/scans --engine ray --ray-address auto -o rows.csv   # on a Ray cluster

\b
Every image gets one row: path, prediction, confidence, [top_k], [digits],
label (the true label when known), warning and error. A file that cannot be
read (empty, not an image, over 150 megapixels, no digit found) is an error
row and the others are still classified; warning codes (lines-removed,
marks-removed, thin-strokes, faint-ink, several-digits, low-confidence) say
which rows to check by hand. Output is UTF-8: bytes of a file name that are not UTF-8 are
written as \\xNN and a backslash as \\\\ (--resume and --labels read them back).
With -o, rows go to FILE.partial, renamed to FILE when the run completes; a
run that stops early (Ctrl-C, a killed worker, a full disk) keeps the rows done
so far there, and --resume continues it. Model: --model, else ./model.onnx,
else the model shipped with the package (stderr says which).

\b
Exit codes: 0 all classified; 1 some file failed, or the run stopped early
(rows kept in FILE.partial), or the provider could not be had; 2 usage error;
130 interrupted (Ctrl-C; 143 for SIGTERM); 141 stdout closed early
(`mnist-infer DIR | head`), as for any Unix tool stopped by SIGPIPE.
"""


class _Terminated(BaseException):
    """SIGTERM, handled like Ctrl-C: keep the rows done so far."""


def _doctor() -> None:
    from infer.doctor import doctor_report

    click.echo(doctor_report())


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="mnist-infer")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--files-from", "files_from", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
              help="Read paths from FILE, one per line ('-': stdin; also: give '-' as a PATH).")
@click.option("--model", "-m", type=click.Path(exists=True, dir_okay=False),
              help="ONNX model from mnist-export.  [default: ./model.onnx, else the shipped model]")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="cuda fails (exit 1) if CUDA cannot be had; auto says what it chose.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write rows to FILE (via FILE.partial, renamed when complete) instead of stdout ('-').")
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing --output (and drop its .partial).")
@click.option("--resume", is_flag=True,
              help="Continue into --output: keep the rows of FILE.partial (or FILE) and classify only the "
                   "paths not in it; the same final file as one uninterrupted run.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="Rows as CSV or JSON Lines.  [default: from --output's extension (.jsonl, .ndjson, .json: "
                   "jsonl), else csv]")
@click.option("--top-k", type=click.IntRange(min=1, max=10), default=1, show_default=True,
              help="With k > 1, a top_k column: the k most likely digits and their probabilities.")
@click.option("--preprocess", type=click.Choice(["mnist", "none"]), default="mnist", show_default=True,
              help="mnist: bring each image to MNIST's layout (README: Preprocessing); none: plain resize to 28x28.")
@click.option("--multi-digit", is_flag=True,
              help="Read several digits side by side as a number: prediction '17', confidence the product of "
                   "the digits', and a digits column. Without it such images carry the several-digits warning.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=DEFAULT_MIN_CONFIDENCE, show_default=True,
              help="Rows with a lower confidence carry the low-confidence warning.")
@click.option("--input-scale", type=click.Choice(["1", "255"]),
              help="A model made elsewhere reads pixels in [0,1] or [0,255].  [default: what its metadata says, else 1]")
@click.option("--ink", type=click.Choice(["white", "black"]),
              help="A model made elsewhere reads white ink on black (MNIST) or black on white.  "
                   "[default: what its metadata says, else white]")
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
              help="Ray cluster to join: host:port or auto (else $RAY_ADDRESS, else a local Ray instance).")
@click.option("--ray-timeout", type=click.FloatRange(min=1), default=60, show_default=True, metavar="SECONDS",
              help="Give up joining the Ray cluster after this long.")
@click.option("--strict", is_flag=True,
              help="Stop at the first file that fails (exit 1; the rows before it are kept in FILE.partial).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, model line or summary on stderr.")
@click.option("--verbose", "-v", is_flag=True, help="ONNX Runtime's and Ray's own logs, every skipped file, tracebacks.")
@click.option("--doctor", is_flag=True, help="Print ONNX Runtime's version, providers and CUDA libraries, then exit.")
def main(paths, files_from, model, provider, output, force, resume, fmt, top_k, preprocess, multi_digit,
         min_confidence, input_scale, ink, labels_file, report_dir, recursive, batch_size, workers, engine,
         ray_address, ray_timeout, strict, quiet, verbose, doctor):
    """Classify every digit image under PATHS (files or folders) with ONNX Runtime; one row per image."""
    if doctor:
        _doctor()
        return
    if not paths and not files_from:
        raise click.UsageError("give at least one image file or folder (e.g. mnist-infer samples/), "
                               "or '-' to read paths from stdin")
    if output == "-":
        output = None  # stdout, as for most Unix tools
    fmt = _output_format(fmt, output)
    if resume and force:
        raise click.UsageError("--resume continues an output, --force replaces it: choose one")
    if resume and not output:
        raise click.UsageError("--resume needs --output FILE (the run to continue)")
    if report_dir is not None and not report_dir.strip():
        raise click.BadParameter("give a folder for the report", param_hint="--report")
    report_made = _check_report_dir(report_dir) if report_dir is not None else []
    if engine == "ray":
        from infer.ray_engine import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as exc:
            raise click.UsageError(str(exc)) from None
    elif ray_address:
        raise click.UsageError("--ray-address needs --engine ray")
    if batch_size is None:
        batch_size = 2048 if provider == "cuda" else 256  # a GPU wants large batches; CPUs want early rows
    classifier_kwargs = {}
    if input_scale is not None:
        classifier_kwargs["input_scale"] = int(input_scale)
    if ink is not None:
        classifier_kwargs["ink"] = ink

    from infer.pipeline import ClassifyOptions

    options = ClassifyOptions(mode=preprocess, top_k=top_k, batch_size=batch_size, workers=workers,
                              recursive=recursive, multi_digit=multi_digit, min_confidence=min_confidence,
                              keep_pixels=report_dir is not None)
    run = _Run(options=options, model=model, provider=provider, classifier_kwargs=classifier_kwargs,
               quiet=quiet, verbose=verbose)
    run.report_made = report_made
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = run.execute(paths, files_from, output, fmt, force, resume, labels_file, report_dir, engine,
                           ray_address, ray_timeout, strict)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code:
        sys.exit(code)


def _on_sigterm(signum, frame):
    raise _Terminated()


JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
RESUME_SAMPLES = 4  # rows of an earlier run read again before --resume adds to it


def _output_format(fmt: str | None, output: str | None) -> str:
    """--format, else what --output's extension says, else csv; a format against the extension is an error."""
    suffix = Path(output).suffix.lower() if output else ""
    implied = "jsonl" if suffix in JSONL_SUFFIXES else "csv" if suffix == ".csv" else None
    if fmt and implied and fmt != implied:
        raise click.UsageError(f"--format {fmt} writes {fmt.upper()}, but --output {output} says {implied}: "
                               "change one of them")
    return fmt or implied or "csv"


def _folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be made (or used) as a folder to write in, or None: a file in the way, or an
    ancestor that cannot hold it. Only looks; makes nothing."""
    here = folder
    while not os.path.lexists(here):
        if here.parent == here:
            break
        here = here.parent
    if os.path.lexists(here) and not here.is_dir():
        return f"{here} is a file, not a folder"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} is not writable"
    return None


def _check_report_dir(report_dir: str) -> list[Path]:
    """--report's folder, checked before any image is read: one line now, not a traceback at the end.
    What can be made is made now; returns the folders made (innermost first), for removal if the run
    writes no report in them."""
    folder = Path(report_dir)
    problem = _folder_problem(folder)
    made = []
    if problem is None:
        made = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        raise click.BadParameter(f"cannot write the report in {report_dir}: {problem}", param_hint="--report")
    return made


def _path_source(paths, files_from):
    """The PATHS arguments, with '-' (and --files-from) expanded to the paths they list, lazily."""
    from infer.files import read_path_list

    stdin_used = False
    for path in paths:
        if path == "-":
            if not stdin_used:
                stdin_used = True
                yield from read_path_list(sys.stdin.buffer)
        else:
            yield path
    if files_from == "-":
        if not stdin_used:
            yield from read_path_list(sys.stdin.buffer)
    elif files_from:
        try:
            with open(files_from, "rb") as f:
                yield from read_path_list(f)
        except OSError as exc:
            raise click.BadParameter(f"{files_from}: {exc.strerror}", param_hint="--files-from") from None


class _Stop(Exception):
    """The run stops early (a failure after rows were written): what to say, and the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Sink:
    """Where rows go: stdout, or --output through FILE.partial, renamed onto FILE when the run completes."""

    def __init__(self, output: str | None, fmt: str, top_k: int, multi_digit: bool):
        from infer.output import columns

        self.fmt, self.top_k, self.multi_digit = fmt, top_k, multi_digit
        self.columns = columns(fmt, top_k, multi_digit)
        # A symlink as --output is written through: its target gets the rows, the link stays.
        self.final = Path(os.path.realpath(output)) if output and os.path.islink(output) else \
            Path(output) if output else None
        self.partial = self.final.with_name(self.final.name + ".partial") if output else None
        self.stream = None
        self.writer = None
        self.kept = 0  # rows of an earlier run, resumed
        self.source = None  # the file they were read from
        self.written = 0  # rows written by this run

    def open(self, force: bool, resume: bool, on_row, check=None) -> set[str]:
        """Prepare the output; with resume, feed the rows already there to on_row and return their paths
        (after `check(self)`, which may refuse them, before anything is written)."""
        from infer.output import RowWriter

        done: set[str] = set()
        if self.final is None:
            self.stream = sys.stdout.buffer
            self.writer = RowWriter(self.stream, self.fmt, self.top_k, self.multi_digit)
            return done
        final, partial = self.final, self.partial
        if final.is_dir():
            raise click.BadParameter(f"{final} is a folder", param_hint="--output")
        header = True
        if resume and (partial.exists() or final.exists()):
            source = partial if partial.exists() else final
            done, valid = self._read(source, on_row)
            if check is not None and self.kept:
                check(self)
            try:
                if source == final:
                    import shutil

                    shutil.copyfile(final, partial)
                self.stream = open(partial, "r+b")
                self.stream.truncate(valid)  # a row cut short by a killed run goes; it is redone
                self.stream.seek(valid)
            except OSError as exc:
                raise click.ClickException(f"cannot continue {partial}: {exc.strerror or exc}") from None
            header = self.kept == 0
        else:
            if not force:
                if partial.exists():
                    raise click.UsageError(f"{partial} holds the rows of a run that stopped early: --resume "
                                           "continues it, --force starts over")
                if final.exists():
                    raise click.UsageError(f"{final} exists: --force overwrites it, --resume adds the files "
                                           "not in it")
            problem = _folder_problem(final.parent)
            if problem:
                raise click.BadParameter(f"cannot write {final}: {problem}", param_hint="--output")
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                self.stream = open(partial, "wb")
            except OSError as exc:  # before any image is read: a usage error, as a file in the way is
                raise click.BadParameter(f"cannot write {partial}: {exc.strerror or exc}", param_hint="--output") \
                    from None
        self.writer = RowWriter(self.stream, self.fmt, self.top_k, self.multi_digit, header=header)
        return done

    def _read(self, source: Path, on_row) -> tuple[set[str], int]:
        from infer.output import OutputError, read_rows, unescape_path

        done: set[str] = set()

        def take(row: dict) -> None:
            done.add(os.path.normpath(unescape_path(row["path"])))
            on_row(row)

        try:
            with open(source, "rb") as f:
                found = read_rows(f, self.fmt, take)
        except OutputError as exc:
            raise click.UsageError(f"--resume: {source}: {exc}") from None
        except OSError as exc:
            raise click.ClickException(f"--resume: cannot read {source}: {exc.strerror or exc}") from None
        if found.rows and found.columns != self.columns:
            raise click.UsageError(
                f"--resume: {source} has the columns {','.join(found.columns)}; this run writes "
                f"{','.join(self.columns)}: use the options of the first run (--format, --top-k, --multi-digit), "
                "or --force to start over")
        self.kept, self.source = found.rows, source
        return done, found.valid_bytes if found.rows else 0

    def write(self, batch, stop: int | None = None) -> None:
        try:
            self.written += self.writer.write(batch, stop)
        except BrokenPipeError:
            raise
        except OSError as exc:  # a full disk, a quota, an I/O error: the rows written so far stay
            raise _Stop(f"cannot write {self.partial or 'stdout'}: {exc.strerror or exc}", 1) from None

    def commit(self) -> None:
        if self.final is None:
            self.stream.flush()
            return
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.partial, self.final)

    def abandon(self) -> str | None:
        """The run stopped early: keep FILE.partial if it holds rows (say so), else remove it."""
        if self.final is None or self.stream is None:
            return None
        try:
            self.stream.close()
        except OSError:
            pass
        rows = self.kept + self.written
        if rows == 0 or (self.source == self.final and self.written == 0):  # nothing new beside FILE
            try:
                self.partial.unlink()
            except OSError:
                pass
            return None
        noun = "row" if rows == 1 else "rows"
        return f"{rows} {noun} kept in {self.partial}; the same command with --resume continues from there"


class _KeptRows:
    """What an earlier run's rows say, read back by --resume: the first row this run would not have
    written so (`row_check`), and a few classified rows to read again; each row then goes on to `on_row`."""

    def __init__(self, on_row, row_check):
        self.on_row, self.row_check = on_row, row_check
        self.problem: str | None = None
        self.samples: list[dict] = []

    def add(self, row: dict) -> None:
        if self.problem is None:
            self.problem = self.row_check(row)
        if len(self.samples) < RESUME_SAMPLES and row.get("error") is None and row.get("confidence"):
            self.samples.append(row)
        self.on_row(row)


class _Tally:
    """What the summary says: counts, warnings, the digits predicted, and the labelled evaluation."""

    def __init__(self, labels, evaluation):
        import numpy as np

        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}
        self.n = self.errors = self.numbers = 0
        self.per_digit = np.zeros(len(labels), np.int64)
        self.warnings: dict[str, int] = {}
        self.evaluation = evaluation
        self.last = None  # (prediction, confidence) of the last row, for a one-image summary

    def add_batch(self, batch, stop: int) -> None:
        import numpy as np

        from infer.contract import WARNING_SEPARATOR

        counts = batch.counts[:stop]
        self.n += stop
        self.errors += int((counts == 0).sum())
        self.numbers += int((counts > 1).sum())
        single = counts == 1
        self.per_digit += np.bincount(batch.top_index[:stop, 0][single].astype(np.int64), minlength=len(self.labels))
        for joined in filter(None, batch.warning[:stop]):
            for code in joined.split(WARNING_SEPARATOR):
                self.warnings[code] = self.warnings.get(code, 0) + 1
        self.evaluation.add_batch(batch, stop)
        if stop:
            self.last = (batch.prediction[stop - 1], float(batch.confidence[stop - 1]))

    def add_row(self, row: dict) -> None:
        """A row read back from an earlier run's output (--resume)."""
        from infer.contract import WARNING_SEPARATOR

        self.n += 1
        prediction = row.get("prediction")
        if row.get("error") is not None or prediction is None:
            self.errors += 1
            return
        if prediction in self.index:
            self.per_digit[self.index[prediction]] += 1
        else:
            self.numbers += 1
        for code in (row.get("warning") or "").split(WARNING_SEPARATOR):
            if code:
                self.warnings[code] = self.warnings.get(code, 0) + 1
        confidence = float(row["confidence"]) if row.get("confidence") else None
        self.evaluation.add(row["path"], row.get("label"), prediction, confidence)
        self.last = (prediction, confidence)


class _Run:
    def __init__(self, options, model, provider, classifier_kwargs, quiet, verbose):
        self.options, self.model, self.provider = options, model, provider
        self.classifier_kwargs, self.quiet, self.verbose = classifier_kwargs, quiet, verbose
        self.bar = None
        self.tty = sys.stderr.isatty()  # asked now: the Ray engine filters fd 2 through a pipe while it runs
        self.used = None  # the Classifier of the local engine, or the providers the Ray actors used
        self.where = ""
        self.report_made: list[Path] = []  # folders made for --report

    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            click.echo(msg, err=True)

    def _model_line(self, classifier) -> None:
        path = getattr(classifier, "path", None) or classifier.info.path
        if self.model:
            origin = "--model"
        elif Path("model.onnx").is_file():
            origin = "found in the current folder; --model to choose"
        else:
            origin = "shipped with mnist-toolkit; --model to choose"
        self.log(f"model: {path} ({origin})")
        for note in getattr(classifier, "notes", ()) or ():
            self.log(f"note: {note}")

    def make_classifier(self, provider: str):
        from infer.engine import Classifier, LayoutConflict, ModelError, ProviderError, default_model_path

        try:
            # The path chosen here: the model line says where it came from (and -q silences it).
            classifier = Classifier(self.model or default_model_path(), provider=provider, threads=1,
                                    verbose=self.verbose, **self.classifier_kwargs)
        except LayoutConflict as exc:
            raise click.UsageError(str(exc)) from None
        except ProviderError as exc:
            raise click.ClickException(exc.message("use --provider cpu or auto to run on the CPU")) from None
        except ModelError as exc:
            raise click.ClickException(str(exc)) from None
        except TypeError:
            if not self.classifier_kwargs:
                raise
            raise click.ClickException("--input-scale and --ink need an infer.engine.Classifier that takes "
                                       "input_scale= and ink= (this one does not)") from None
        return classifier

    def _local_classifier(self):
        # Called by the pipeline once decoding has started: loading ONNX Runtime overlaps with it.
        classifier = self.make_classifier(self.provider)
        self._model_line(classifier)
        if self.provider == "auto":
            self.log(f"provider: {classifier.provider} (auto)")
        self.where = f" on {classifier.provider}"
        return classifier

    def _row_checker(self, label_of):
        """A check of each kept row against this run's --min-confidence and labels: the rows a resumed
        run keeps must be what it would write itself."""
        from infer.contract import WARN_LOW_CONFIDENCE, WARNING_SEPARATOR
        from infer.output import unescape_path

        threshold = self.options.min_confidence

        def check(row: dict) -> str | None:
            if row.get("error") is None and row.get("confidence"):
                confidence = float(row["confidence"])
                flagged = WARN_LOW_CONFIDENCE in (row.get("warning") or "").split(WARNING_SEPARATOR)
                if abs(confidence - threshold) > 1e-6 and flagged != (confidence < threshold):
                    return (f"{row['path']} has confidence {confidence:.6f} {'with' if flagged else 'without'} "
                            f"low-confidence: it was written with another --min-confidence than {threshold:g}")
            label = label_of(unescape_path(row["path"]))
            if label != row.get("label"):
                return (f"{row['path']} is labelled {row.get('label') or 'nothing'} there and {label or 'nothing'} "
                        "now: it was written with other labels (--labels)")
            return None

        return check

    def _check_resumed(self, sink: _Sink, kept: _KeptRows) -> None:
        """--resume adds rows to an earlier run's: refuse when that run used another model or options
        that change the rows (--preprocess, --min-confidence, --ink...). A few of its rows are read
        again, here, on the CPU, and must come out the same (the prediction, the warnings, and the
        confidence within 0.002: CPU and CUDA kernels differ in the last digits). Rows whose files
        are gone or no longer read are not evidence either way."""
        import dataclasses

        from infer.output import unescape_path
        from infer.pipeline import classify_batches

        if kept.problem:
            raise click.UsageError(f"--resume: {sink.source}: {kept.problem}; use the first run's options, or "
                                   "--force to start over")
        paths = [unescape_path(row["path"]) for row in kept.samples]
        present = [p for p in paths if os.path.isfile(p)]
        if not present:
            return
        options = dataclasses.replace(self.options, top_k=1, workers=0, keep_pixels=False)
        now = {p.path: p for batch in classify_batches(present, self.make_classifier("cpu"), options, label_of=None)
               for p in batch.predictions(options.multi_digit)}
        for row, path in zip(kept.samples, paths):
            p = now.get(path)
            if p is None or p.error:
                continue
            before = float(row["confidence"])
            if p.prediction != row["prediction"] or abs(p.confidence - before) > 0.002 \
                    or p.warning != (row.get("warning") or ""):
                raise click.UsageError(
                    f"--resume: {sink.source} was written with another model or other options: {row['path']} "
                    f"reads as {row['prediction']} ({before:.3f}{', ' + row['warning'] if row.get('warning') else ''}) "
                    f"there and {p.prediction} ({p.confidence:.3f}{', ' + p.warning if p.warning else ''}) now. "
                    "Use the first run's --model and options, or --force to start over")

    def execute(self, paths, files_from, output, fmt, force, resume, labels_file, report_dir, engine,
                ray_address, ray_timeout, strict) -> int:
        from infer.contract import LABELS
        from infer.evaluate import Evaluation, LabelsError, file_labeller, folder_labeller

        t0 = time.perf_counter()
        options = self.options
        try:
            label_of = file_labeller(labels_file, LABELS) if labels_file else folder_labeller(LABELS)
        except LabelsError as exc:
            raise click.BadParameter(str(exc), param_hint="--labels") from None
        tally = _Tally(LABELS, Evaluation(LABELS))
        sink = _Sink(output, fmt, options.top_k, options.multi_digit)
        kept = _KeptRows(tally.add_row, self._row_checker(label_of))
        done = sink.open(force, resume, kept.add, check=lambda sink: self._check_resumed(sink, kept))
        if sink.kept:
            self.log(f"resuming: {sink.kept} rows already in {sink.source}")
        skipped: dict[str, int] = {}

        def on_skip(item) -> None:
            from infer.files import NOT_AN_IMAGE

            key = (os.path.splitext(item.path)[1].lower() or "(no extension)") if item.skipped == NOT_AN_IMAGE \
                else item.skipped.split(":")[0]
            skipped[key] = skipped.get(key, 0) + 1
            if self.verbose:
                self.log(f"skipped {item.path}: {item.skipped}")

        exclude = (lambda path: os.path.normpath(path) in done) if done else None
        source = _path_source(paths, files_from)
        batches = None
        try:
            if engine == "ray":
                batches = self._ray_batches(source, ray_address, ray_timeout, label_of, on_skip, exclude)
            else:
                from infer.pipeline import classify_batches

                batches = classify_batches(source, self._local_classifier, options, label_of=label_of,
                                           on_skip=on_skip, exclude=exclude)
            self._consume(batches, sink, tally, strict)
            if tally.n == 0:  # nothing found: no output file (it would only block the next run)
                sink.abandon()
            else:
                sink.commit()
        except BaseException as exc:
            if batches is not None:
                batches.close()  # stops the decode workers (or the Ray job) at once
            self._close_bar()
            return self._stopped(exc, sink)
        self._close_bar()
        return self._summary(tally, skipped, sink.kept, time.perf_counter() - t0, paths, files_from, report_dir,
                             engine)

    def _consume(self, batches, sink, tally, strict) -> None:
        for batch in batches:
            if self.bar is None and not self.quiet and self.tty:
                from tqdm import tqdm

                # Made once the decode workers exist: they are forked from a process without this thread.
                self.bar = tqdm(unit=" images", file=sys.stderr, dynamic_ncols=True, leave=False)
            stop = len(batch)
            failed = [i for i, e in enumerate(batch.error) if e is not None]
            if strict and failed:
                stop = failed[0]
            sink.write(batch, stop)
            tally.add_batch(batch, stop)
            for i in failed:
                if i < stop or not strict:
                    self.log(f"error: {batch.paths[i]}: {batch.error[i]}")
            if self.bar is not None:
                self.bar.update(stop)
            if strict and failed:
                raise click.ClickException(f"{batch.paths[stop]}: {batch.error[stop]} (--strict)")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _stopped(self, exc: BaseException, sink: _Sink) -> int:
        """The run stopped before its end: keep what was written, say why in one line, return the exit code."""
        from infer.pipeline import WorkerDied

        if sink.final is None and isinstance(exc, (BrokenPipeError, _Stop)):
            try:  # what stdout could not take must not be flushed again, with a second error, at exit
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                pass
        if isinstance(exc, BrokenPipeError):
            # The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
            sink.abandon()
            return 141
        kept = sink.abandon()
        if isinstance(exc, (KeyboardInterrupt, _Terminated)):
            message, code = "interrupted", 130 if isinstance(exc, KeyboardInterrupt) else 143
        elif isinstance(exc, click.exceptions.Exit):
            raise exc
        elif isinstance(exc, click.ClickException):
            if kept is None:
                raise exc
            message, code = exc.format_message(), exc.exit_code
        elif isinstance(exc, _Stop):
            message, code = f"stopped: {exc}", exc.code
        elif isinstance(exc, WorkerDied):
            message, code = f"stopped: {exc}", 1
        elif isinstance(exc, OSError):
            where = f"{exc.filename}: " if exc.filename else ""
            message, code = f"stopped: {where}{exc.strerror or exc}", 1
        elif isinstance(exc, Exception):
            from infer.ray_engine import RayJobError, RayConnectError

            if isinstance(exc, (RayJobError, RayConnectError)):
                message = str(exc)
            else:
                if self.verbose:
                    import traceback

                    traceback.print_exception(exc)
                message = (f"stopped by an internal error: {type(exc).__name__}: {exc} "
                           "(--verbose shows the traceback; please report it)")
            code = 1
        else:
            raise exc
        click.echo(message if code in (130, 143) else f"Error: {message}", err=True)
        if kept:
            click.echo(kept, err=True)
        elif code in (130, 143) and sink.final is not None:
            click.echo("no rows were written: nothing to keep", err=True)
        return code

    def _summary(self, tally, skipped, kept, seconds, paths, files_from, report_dir, engine) -> int:
        n, errors = tally.n, tally.errors
        classified = n - errors
        if not self.quiet:
            noun = "image" if n == 1 else "images"
            where = self.where or (f" on ray ({self.used})" if engine == "ray" and self.used else "")
            resumed = f" ({kept} resumed, {n - kept} new)" if kept else ""
            if n == 1 and classified == 1 and tally.last:
                prediction, confidence = tally.last
                first = f"1 image{resumed}: read as {prediction} (confidence {confidence:.2f})"
            else:
                first = f"{n} {noun}{resumed}: {classified} classified, {errors} failed"
            rate = f" ({(n - kept) / seconds:,.0f} images/s)" if n - kept > 1 else ""
            self.log(f"{first} in {seconds:.2f}s{rate}{where}")
            if skipped:
                self.log(_skipped_line(skipped))
            if tally.warnings:
                self.log("warnings: " + ", ".join(f"{v} {k}" for k, v in sorted(tally.warnings.items(),
                                                                                  key=lambda kv: (-kv[1], kv[0]))))
            if classified > 1:
                from infer.evaluate import FULL_TABLE_FROM

                # a small run lists the digits it read; a large one all ten (a digit never predicted is news)
                line = "  ".join(f"{label}:{v}" for label, v in zip(tally.labels, tally.per_digit.tolist())
                                 if v or classified >= FULL_TABLE_FROM)
                if tally.numbers:
                    line += f"  numbers:{tally.numbers}"
                self.log("per digit: " + line)
            if tally.evaluation.total:
                self.log(tally.evaluation.table())
        if report_dir:
            if tally.evaluation.total:
                try:
                    written = tally.evaluation.write_report(report_dir)
                except OSError as exc:  # the rows are written already; only the report is lost
                    raise click.ClickException(f"cannot write the report in {report_dir}: "
                                               f"{exc.strerror or exc}") from None
                self.log("report: " + ", ".join(str(p) for p in written))
            else:
                self.log("report: no labelled images (folders named 0-9 or --labels), nothing written")
                for folder in self.report_made:  # made for this run, and still empty
                    try:
                        folder.rmdir()
                    except OSError:
                        break
        if n == 0:
            where = ", ".join([*paths, *([f"--files-from {files_from}"] if files_from else [])])
            more = f" ({_skipped_line(skipped)})" if skipped else ""
            raise click.ClickException(f"no images found under {where}{more}")
        return 1 if errors else 0

    def _ray_batches(self, source, ray_address, ray_timeout, label_of, on_skip, exclude):
        from infer.engine import default_model_path
        from infer.ray_engine import classify_batches_ray

        model_path = str(self.model or default_model_path())
        # Refuse a bad model here, before starting Ray; CUDA is the actors' business.
        check = self.make_classifier("cpu")
        self._model_line(check)

        def on_providers(providers: set[str]) -> None:
            self.used = ", ".join(sorted(providers)) + " actors"

        return classify_batches_ray(
            source, model_path, self.options, labels=list(check.labels), provider=self.provider,
            classifier_kwargs=self.classifier_kwargs, deskew=bool(getattr(check, "deskew", False)),
            ray_address=ray_address, ray_timeout=ray_timeout, verbose=self.verbose, label_of=label_of,
            on_skip=on_skip, exclude=exclude, on_providers=on_providers)


def _skipped_line(skipped: dict[str, int]) -> str:
    from infer.files import missing_reader_hint

    total = sum(skipped.values())
    parts = []
    for key, count in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        hint = missing_reader_hint(key)
        parts.append(f"{count} {key}" + (f" (to read them: {hint})" if hint else ""))
    what = "file that is not an image" if total == 1 else "files that are not images"
    return f"skipped {total} {what}: " + ", ".join(parts)
