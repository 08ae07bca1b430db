"""The same classification on a Ray cluster (Ray Data offline batch inference): `--engine ray`.

The listing is made on the driver, exactly as the local engine makes it. Ray Data then decodes and
preprocesses in a CPU stage (the very same `decode_chunk`, preprocessing and deskew) and classifies in
a class-based stage whose actors each build one ONNX Runtime session (sessions do not pickle; the
model travels through the object store as bytes, so workers need no shared copy of it) and score
with the local engine's own `score`. Ray does not keep order by default: order is preserved by Ray
Data's `preserve_order`, and every row carries its listing index, which the driver checks. An
unreadable image is an error row, as locally: decoding never raises, so one bad file cannot fail the
dataset. The driver turns Ray's columns back into the local engine's ResultBatches: the same rows,
warnings, numbers (--multi-digit) and error rows.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

from infer.contract import IMAGE_SIZE, WARNING_SEPARATOR
from infer.files import Listed, list_images
from infer.pipeline import (FOLDER_LABELS, ClassifyOptions, Decoded, DecodeTask, ResultBatch, decode_chunk, labels_of,
                            score)


class RayUnavailable(Exception):
    """Ray (with Ray Data) is not installed."""


class RayJobError(Exception):
    """The Ray job failed (an actor could not start, e.g. CUDA asked for and missing); carries the cause."""


class RayConnectError(Exception):
    """The Ray cluster asked for cannot be joined (nothing there, not Ray, no cluster running)."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray Data: pip install 'mnist-toolkit[ray]' "
                             "(or pip install 'ray[data]')") from None
    return ray


def _decode_batch(batch: dict, options: ClassifyOptions, deskew: bool) -> dict:
    """CPU stage: paths -> digits (uint8 [n,28,28]; with multi_digit a ragged [k,28,28] per row),
    digit counts, error and warning strings ('' when none)."""
    paths = [str(p) for p in batch["path"]]
    decoded = decode_chunk(DecodeTask(paths, options.mode, options.multi_digit, deskew, options.prepare))
    n, counts = len(paths), decoded.counts
    ok = counts > 0
    if options.multi_digit:
        digits = np.empty(n, dtype=object)
        parts = np.split(decoded.digits, np.cumsum(counts)[:-1])
        for i in range(n):
            # every row holds at least one image (zeros for an error row): Ray's ragged tensors need no empty ones
            digits[i] = parts[i] if counts[i] else np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    else:
        digits = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        digits[ok] = decoded.digits
    return {"index": batch["index"], "path": batch["path"], "count": counts, "digits": digits,
            "error": np.array([decoded.errors.get(i, "") for i in range(n)], dtype=object),
            "warning": np.array([WARNING_SEPARATOR.join(decoded.warnings.get(i, ())) for i in range(n)],
                                dtype=object)}


class _OnnxStage:
    """Model stage: one ONNX Runtime session per actor, built from the model's bytes."""

    def __init__(self, model_ref: list, provider: str, options: ClassifyOptions, classifier_kwargs: dict):
        import tempfile

        import ray

        from infer.engine import Classifier

        # The ObjectRef comes in a list so that Ray does not resolve it into the constructor's
        # arguments (an actor whose arguments live in the object store makes Ray log an error line).
        model_bytes = ray.get(model_ref[0])
        fd, path = tempfile.mkstemp(suffix=".onnx")  # Classifier checks the contract from a file
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        try:
            self.clf = Classifier(path, provider=provider, threads=1, **classifier_kwargs)
        finally:
            os.unlink(path)
        self.options = options

    def __call__(self, batch: dict) -> dict:
        counts = batch["count"].astype(np.int32)
        n = len(counts)
        if self.options.multi_digit:
            parts = [np.asarray(d)[:c] for d, c in zip(batch["digits"], counts) if c]
            digits = np.concatenate(parts) if parts else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        else:
            digits = np.asarray(batch["digits"])[counts > 0]
        errors = {i: str(e) for i, e in enumerate(batch["error"]) if e}
        warnings = {i: tuple(str(w).split(WARNING_SEPARATOR)) for i, w in enumerate(batch["warning"]) if w}
        # The decode stage knew the model's wish (the driver read it): deskewing is settled.
        result = score([str(p) for p in batch["path"]], Decoded(digits, counts, errors, warnings, True),
                       self.clf, self.options)
        out = {"index": batch["index"], "path": batch["path"], "count": counts,
               "prediction": np.array([p or "" for p in result.prediction], dtype=object),
               "confidence": result.confidence, "top_index": result.top_index, "top_p": result.top_p,
               "warning": np.array(result.warning, dtype=object), "error": batch["error"],
               "provider": np.full(n, self.clf.provider, dtype=object)}
        if self.options.multi_digit:
            digit_index, digit_p = np.empty(n, dtype=object), np.empty(n, dtype=object)
            for i, (s, c) in enumerate(zip(result.starts.tolist(), counts.tolist())):
                # one entry at least per row (an error row's is ignored: its count is 0)
                digit_index[i] = result.digit_index[s : s + c] if c else np.zeros(1, np.int16)
                digit_p[i] = result.digit_p[s : s + c] if c else np.zeros(1, np.float32)
            out["digit_index"], out["digit_p"] = digit_index, digit_p
        if self.options.keep_pixels:
            out["pixels"] = result.pixels  # as the model saw them
        return out


# Ray's native (C++) log lines: "[2026-01-02 03:04:05,678 E 123 456] core_worker.cc:2465: ...". They go
# straight to file descriptor 2; Ray logs one at error level on every run (restartable actors whose
# constructor arguments live in the object store, which is how Ray Data builds them).
RAY_NATIVE_LOG = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [TDIWEF] \d+ \d+\] ")


@contextlib.contextmanager
def quiet_native_logs(active: bool = True) -> Iterator[None]:
    """Drop Ray's native log lines from this process's stderr (fd 2) while the block runs; the rest passes.

    Only around phases that start no child process (which would inherit the pipe)."""
    try:
        saved = os.dup(2) if active else None
    except OSError:
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not RAY_NATIVE_LOG.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="ray-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump ends
        thread.join(timeout=5)
        os.close(saved)


def _address_host_port(address: str) -> tuple[str, int] | None:
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(address: str | None, num_cpus: int | None = None, timeout: float = 60.0, quiet: bool = True):
    """Join the cluster at `address` (host:port, auto, or $RAY_ADDRESS); without one, start a local Ray.

    Raises RayConnectError in one line when nothing answers at host:port or no cluster runs (auto).
    Ray itself retries an unresponsive address for minutes: after `timeout` seconds this process
    says so on stderr and exits 1. `quiet`: Ray's own log lines silenced (its Python loggers kept to
    errors, its native lines dropped while joining a cluster).
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    target = _address_host_port(address) if address and address not in ("auto", "local") else None
    if target is not None:
        try:
            socket.create_connection(target, timeout=min(timeout, 10.0)).close()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise RayConnectError(f"cannot reach a Ray cluster at {address}: {reason}") from None
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.ERROR)
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    answered = threading.Event()
    sys.stderr.flush()
    stderr = os.dup(2)  # the real one, even while Ray's lines are filtered

    def give_up() -> None:
        if not answered.wait(timeout):
            what = f"a Ray cluster at {address} did not answer" if address else "Ray did not start"
            os.write(stderr, f"Error: {what} within {timeout:g} s (--ray-timeout)\n".encode())
            os._exit(1)  # ray.init cannot be interrupted from Python: nothing else stops it

    threading.Thread(target=give_up, name="ray-connect-timeout", daemon=True).start()
    try:
        # Joining a running cluster starts no local process: Ray's retry warnings can be dropped.
        with quiet_native_logs(quiet and address is not None and address != "local"):
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        if address == "auto":
            raise RayConnectError("--ray-address auto: no Ray cluster is running on this machine (start one with "
                                  "`ray start --head`, or leave --ray-address out for a local instance)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayConnectError(f"cannot join the Ray cluster at {address}: {first}") from None
    except (RuntimeError, ValueError) as exc:  # a version mismatch, a malformed address...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = f"join the Ray cluster at {address}" if address else "start Ray"
        raise RayConnectError(f"cannot {what}: {first[:300]}") from None
    finally:
        answered.set()
        os.close(stderr)
    if quiet:
        for name in ("ray", "ray.data"):  # mnist-infer's stderr is for its own summary and error rows
            logging.getLogger(name).setLevel(logging.ERROR)
    return ray


def classify_batches_ray(
    paths: Iterable[str],
    model_path: str,
    options: ClassifyOptions = ClassifyOptions(),
    *,
    labels: list[str],
    provider: str = "auto",
    classifier_kwargs: dict | None = None,
    deskew: bool = False,
    label_of: Callable[[str], str | None] | None = FOLDER_LABELS,
    on_skip: Callable[[Listed], None] | None = None,
    exclude: Callable[[str], bool] | None = None,
    on_providers: Callable[[set[str]], None] | None = None,
    ray_address: str | None = None,
    ray_timeout: float = 60.0,
    verbose: bool = False,
    model_actors: int | None = None,
) -> Iterator[ResultBatch]:
    """Classify like `infer.pipeline.classify_batches`, on Ray Data; yields ResultBatches in listing order.

    `deskew`: the model's wish (Classifier.deskew), applied in the decode stage. `on_providers`
    receives the providers the model actors used, once the job is done. `label_of`: as there.
    """
    if label_of is FOLDER_LABELS:
        from infer.evaluate import folder_labeller

        label_of = folder_labeller(labels)
    ray = connect(ray_address, timeout=ray_timeout, quiet=not verbose)
    files = [p for p in list_images(paths, options.recursive, on_skip) if exclude is None or not exclude(p)]
    if not files:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    with open(model_path, "rb") as f:
        model_ref = ray.put(f.read())
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    gpu = provider == "cuda"
    if gpu and resources.get("GPU", 0) < 1:
        # An actor asking for a GPU the cluster does not have would wait forever.
        raise RayJobError("--provider cuda: the Ray cluster has no GPU (its resources: "
                          + ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if "memory" not in k
                                      and not k.startswith("node:")) + ")")
    batch_size = options.batch_size
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(files)],
                             override_num_blocks=max(1, min(len(files) // batch_size, 4 * cpus)))
    # A CPU stage of tasks. Its resources differ from the model stage's on purpose: Ray Data would
    # otherwise fuse both into the model actors, and decoding would scale with the actors alone.
    ds = ds.map_batches(_decode_batch, fn_kwargs={"options": options, "deskew": deskew}, batch_size=batch_size,
                        batch_format="numpy", num_cpus=1)
    ds = ds.map_batches(
        _OnnxStage,
        fn_constructor_kwargs={"model_ref": [model_ref], "provider": provider, "options": options,
                               "classifier_kwargs": classifier_kwargs or {}},
        batch_size=max(batch_size, 1024 if gpu else batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=model_actors or (1 if gpu else max(1, cpus // 2))),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else 0.5,
    )
    providers: set[str] = set()
    with quiet_native_logs(not verbose):
        yield from _ordered(_batches(ray, ds, batch_size), labels, options, label_of, providers)
    if on_providers is not None:
        on_providers(providers)


def _ordered(batches: Iterator[dict], labels, options, label_of, providers: set[str]) -> Iterator[ResultBatch]:
    expected = 0
    for batch in batches:
        index = np.asarray(batch["index"])
        n = len(index)
        if not np.array_equal(index, np.arange(expected, expected + n)):
            raise RayJobError(f"Ray returned rows out of order (row {int(index[0])} where row {expected} was due)")
        expected += n
        providers.update(str(p) for p in set(batch["provider"].tolist()))
        yield _result_batch(batch, labels, options, label_of)


def _result_batch(batch: dict, labels: list[str], options: ClassifyOptions, label_of) -> ResultBatch:
    """Ray's columns -> the local engine's ResultBatch."""
    paths = [str(p) for p in batch["path"]]
    counts = np.asarray(batch["count"]).astype(np.int32)
    top_index, top_p = np.asarray(batch["top_index"]).astype(np.int16), np.asarray(batch["top_p"], np.float32)
    if options.multi_digit:
        ok = counts > 0
        pick = [np.asarray(a)[:c] for a, c in zip(batch["digit_index"], counts) if c]
        digit_index = np.concatenate(pick).astype(np.int16) if pick else np.zeros(0, np.int16)
        pick = [np.asarray(a)[:c] for a, c in zip(batch["digit_p"], counts) if c]
        digit_p = np.concatenate(pick).astype(np.float32) if pick else np.zeros(0, np.float32)
    else:
        ok = counts > 0
        digit_index, digit_p = top_index[ok, 0].copy(), top_p[ok, 0].copy()
    return ResultBatch(
        paths=paths, labels=tuple(labels), prediction=[str(p) or None for p in batch["prediction"]],
        confidence=np.asarray(batch["confidence"], np.float64), top_index=top_index, top_p=top_p, counts=counts,
        digit_index=digit_index, digit_p=digit_p,
        label=labels_of(label_of, paths),
        warning=[str(w) for w in batch["warning"]], error=[str(e) or None for e in batch["error"]],
        pixels=np.asarray(batch["pixels"]) if options.keep_pixels else None)


def _batches(ray, ds, batch_size: int) -> Iterator[dict]:
    try:
        yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)
    except ray.exceptions.RayError as exc:
        cause = str(exc).strip().splitlines()
        reason = next((line for line in reversed(cause) if "Error" in line), cause[-1] if cause else repr(exc))
        raise RayJobError(f"the Ray job failed: {reason.strip()[:400]}") from None
