"""The same classification on a Ray cluster (Ray Data offline batch inference): `--engine ray`.

The listing is made on the driver, exactly as the local engine makes it. Ray Data then decodes and
preprocesses in a CPU stage (the very same `decode_chunk` and preprocessing module) and classifies in
a class-based stage whose actors each build one ONNX Runtime session (sessions do not pickle; the
model travels as bytes, so workers need no shared copy of it). Ray does not keep order by default:
order is preserved by Ray Data's `preserve_order`, and every row carries its listing index, which the
driver checks. An unreadable image is an error row, as locally: decoding never raises, so one bad
file cannot fail the dataset.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from infer.files import Listed, walk_images
from infer.pipeline import Prediction, decode_chunk
from infer.preprocess import deskew


class RayUnavailable(Exception):
    """Ray (with Ray Data) is not installed."""


class RayJobError(Exception):
    """The Ray job failed (an actor could not start, e.g. CUDA asked for and missing); carries the cause."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray Data: pip install 'mnist-toolkit[ray]' "
                             "(or pip install 'ray[data]')") from None
    return ray


def _decode_batch(batch: dict, mode: str) -> dict:
    """CPU stage: paths -> uint8 digits and error strings ('' when the image was read)."""
    digits, errors = decode_chunk((list(batch["path"]), mode))
    return {"index": batch["index"], "path": batch["path"], "pixels": digits,
            "error": np.array([e or "" for e in errors], dtype=object)}


class _OnnxStage:
    """Model stage: one ONNX Runtime session per actor, built from the model's bytes."""

    def __init__(self, model_bytes: bytes, provider: str, top_k: int):
        import tempfile

        from infer.engine import Classifier

        # Classifier checks the contract from a file; a private copy per actor.
        fd, path = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(model_bytes)
        try:
            self.clf = Classifier(path, provider=provider, threads=1)
        finally:
            os.unlink(path)
        self.k = max(1, min(top_k, len(self.clf.labels)))

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        ok = np.array([e == "" for e in batch["error"]], dtype=bool)
        top_idx = np.full((n, self.k), -1, np.int64)
        top_p = np.zeros((n, self.k), np.float32)
        pixels = batch["pixels"]
        if ok.any():
            if self.clf.deskew:  # the model was trained on deskewed digits
                pixels = pixels.copy()
                pixels[ok] = deskew(pixels[ok])
            probs = self.clf.predict(pixels[ok].astype(np.float32) / 255.0)
            order = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            top_idx[ok] = order
            top_p[ok] = np.take_along_axis(probs, order, axis=1)
        out = {"index": batch["index"], "path": batch["path"], "error": batch["error"],
               "top_idx": top_idx, "top_p": top_p}
        if "pixels" in batch:
            out["pixels"] = pixels  # as the model saw them
        return out


def connect(address: str | None, num_cpus: int | None = None):
    """Join the cluster at `address` (or $RAY_ADDRESS); without one, start a local Ray instance."""
    ray = import_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                      logging_level=logging.ERROR)
        if address is None:
            kwargs["num_cpus"] = num_cpus or os.cpu_count()
        ray.init(address=address, **kwargs)
    for name in ("ray", "ray.data"):  # mnist-infer's stderr is for its own summary and error rows
        logging.getLogger(name).setLevel(logging.ERROR)
    return ray


def classify_paths_ray(
    paths: Iterable[str],
    model_path: str,
    *,
    labels: list[str],
    provider: str = "auto",
    mode: str = "mnist",
    top_k: int = 1,
    batch_size: int = 256,
    recursive: bool = True,
    label_of: Callable[[str], str | None] | None = None,
    keep_pixels: bool = False,
    on_skip: Callable[[Listed], None] | None = None,
    ray_address: str | None = None,
    model_actors: int | None = None,
) -> Iterator[Prediction]:
    """Classify like `infer.pipeline.classify_paths`, on Ray Data; yields Predictions in listing order."""
    ray = connect(ray_address)
    files = []
    for item in walk_images(paths, recursive=recursive):
        if item.skipped is None:
            files.append(item.path)
        elif on_skip is not None:
            on_skip(item)
    if not files:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    with open(model_path, "rb") as f:
        model_bytes = f.read()
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    gpu = provider == "cuda"
    if gpu and resources.get("GPU", 0) < 1:
        # An actor asking for a GPU the cluster does not have would wait forever.
        raise RayJobError("--provider cuda: the Ray cluster has no GPU (its resources: "
                          + ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if "memory" not in k
                                      and not k.startswith("node:")) + ")")
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(files)],
                             override_num_blocks=max(1, min(len(files) // batch_size, 4 * cpus)))
    # A CPU stage of tasks. Its resources differ from the model stage's on purpose: Ray Data would
    # otherwise fuse both into the model actors, and decoding would scale with the actors alone.
    ds = ds.map_batches(_decode_batch, fn_kwargs={"mode": mode}, batch_size=batch_size, batch_format="numpy",
                        num_cpus=1)
    ds = ds.map_batches(
        _OnnxStage,
        fn_constructor_kwargs={"model_bytes": model_bytes, "provider": provider, "top_k": top_k},
        batch_size=max(batch_size, 1024 if gpu else batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=model_actors or (1 if gpu else max(1, cpus // 2))),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else 0.5,
    )
    expected = 0
    for batch in _batches(ray, ds, batch_size):
        for r in range(len(batch["path"])):
            index, path = int(batch["index"][r]), str(batch["path"][r])
            if index != expected:
                raise RuntimeError(f"Ray returned row {index} where row {expected} was due")
            expected += 1
            true_label = label_of(path) if label_of else None
            error = str(batch["error"][r])
            if error:
                yield Prediction(path=path, error=error, true_label=true_label)
                continue
            top = [(labels[j], float(p)) for j, p in zip(batch["top_idx"][r], batch["top_p"][r])]
            yield Prediction(path=path, label=top[0][0], confidence=top[0][1], top_k=top, true_label=true_label,
                             pixels=np.asarray(batch["pixels"][r]) if keep_pixels else None)


def _batches(ray, ds, batch_size: int) -> Iterator[dict]:
    try:
        yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)
    except ray.exceptions.RayError as exc:
        cause = str(exc).strip().splitlines()
        reason = next((line for line in reversed(cause) if "Error" in line), cause[-1] if cause else repr(exc))
        raise RayJobError(f"the Ray job failed: {reason.strip()[:400]}") from None
