"""Facts shared by the trainer, the exporter and the inference engine.

This module imports nothing heavy: it is read by `mnist-infer --help`.
"""

TOOL_NAME = "mnist-toolkit"
TOOL_VERSION = "0.1.0"

LABELS = tuple(str(d) for d in range(10))
NUM_CLASSES = len(LABELS)

# MNIST layout: white ink on black, 28x28, the digit fitted in a 20x20 box centred by mass.
IMAGE_SIZE = 28
DIGIT_BOX = 20
PIXEL_SCALE = 255.0  # uint8 pixel / PIXEL_SCALE -> model input in [0, 1]

# Tensor names of the ONNX contract.
INPUT_NAME = "pixels"  # float32 [N, 1, 28, 28], values in [0, 1], white ink on black
LOGITS_NAME = "logits"  # float32 [N, 10]
PROBS_NAME = "probs"  # float32 [N, 10], softmax of logits
OUTPUT_NAMES = (LOGITS_NAME, PROBS_NAME)

# Checkpoint (trainer -> exporter) format.
CHECKPOINT_FORMAT = "mnist-toolkit.checkpoint"
CHECKPOINT_VERSION = 1

# ONNX metadata_props keys (exporter -> infer).
META_FORMAT = "mnist.format"
META_FORMAT_VALUE = "mnist-toolkit.onnx/1"
META_LABELS = "mnist.labels"  # JSON list of label strings, index = class id
META_INPUT = "mnist.input"  # JSON object: shape, dtype, scale, ink, centring
META_SOURCE_SHA256 = "mnist.source_sha256"
# JSON: how the exported file was stored: {"kind": "mnist-toolkit-checkpoint", "format_version": 1} for
# mnist-train's model.pt; for files made elsewhere kind "state-dict" | "training-dict" | "module-pickle", with
# "container", "layers" (their names, in order), "activation", "input_scale" and where each came from.
META_SOURCE_FORMAT = "mnist.source_format"
META_SOURCE_TEST_ACCURACY = "mnist.source_test_accuracy"
META_MODEL_CONFIG = "mnist.model_config"
META_RECIPE = "mnist.recipe"
META_VERIFICATION = "mnist.verification"  # JSON: the verification report's summary
META_OPSET = "mnist.opset"
META_VERSIONS = "mnist.versions"  # JSON: torch, onnx, onnxruntime, tool

INPUT_LAYOUT = {
    "shape": ["N", 1, IMAGE_SIZE, IMAGE_SIZE],
    "dtype": "float32",
    "scale": "[0, 1] (uint8 / 255)",
    "ink": "white-on-black",
    "centring": "digit fitted in a 20x20 box keeping aspect ratio, centred by centre of mass in 28x28",
    # Deskewed by image moments after the MNIST layout step (infer.preprocess.deskew). A model file
    # without this key was made before deskewing existed: it reads undeskewed digits.
    "deskew": False,
}


def input_layout(deskew: bool) -> dict:
    """The `mnist.input` metadata of a model trained on (deskewed or plain) MNIST-layout digits."""
    return {**INPUT_LAYOUT, "deskew": bool(deskew)}


# What preprocessing noticed and worked around, one code each: the `warning` column joins them with
# WARNING_SEPARATOR. Codes are stable (users sort and filter by them); their meaning is in README.md.
WARNING_SEPARATOR = ";"
WARN_LINES_REMOVED = "lines-removed"  # ruled, grid or form lines, or a box, taken away from the digit
WARN_THIN_STROKES = "thin-strokes"  # strokes far thinner than MNIST's, thickened
WARN_FAINT_INK = "faint-ink"  # little contrast between ink and paper
WARN_MARKS_REMOVED = "marks-removed"  # sizeable marks away from the digit left out (smudge, dark photo corner, frame)
WARN_SEVERAL_DIGITS = "several-digits"  # two or more digit-sized marks side by side
WARN_LOW_CONFIDENCE = "low-confidence"  # the model's confidence is below --min-confidence

# Rows whose confidence is below this get WARN_LOW_CONFIDENCE (`mnist-infer --min-confidence`).
# Chosen on bench/real_world.py (60 images per kind, seeds 0 and 1, shipped model): below 0.7 lie
# 46-53% of the misreads and 4% of the right answers of the single-digit real-world kinds (on the
# MNIST test set: 57% of the misreads, 3% of the right answers). 0.5 catches only 13-14% of the
# misreads; 0.8 costs 7-9% of the right answers for 57-74%.
DEFAULT_MIN_CONFIDENCE = 0.7
