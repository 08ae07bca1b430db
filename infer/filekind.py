"""What kind of file is this? Magic bytes -> a name, so a wrong file gets its fix in one line.

mnist-export sniffs its CHECKPOINT and mnist-infer its --model with this one module; each says in its own
words what it takes. Reads the first bytes (and a zip's table of contents, or a candidate ONNX file's
protobuf); never unpickles, never decodes an image. Imports nothing heavy: onnx only to confirm an ONNX
candidate, and only when asked (`parse_onnx`).
"""
from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# torch.save's legacy (pre-1.6) format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
GIT_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
HEAD = 4096



@dataclass(frozen=True)
class FileKind:
    """`name`: torch-zip, torch-legacy, safetensors, onnx, torchscript, pickle, json, text, git-lfs-pointer,
    image, hdf5, numpy, keras, zip, damaged, empty, unknown. `what`: words for a message; `fix`: what
    to do instead, when there is something."""

    name: str
    what: str
    fix: str = ""
    damaged: bool = False  # the right kind of file, cut short or corrupted

    @property
    def pytorch(self) -> bool:
        """A file of PyTorch weights (what mnist-export reads)."""
        return self.name in ("torch-zip", "torch-legacy", "safetensors")


def sniff(path: str | Path, *, parse_onnx: bool = True) -> FileKind:
    """Name the kind of file at `path` from its first bytes (raises OSError when unreadable).

    An ONNX candidate is confirmed by parsing it with onnx when `parse_onnx` and onnx is installed;
    otherwise its first byte decides (mnist-infer leaves the rest to ONNX Runtime, and saves the import).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEAD)
    if not head:
        return FileKind("empty", "an empty file (0 bytes)")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(path, head)
    if head.startswith(TORCH_LEGACY_MAGIC):
        return FileKind("torch-legacy", "a torch.save file in the legacy (pre-1.6) format")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return FileKind("pickle", "a plain Python pickle (not torch.save's format)",
                        "it is not opened, since unpickling it could run code; save the model with torch.save")
    if _is_safetensors(path, head):
        return FileKind("safetensors", "a safetensors file")
    for magic, fmt in IMAGE_MAGIC:
        if head.startswith(magic):
            return _image(fmt, path)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _image("WebP", path)
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return _image("HEIF/AVIF", path)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return FileKind("hdf5", "an HDF5 file (a Keras .h5 model?)",
                        "for a Keras/TensorFlow model, convert it to ONNX (tf2onnx) and use mnist-infer --model")
    if head.startswith(b"\x93NUMPY"):
        return FileKind("numpy", "a NumPy .npy array")
    if head.startswith(GIT_LFS_POINTER):
        return FileKind("git-lfs-pointer", "a Git LFS pointer, not the file itself",
                        "fetch the real file with: git lfs pull")
    if _is_onnx(path, head, parse_onnx):
        return FileKind("onnx", "an ONNX model (already exported)",
                        f"classify with it: mnist-infer IMAGES --model {path}; or re-prove it against its "
                        f"checkpoint: mnist-export CHECKPOINT --check {path}")
    text = _text(head)
    if text is not None:
        stripped = text.lstrip()
        if stripped[:1] in ("{", "[") and _is_json(path):
            return FileKind("json", "a JSON file")
        first = stripped.splitlines()[0][:40] if stripped else ""
        return FileKind("text", f"a text file (starting {first!r})" if first else "a text file (blank)")
    return FileKind("unknown", f"a file of an unknown kind (first bytes {head[:8].hex(' ')})")


def _zip_kind(path: Path, head: bytes) -> FileKind:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        # The zip's table of contents sits at its end; the first entry's name (local header, offset 30)
        # still says whether torch.save wrote it.
        (length,) = struct.unpack("<H", head[26:28]) if len(head) >= 30 else (0,)
        first = head[30 : 30 + length]
        if first.endswith(b"/data.pkl") or first == b"data.pkl":
            return FileKind("damaged", "a torch.save file that is truncated or corrupt (its zip archive is "
                            "incomplete)", "copy or save it again", damaged=True)
        return FileKind("damaged", "a zip archive that is truncated or corrupt", damaged=True)
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return FileKind("torchscript", "a TorchScript archive (torch.jit.save)",
                        f"save its weights where torch is installed: torch.save(torch.jit.load('{path.name}')"
                        ".state_dict(), 'weights.pt'), then export weights.pt")
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return FileKind("torch-zip", "a torch.save file")
    if names and all(n.endswith(".npy") for n in names):
        return FileKind("numpy", "a NumPy .npz archive")
    if "config.json" in names and any(n.endswith(".h5") for n in names):
        return FileKind("keras", "a Keras .keras model",
                        "for a Keras model, convert it to ONNX (tf2onnx) and use mnist-infer --model")
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return FileKind("zip", f"a zip archive ({shown or 'empty'})")


def _image(fmt: str, path: Path) -> FileKind:
    return FileKind("image", f"a {fmt} image", f"to classify it: mnist-infer {path}")


def _is_safetensors(path: Path, head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= path.stat().st_size - 8


def _is_onnx(path: Path, head: bytes, parse: bool) -> bool:
    # A ModelProto starts with field 1 (ir_version, varint) or, rarely, another small field tag.
    if head[:1] not in (b"\x08", b"\x12", b"\x1a", b"\x3a"):
        return False
    if not parse:
        return head[:1] == b"\x08"
    try:
        import onnx
    except ImportError:
        return head[:1] == b"\x08"
    try:
        proto = onnx.ModelProto.FromString(path.read_bytes())
    except Exception:  # protobuf's DecodeError, or bytes that are not a message at all
        return False
    return proto.ir_version > 0 and proto.HasField("graph")


def _text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a character cut by the HEAD boundary
            return head[: exc.start].decode("utf-8")
        return None


def _is_json(path: Path) -> bool:
    if path.stat().st_size > 64 << 20:
        return True  # too big to parse for a message; the first character said JSON
    try:
        json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return True
