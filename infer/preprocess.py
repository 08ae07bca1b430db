"""Image -> MNIST-format model input: the one implementation, shared by infer, the exporter and the tests."""
from __future__ import annotations

import numpy as np

from infer.contract import IMAGE_SIZE, PIXEL_SCALE


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
    """MNIST-format uint8 images [N,28,28] -> float32 model input [N,1,28,28] in [0,1]."""
    images_u8 = np.asarray(images_u8)
    return (images_u8.astype(np.float32) / np.float32(PIXEL_SCALE)).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
