"""mnist-infer: classify folders of digit images with ONNX Runtime (no torch).

    from infer import Classifier, classify_paths, load_digit
    clf = Classifier("model.onnx", provider="cpu")
    probs = clf.predict(pixels)               # float32 [N,28,28] in [0,1] -> [N,10]
    for p in classify_paths(["scans/"], clf):  # a generator of Prediction rows
        print(p.path, p.prediction, p.confidence, p.label, p.warning, p.error)

Prediction's fields are the output files' columns: `prediction` (the digit read), `confidence`,
`top_k`, `digits` (several digits, multi_digit=True), `label` (the true label, when known),
`warnings`, `error`. `classify_batches` gives the same rows as arrays, a batch at a time.

Names are imported lazily so that `import infer` (and `mnist-infer --help`) stays fast.
"""
from infer.contract import TOOL_VERSION as __version__

_LAZY = {
    "Classifier": "infer.engine",
    "ModelError": "infer.engine",
    "ProviderError": "infer.engine",
    "classify_paths": "infer.pipeline",
    "classify_batches": "infer.pipeline",
    "ClassifyOptions": "infer.pipeline",
    "Prediction": "infer.pipeline",
    "load_digit": "infer.preprocess",
    "to_mnist": "infer.preprocess",
    "prepare_file": "infer.preprocess",
    "Prepared": "infer.preprocess",
    "deskew": "infer.preprocess",
    "ImageError": "infer.preprocess",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infer' has no attribute {name!r}")
