"""Folder of images -> stream of predictions: list, decode, infer and emit in bounded batches.

Decoding (Pillow + the MNIST preprocessing) runs in worker processes, one per core, on chunks of
paths; the main process only runs the model and writes rows. At most a few chunks are in flight,
so memory stays flat however many files there are, and rows come out in listing order.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from infer.contract import IMAGE_SIZE
from infer.files import Listed, walk_images
from infer.preprocess import ImageError, deskew, load_digit

CHUNK = 256  # paths per worker task
INFLIGHT_PER_WORKER = 4


@dataclass
class Prediction:
    """One row of output: a classified image, or the reason it could not be classified."""

    path: str
    label: str | None = None  # predicted label
    confidence: float | None = None
    top_k: list[tuple[str, float]] | None = None
    error: str | None = None
    true_label: str | None = None
    pixels: np.ndarray | None = None  # the uint8 [28,28] model input, kept only when asked


def decode_chunk(args: tuple[Sequence[str], str]) -> tuple[np.ndarray, list[str | None]]:
    """Worker task: paths -> (uint8 digits [n,28,28], per-path error or None)."""
    paths, mode = args
    digits = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    errors: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            digits[i] = load_digit(path, mode)
        except ImageError as exc:
            errors[i] = str(exc)
        except MemoryError:
            errors[i] = "out of memory while decoding"
        except OSError as exc:
            errors[i] = f"cannot read: {exc.strerror or exc}"
        except Exception as exc:  # a decoder bug must cost one row, not the run
            errors[i] = f"cannot decode: {type(exc).__name__}: {exc}"
    return digits, errors


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _ignore_sigint() -> None:
    # Ctrl-C is the main process's to handle: it terminates the pool and removes the partial output.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Decoder:
    """Runs decode_chunk in-process or in a pool of worker processes, in order, with bounded memory."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 0:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(workers, initializer=_ignore_sigint)

    def stream(self, tasks: Iterator[tuple]) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """Results of decode_chunk over `tasks`, in order. With a pool, the first tasks are submitted
        now, so the workers decode while the caller does something else (loads the model)."""
        if self.pool is None:
            return map(decode_chunk, tasks)
        pending: deque = deque()
        limit = self.workers * INFLIGHT_PER_WORKER
        for task in itertools.islice(tasks, limit):
            pending.append(self.pool.apply_async(decode_chunk, (task,)))
        return self._drain(tasks, pending, limit)

    def _drain(self, tasks, pending: deque, limit: int):
        while pending:
            result = pending.popleft().get()
            for task in itertools.islice(tasks, limit - len(pending)):
                pending.append(self.pool.apply_async(decode_chunk, (task,)))
            yield result

    def close(self, abort: bool = False) -> None:
        if self.pool is not None:
            if abort:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def classify_paths(
    paths: Iterable[str],
    classifier,
    *,
    mode: str = "mnist",
    top_k: int = 1,
    workers: int | None = None,
    batch_size: int = CHUNK,
    recursive: bool = True,
    label_of: Callable[[str], str | None] | None = None,
    keep_pixels: bool = False,
    on_skip: Callable[[Listed], None] | None = None,
) -> Iterator[Prediction]:
    """Classify every image under `paths` (files or folders), yielding one Prediction per file, in order.

    `classifier` is an infer.Classifier (anything with .predict(pixels) -> probs and .labels), or a
    function that makes one: it is then called once the first images are being decoded, so that
    loading ONNX Runtime overlaps with decoding. Unreadable files become Predictions with `error`
    set; they never stop the stream. `workers`: decoding processes (default: one per core when
    there are more than two batches of files, else decode in this process).
    """
    listing = walk_images(paths, recursive=recursive)

    def files() -> Iterator[str]:
        for item in listing:
            if item.skipped is None:
                yield item.path
            elif on_skip is not None:
                on_skip(item)

    stream = files()
    first = list(itertools.islice(stream, batch_size * 2))
    if workers is None:
        # A pool costs tens of ms to start: only worth it when there is more than a couple of batches.
        workers = default_workers() if len(first) == batch_size * 2 else 0
    decoder = Decoder(workers)
    try:
        pending_paths: deque = deque()

        def tasks() -> Iterator[tuple]:
            for chunk in _chunks(itertools.chain(first, stream), batch_size):
                pending_paths.append(chunk)
                yield (chunk, mode)

        results = decoder.stream(tasks())
        if not hasattr(classifier, "predict"):
            classifier = classifier()
        labels = list(classifier.labels)
        k = max(1, min(top_k, len(labels)))
        for digits, errors in results:
            chunk = pending_paths.popleft()
            ok = [i for i, e in enumerate(errors) if e is None]
            if ok and getattr(classifier, "deskew", False):
                digits[ok] = deskew(digits[ok])  # the model was trained on deskewed digits
            if ok:
                probs = classifier.predict(digits[ok].astype(np.float32) / 255.0)
                order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                top_p = np.take_along_axis(probs, order, axis=1).tolist()
                order = order.tolist()
            row = 0
            for i, path in enumerate(chunk):
                true_label = label_of(path) if label_of else None
                if errors[i] is not None:
                    yield Prediction(path=path, error=errors[i], true_label=true_label)
                    continue
                top = [(labels[j], p) for j, p in zip(order[row], top_p[row])]
                row += 1
                yield Prediction(path=path, label=top[0][0], confidence=top[0][1], top_k=top,
                                 true_label=true_label, pixels=digits[i] if keep_pixels else None)
    except BaseException:
        decoder.close(abort=True)
        raise
    decoder.close()
