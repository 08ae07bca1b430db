"""Folder of images -> stream of result batches: list, decode, infer and emit in bounded batches.

Decoding (the decoder + the MNIST preprocessing, and the deskew when the model asks for it) runs in
worker processes, one per core, on chunks of paths; they send back compact arrays (uint8 digits,
digit counts, and the few error and warning strings). The main process runs the model on a whole
chunk at once and turns it into a `ResultBatch`: columns of arrays that the writers turn into CSV or
JSON lines in one go, with no Python object per image. At most a few chunks are in flight, so memory
stays flat however many files there are, and batches come out in listing order whatever the batch
size and the number of workers. `classify_paths` gives the same results as `Prediction` objects,
for Python callers.
"""
from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: pipes keep their default size
    fcntl = None

import cv2
import numpy as np

from infer import preprocess
from infer.contract import DEFAULT_MIN_CONFIDENCE, IMAGE_SIZE, WARN_LOW_CONFIDENCE, WARNING_SEPARATOR
from infer.files import Listed, list_images
from infer.preprocess import ImageError, Prepared, deskew, prepare_file

MODEL_OUTPUT_NOT_FINITE = "the model's output is not a number (NaN or infinite): its weights are broken"
CHUNK = 256  # paths per worker task
PIPE_BYTES = 1 << 20  # result pipe capacity asked for: a chunk of 256 digits is 200 kB
INFLIGHT_PER_WORKER = 4


FOLDER_LABELS = "folder"  # label_of's default: a parent folder named like one of the model's labels


@dataclass
class Prediction:
    """One row of output, with the files' column names: a classified image, or why it could not be."""

    path: str
    prediction: str | None = None  # the digit read ("7"); with multi_digit, the number read left to right ("17")
    confidence: float | None = None  # the model's probability of `prediction` (a number: the product of its digits')
    top_k: list[tuple[str, float]] | None = None  # (digit, probability), the k most likely; None for a number
    digits: list[tuple[str, float]] | None = None  # with multi_digit: (digit, probability) left to right
    label: str | None = None  # the true label, when known (a folder named 0-9, or --labels)
    warnings: tuple[str, ...] = ()  # infer.contract.WARN_* codes: what to check by hand
    error: str | None = None  # why the image could not be classified
    pixels: np.ndarray | None = None  # uint8 [28,28], the (first) digit as the model saw it, kept only when asked

    @property
    def warning(self) -> str:
        """The warning codes as the files write them, joined with ';' ('' when none)."""
        return WARNING_SEPARATOR.join(self.warnings)


@dataclass(frozen=True)
class ClassifyOptions:
    """How to classify: preprocessing, batching and what each row carries."""

    mode: str = "mnist"  # "mnist": the MNIST layout steps; "none": a plain resize to 28x28
    top_k: int = 1
    batch_size: int = CHUNK  # images per decode task and per model call
    workers: int | None = None  # decoding processes; None: one per core when there is enough work
    recursive: bool = True
    multi_digit: bool = False  # read several digits side by side as a number ("17")
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # rows below it carry WARN_LOW_CONFIDENCE
    keep_pixels: bool = False  # keep each row's model input (for the report's contact sheet)
    # The preprocessing: (path, mode, *, multi_digit) -> infer.preprocess.Prepared; a module-level
    # function (workers receive it pickled). None: infer.preprocess.prepare_file.
    prepare: Callable[..., Prepared] | None = None


@dataclass(frozen=True)
class DecodeTask:
    paths: Sequence[str]
    mode: str
    multi_digit: bool
    deskew: bool | None  # True/False: the model's wish, known; None: not known yet (the caller deskews)
    prepare: Callable[..., Prepared] | None = None


@dataclass
class Decoded:
    """What a decode worker sends back for n paths: compact arrays and sparse strings."""

    digits: np.ndarray  # uint8 [m,28,28]: the digits of the readable images, in path order
    counts: np.ndarray  # int32 [n]: digits per path (0: error)
    errors: dict[int, str]  # path index -> why it could not be read
    warnings: dict[int, tuple[str, ...]]  # path index -> preprocessing warning codes
    deskew_settled: bool  # the worker knew the model's wish and applied it (else the caller must)


def decode_chunk(task: DecodeTask, wish: Callable[[], bool | None] | None = None) -> Decoded:
    """Worker task: paths -> Decoded. Never raises for a bad file: it becomes that path's error.

    `wish`: asked, when the task was made before the model's wish to read deskewed digits was known,
    whether it is known now (the model loads while the first chunks are decoded)."""
    prepare = task.prepare or prepare_file
    batch = None
    if prepare is preprocess.prepare_file:
        try:  # its batched form: the chunk's tiny images are preprocessed together, as one array
            batch = preprocess.prepare_files(task.paths, task.mode, multi_digit=task.multi_digit)
        except Exception:  # an unexpected failure: redo the chunk one file at a time, to find whose
            batch = None
    if batch is not None:
        digits, counts, warnings = batch.digits, batch.counts, batch.warnings
        errors = {i: str(exc) for i, exc in batch.errors.items()}
    else:  # a caller's own `prepare`, one file at a time
        digits, counts, errors, warnings = _collect([_prepare_one(prepare, p, task) for p in task.paths],
                                                    task.multi_digit)
    wanted = task.deskew if task.deskew is not None or wish is None else wish()
    if wanted and len(digits):
        digits = deskew(digits)  # the model was trained on deskewed digits
    return Decoded(np.ascontiguousarray(digits, np.uint8), counts, errors, warnings,
                   deskew_settled=wanted is not None)


def _collect(results: list, multi_digit: bool):
    """Per-file Prepared objects (or the exceptions raised) -> (digits, counts, errors, warnings)."""
    counts = np.zeros(len(results), np.int32)
    errors: dict[int, str] = {}
    warnings: dict[int, tuple[str, ...]] = {}
    parts = []
    for i, prepared in enumerate(results):
        if isinstance(prepared, BaseException):
            errors[i] = _error_text(prepared)
            continue
        # One image is one digit unless several were asked for (prepare's contract; kept here for any
        # `prepare` passed in, so that both engines make the same rows).
        k = len(prepared.digits) if multi_digit else min(1, len(prepared.digits))
        if k == 0:
            errors[i] = "no digit found"
            continue
        parts.append(prepared.digits[:k])
        counts[i] = k
        if prepared.warnings:
            warnings[i] = tuple(prepared.warnings)
    digits = np.concatenate(parts) if parts else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return digits, counts, errors, warnings


def _prepare_one(prepare: Callable[..., Prepared], path: str, task: DecodeTask) -> Prepared | BaseException:
    """One file through `prepare`, any failure returned as the value (a bad file costs its row only)."""
    try:
        return prepare(path, task.mode, multi_digit=task.multi_digit)
    except Exception as exc:  # a decoder bug must cost one row, not the run
        return exc


def _error_text(exc: BaseException) -> str:
    """The error column for a file whose preprocessing raised `exc`."""
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return f"cannot decode: {type(exc).__name__}: {exc}"


@dataclass
class ResultBatch:
    """The rows of one chunk of paths, as columns (n rows; m digits in all)."""

    paths: list[str]
    labels: tuple[str, ...]  # the model's class names: index -> digit
    prediction: list[str | None]  # the digit, or the number read (multi_digit); None where error
    confidence: np.ndarray  # float64 [n]; NaN where error
    top_index: np.ndarray  # int16 [n,k]: class indices of the k most likely; -1 where error or a number
    top_p: np.ndarray  # float32 [n,k]: their probabilities
    counts: np.ndarray  # int32 [n]: digits per row (0 where error)
    digit_index: np.ndarray  # int16 [m]: each digit's class, rows' digits in order
    digit_p: np.ndarray  # float32 [m]: each digit's probability
    label: list[str | None]  # true labels
    warning: list[str]  # warning codes joined with ';', '' where none
    error: list[str | None]
    pixels: np.ndarray | None = None  # uint8 [n,28,28]: each row's (first) digit as the model saw it
    starts: np.ndarray = field(init=False)  # int [n]: each row's first digit in digit_index

    def __post_init__(self):
        self.starts = np.cumsum(self.counts) - self.counts

    def __len__(self) -> int:
        return len(self.paths)

    def digits_of(self, i: int) -> list[tuple[str, float]]:
        s, c = int(self.starts[i]), int(self.counts[i])
        return [(self.labels[j], float(p)) for j, p in zip(self.digit_index[s : s + c].tolist(),
                                                            self.digit_p[s : s + c].tolist())]

    def predictions(self, multi_digit: bool = False) -> list[Prediction]:
        """The rows as Prediction objects (for the Python API; the command writes the columns)."""
        out = []
        top_index, top_p = self.top_index.tolist(), self.top_p.tolist()
        for i, path in enumerate(self.paths):
            if self.error[i] is not None:
                out.append(Prediction(path=path, label=self.label[i], error=self.error[i],
                                      warnings=_codes(self.warning[i])))
                continue
            top = ([(self.labels[j], p) for j, p in zip(top_index[i], top_p[i])] if top_index[i][0] >= 0 else None)
            out.append(Prediction(
                path=path, prediction=self.prediction[i], confidence=float(self.confidence[i]), top_k=top,
                label=self.label[i], warnings=_codes(self.warning[i]),
                digits=self.digits_of(i) if multi_digit else None,
                pixels=self.pixels[i] if self.pixels is not None else None))
        return out


def _codes(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(WARNING_SEPARATOR)) if joined else ()


def score(paths: Sequence[str], decoded: Decoded, classifier, options: ClassifyOptions,
          label_of: Callable[[str], str | None] | None = None) -> ResultBatch:
    """Run the model on one decoded chunk and make its rows, as arrays: top-k, numbers, warnings."""
    labels = tuple(classifier.labels)
    n, counts = len(paths), decoded.counts
    digits = decoded.digits
    if len(digits) and not decoded.deskew_settled and getattr(classifier, "deskew", False):
        digits = deskew(digits)  # decoded before the model's wish was known
    if len(digits):  # pixels in [0, 1], as infer.preprocess.to_model_input makes them (in one pass)
        probs = np.asarray(classifier.predict(np.divide(digits, np.float32(255.0), dtype=np.float32)))
    else:
        probs = np.zeros((0, len(labels)), np.float32)
    k = max(1, min(options.top_k, len(labels)))
    if k == 1:  # the most likely class: the first of equals, as a stable sort would give
        order = probs.argmax(axis=1)[:, None]
    else:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [m,k]
    order_p = np.take_along_axis(probs, order, axis=1).astype(np.float32)
    starts = np.cumsum(counts) - counts
    ok = counts > 0
    # A model with broken weights (NaN, overflow) gives no answer: an error row, never "nan" as a row.
    broken = np.zeros(n, bool)
    bad_digit = ~np.isfinite(probs).all(axis=1)
    if bad_digit.any():
        broken[ok] = np.logical_or.reduceat(bad_digit, starts[ok])
        ok &= ~broken
        counts = np.where(broken, 0, counts)
    single = counts == 1
    several = counts > 1

    confidence = np.full(n, np.nan)
    if ok.any():
        # A number's confidence is the product of its digits' (an estimate of reading all of them right).
        confidence[ok] = np.multiply.reduceat(order_p[:, 0].astype(np.float64), starts[ok])
    top_index = np.full((n, k), -1, np.int16)
    top_p = np.zeros((n, k), np.float32)
    top_index[single] = order[starts[single]]
    top_p[single] = order_p[starts[single]]
    label_names = np.array(labels, dtype=object)
    prediction = np.full(n, None, dtype=object)
    prediction[single] = label_names[order[starts[single], 0]]
    digit_index = order[:, 0].astype(np.int16)
    for i in np.flatnonzero(several):  # numbers are rare: one join each
        prediction[i] = "".join(label_names[digit_index[starts[i] : starts[i] + counts[i]]])

    warning = [""] * n
    for i, codes in decoded.warnings.items():
        warning[i] = WARNING_SEPARATOR.join(codes)
    for i in np.flatnonzero(confidence < options.min_confidence).tolist():  # NaN (errors) compares False
        warning[i] = f"{warning[i]}{WARNING_SEPARATOR}{WARN_LOW_CONFIDENCE}" if warning[i] else WARN_LOW_CONFIDENCE
    error: list[str | None] = [None] * n
    for i, text in decoded.errors.items():
        error[i] = text
    for i in np.flatnonzero(broken).tolist():
        error[i] = MODEL_OUTPUT_NOT_FINITE
    pixels = None
    if options.keep_pixels:
        pixels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        pixels[ok] = digits[starts[ok]]
    return ResultBatch(
        paths=list(paths), labels=labels, prediction=prediction.tolist(), confidence=confidence,
        top_index=top_index, top_p=top_p, counts=counts.astype(np.int32), digit_index=digit_index,
        digit_p=order_p[:, 0].copy(), label=labels_of(label_of, paths),
        warning=warning, error=error, pixels=pixels)


def labels_of(label_of: Callable[[str], str | None] | None, paths: Sequence[str]) -> list[str | None]:
    """True labels of a batch of paths (with the labeller's bulk form, `many`, when it has one)."""
    if label_of is None:
        return [None] * len(paths)
    many = getattr(label_of, "many", None)
    return many(paths) if many is not None else [label_of(p) for p in paths]


class WorkerDied(Exception):
    """A decode worker process ended abruptly (killed, out of memory): its chunk's rows are lost."""


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _decode_worker(tasks, results, wish, spawned: bool = False) -> None:
    """A decode process: tasks from its own queue, results into its own pipe, until None. `wish`: a
    shared byte, the model's wish to read deskewed digits (-1 while it is not known, then 0 or 1)."""
    # Ctrl-C is the main process's to handle: it stops the workers and keeps the rows done so far;
    # SIGTERM (how it stops them) ends a worker at once, whatever handler the main process had.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if spawned:  # a fresh process (not forked): its OpenCV is its own to set (see Decoder)
        cv2.setNumThreads(1)

    def wished() -> bool | None:
        return None if wish.value < 0 else bool(wish.value)

    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            reply = (True, decode_chunk(pickle.loads(task), wished))
        except Exception as exc:  # decode_chunk turns a bad file into an error row; this is a bug
            reply = (False, f"{type(exc).__name__}: {exc}")
        results.send(reply)


class Decoder:
    """Runs decode_chunk in-process or in worker processes, in order, with bounded memory.

    Each worker has its own task queue and its own result pipe: a worker that dies (killed, out of
    memory), even in the middle of sending a result, is an end of file or an exited process seen
    here, and raises WorkerDied; it can never leave the stream waiting forever. (A shared result
    queue, as in ProcessPoolExecutor, can: a partial message blocks its reader.)
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.procs: list = []
        self.queues: list = []
        self.conns: list = []
        if workers > 0:
            # All workers are forked here, before this process starts any thread (queue feeders,
            # ONNX Runtime, a progress bar).
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            ctx = multiprocessing.get_context(method)
            # Each worker runs OpenCV on one thread: the workers are the parallelism, and OpenCV's
            # pool costs more than it gives on images this small. Set here, in this process, around
            # the forks: a child must never reconfigure a thread pool whose threads it did not inherit.
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            self.wish = ctx.RawValue("b", -1)
            for _ in range(workers):
                tasks = ctx.Queue()
                receive, send = ctx.Pipe(duplex=False)
                _widen_pipe(send.fileno())
                proc = ctx.Process(target=_decode_worker, args=(tasks, send, self.wish, method == "spawn"),
                                   daemon=True, name="mnist-infer-decode")
                proc.start()
                send.close()  # the worker holds the only write end: its death is an end of file here
                self.procs.append(proc)
                self.queues.append(tasks)
                self.conns.append(receive)
            cv2.setNumThreads(threads)

    def tell_wish(self, deskew: bool) -> None:
        """The model's wish to read deskewed digits, now known: workers apply it to the chunks in hand."""
        if self.procs:
            self.wish.value = int(deskew)

    def stream(self, tasks: Iterator[DecodeTask]) -> Iterator[Decoded]:
        """Results of decode_chunk over `tasks`, in order. With workers, the first tasks are submitted
        now, so the workers decode while the caller does something else (loads the model)."""
        if not self.procs:
            return map(decode_chunk, tasks)
        owners: deque[int] = deque()  # the worker of each task in flight, in task order
        load = [0] * self.workers
        limit = self.workers * INFLIGHT_PER_WORKER

        def submit(count: int) -> None:
            for task in itertools.islice(tasks, count):
                w = min(range(self.workers), key=load.__getitem__)  # the least busy worker
                # Pickled here, not in the queue's feeder thread, which would drop a task it cannot
                # pickle (a `prepare` that is a lambda) and leave the stream waiting for it.
                self.queues[w].put(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
                load[w] += 1
                owners.append(w)

        submit(limit)
        return self._drain(submit, owners, load, limit)

    def _drain(self, submit, owners: deque, load: list, limit: int) -> Iterator[Decoded]:
        while owners:
            w = owners.popleft()  # each worker answers its tasks in order: this one's is next
            ok, result = self._receive(w)
            load[w] -= 1
            if not ok:
                raise RuntimeError(f"decode worker failed: {result}")
            submit(limit - len(owners))
            yield result

    def _receive(self, w: int):
        conn, proc = self.conns[w], self.procs[w]
        while True:
            ready = multiprocessing.connection.wait([conn, proc.sentinel])
            if conn in ready:
                try:
                    return conn.recv()
                except (EOFError, OSError):
                    break  # it died while sending
            elif proc.sentinel in ready:
                break
        raise WorkerDied(self._death(proc))

    @staticmethod
    def _death(proc) -> str:
        proc.join(timeout=5)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the system's out-of-memory killer sends it)" if name == "SIGKILL" else ""
            return f"a decode worker (pid {proc.pid}) was killed by {name}{hint}"
        return f"a decode worker (pid {proc.pid}) ended unexpectedly (exit code {code})"

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their queued tasks, or (abort) at once."""
        for proc, tasks in zip(self.procs, self.queues):
            if abort:
                proc.terminate()
            elif proc.is_alive():
                tasks.put(None)
        for proc, tasks, conn in zip(self.procs, self.queues, self.conns):
            proc.join(timeout=None if not abort else 5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            tasks.cancel_join_thread()  # a dead reader must not hold this process at exit
            tasks.close()
            conn.close()
        self.procs, self.queues, self.conns = [], [], []


def _widen_pipe(fd: int) -> None:
    """Let a result pipe hold a whole chunk's digits (Linux; 64 kB by default): the worker writes it in
    one go and the main process reads it in one call, instead of a dozen wake-ups each."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl else None
    if size is None:
        return
    try:
        fcntl.fcntl(fd, size, PIPE_BYTES)
    except OSError:  # above the system's pipe-max-size for this user: the default will do
        pass


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def classify_batches(
    paths: Iterable[str | os.PathLike],
    classifier,
    options: ClassifyOptions = ClassifyOptions(),
    *,
    label_of: Callable[[str], str | None] | None = FOLDER_LABELS,
    on_skip: Callable[[Listed], None] | None = None,
    exclude: Callable[[str], bool] | None = None,
) -> Iterator[ResultBatch]:
    """Classify every image under `paths` (files or folders), yielding ResultBatches in listing order.

    `classifier` is an infer.Classifier (anything with .predict(pixels) -> probs, .labels and
    optionally .deskew), or a function that makes one: it is then called once the first images are
    being decoded, so that loading ONNX Runtime overlaps with decoding. Unreadable files become
    error rows; they never stop the stream. `label_of(path)`: the true label, or None; by default
    (FOLDER_LABELS) the name of the image's folder when it is one of the model's labels, as mnist-infer
    does; None: no labels. `exclude(path)`: skip paths already done (--resume).
    Raises WorkerDied when a decode worker is killed.
    """
    stream = list_images(paths, options.recursive, on_skip)
    if exclude is not None:
        stream = itertools.filterfalse(exclude, stream)
    first = list(itertools.islice(stream, options.batch_size * 2))
    workers = options.workers
    if workers is None:
        # A pool costs tens of ms to start: only worth it when there is more than a couple of batches.
        workers = default_workers() if len(first) == options.batch_size * 2 else 0
    decoder = Decoder(workers)
    pending_paths: deque = deque()
    # The model's wish to read deskewed digits, once it is loaded: chunks submitted from then on are
    # deskewed in the workers, and so are those in hand when it becomes known; the few decoded
    # before, here.
    wish: list[bool | None] = [None]

    def tasks() -> Iterator[DecodeTask]:
        for chunk in _chunks(itertools.chain(first, stream), options.batch_size):
            pending_paths.append(chunk)
            yield DecodeTask(chunk, options.mode, options.multi_digit, wish[0], options.prepare)

    try:
        results = decoder.stream(tasks())
        if not hasattr(classifier, "predict"):
            classifier = classifier()
        if label_of is FOLDER_LABELS:
            from infer.evaluate import folder_labeller

            label_of = folder_labeller(classifier.labels)
        wish[0] = bool(getattr(classifier, "deskew", False))
        decoder.tell_wish(wish[0])
        for decoded in results:
            yield score(pending_paths.popleft(), decoded, classifier, options, label_of)
    except BaseException:
        decoder.close(abort=True)
        raise
    decoder.close()


def classify_paths(
    paths: Iterable[str | os.PathLike],
    classifier,
    *,
    mode: str = "mnist",
    top_k: int = 1,
    workers: int | None = None,
    batch_size: int = CHUNK,
    recursive: bool = True,
    multi_digit: bool = False,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    label_of: Callable[[str], str | None] | None = FOLDER_LABELS,
    keep_pixels: bool = False,
    on_skip: Callable[[Listed], None] | None = None,
) -> Iterator[Prediction]:
    """Classify every image under `paths` (files or folders), yielding one Prediction per file, in order.

    The same work as `classify_batches` (see it for `classifier`), one object per image: unreadable
    files are Predictions with `error` set; `workers`: decoding processes (default: one per core
    when there are more than two batches of files, else decode in this process).
    """
    options = ClassifyOptions(mode=mode, top_k=top_k, batch_size=batch_size, workers=workers, recursive=recursive,
                              multi_digit=multi_digit, min_confidence=min_confidence, keep_pixels=keep_pixels)
    for batch in classify_batches(paths, classifier, options, label_of=label_of, on_skip=on_skip):
        yield from batch.predictions(multi_digit)
