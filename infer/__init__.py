"""mnist-infer: classify folders of digit images with ONNX Runtime (no torch)."""
from infer.contract import TOOL_VERSION as __version__

__all__ = ["__version__"]
