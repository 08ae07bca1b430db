"""Folder of images -> stream of predictions: list, decode, infer and emit in bounded batches.

Decoding (Pillow + the MNIST preprocessing) runs in worker processes, one per core, on chunks of
paths; the main process only runs the model and writes rows. At most a few chunks are in flight,
so memory stays flat however many files there are, and rows come out in listing order.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from infer.contract import IMAGE_SIZE
from infer.files import Listed, walk_images
from infer.preprocess import ImageError, load_digit

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


class Decoder:
    """Runs decode_chunk in-process or in a pool of worker processes, in order, with bounded memory."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 0:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(workers)

    def map(self, tasks: Iterable[tuple]) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        if self.pool is None:
            yield from map(decode_chunk, tasks)
            return
        pending: deque = deque()
        for task in tasks:
            pending.append(self.pool.apply_async(decode_chunk, (task,)))
            if len(pending) >= self.workers * INFLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

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
    decoder: Decoder | None = None,
) -> Iterator[Prediction]:
    """Classify every image under `paths` (files or folders), yielding one Prediction per file, in order.

    `classifier` is an infer.Classifier (anything with .predict(pixels) -> probs and .labels).
    Unreadable files become Predictions with `error` set; they never stop the stream.
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
        # A pool costs ~50 ms to start: only worth it when there is more than a couple of chunks.
        workers = default_workers() if len(first) == batch_size * 2 else 0
    own_decoder = decoder is None
    decoder = decoder or Decoder(workers)
    labels = list(classifier.labels)
    k = max(1, min(top_k, len(labels)))
    try:
        batches = _chunks(itertools.chain(first, stream), batch_size)
        # tee the chunk list so each decoded result can be matched to its paths
        pending_paths: deque = deque()

        def tasks():
            for chunk in batches:
                pending_paths.append(chunk)
                yield (chunk, mode)

        for digits, errors in decoder.map(tasks()):
            chunk = pending_paths.popleft()
            ok = [i for i, e in enumerate(errors) if e is None]
            probs = classifier.predict(digits[ok].astype(np.float32) / 255.0) if ok else None
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k] if ok else None
            row_of = {i: r for r, i in enumerate(ok)}
            for i, path in enumerate(chunk):
                true_label = label_of(path) if label_of else None
                if errors[i] is not None:
                    yield Prediction(path=path, error=errors[i], true_label=true_label)
                    continue
                r = row_of[i]
                top = [(labels[j], float(probs[r, j])) for j in order[r]]
                yield Prediction(
                    path=path,
                    label=top[0][0],
                    confidence=top[0][1],
                    top_k=top,
                    true_label=true_label,
                    pixels=digits[i] if keep_pixels else None,
                )
    except BaseException:
        if own_decoder:
            decoder.close(abort=True)
        raise
    if own_decoder:
        decoder.close()
