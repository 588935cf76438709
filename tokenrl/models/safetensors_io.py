"""Minimal safetensors reader/writer on numpy memmaps (bf16 through ml_dtypes).

The `safetensors` package's numpy backend cannot represent bf16; reading the format directly
gives zero-copy memmaps of every dtype, so a loader can place one tensor at a time on its
target devices without a second host copy. Format: u64 little-endian header length, a JSON
header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


MAX_HEADER_BYTES = 100 << 20  # Real headers are KiB to a few MiB; 10^12 is a corrupt file.
_CONVERT_HINT = ("convert it once with torch + safetensors (outside tokenrl, which never "
                 "unpickles): `from safetensors.torch import save_file; "
                 "save_file(torch.load(path, weights_only=True), 'model.safetensors')`, or "
                 "`model.save_pretrained(out, safe_serialization=True)` in transformers")


def _sniff_not_safetensors(path: str, head: bytes) -> str | None:
  """What `path` is instead of safetensors (from its first bytes), or None."""
  if head[:4] == b"PK\x03\x04":
    return f"{path}: this is a zip archive (a PyTorch torch.save checkpoint), not safetensors; "
  if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
    return f"{path}: this is a Python pickle (a PyTorch checkpoint), not safetensors; "
  return None


def _read_header_raw(path: str) -> tuple[dict, int, int]:
  """(header dict with '__metadata__', header length, file size); every check names the file."""
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file ({file_size} bytes; the format starts "
                       "with an 8-byte header length)")
    other = _sniff_not_safetensors(path, raw)
    if other:
      raise ValueError(other + _CONVERT_HINT)
    (size,) = struct.unpack("<Q", raw)
    if size > MAX_HEADER_BYTES or size > file_size - 8:
      raise ValueError(
          f"{path}: corrupt or truncated safetensors file: header length {size} bytes, but the "
          f"file has {file_size} bytes and headers are at most {MAX_HEADER_BYTES} bytes")
    blob = f.read(size)
  try:
    text = blob.decode("utf-8")  # The format says UTF-8 (json.loads(bytes) would guess UTF-32).
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: corrupt safetensors header: not UTF-8 (byte {e.start})") from None
  try:
    header = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: corrupt safetensors header: {e}") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: corrupt safetensors header: a JSON {type(header).__name__}, "
                     "expected an object")
  return header, size, file_size


def _check_entry(path: str, name: str, info: object, data_size: int) -> None:
  """Validates one header entry: known dtype, shape of ints >= 0, offsets inside the data."""
  if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
    raise ValueError(f"{path}: tensor {name!r}: header entry must have dtype, shape and "
                     f"data_offsets, got {info!r:.200}")
  dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  if dtype not in _DTYPES:
    raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; known: "
                     f"{sorted(_DTYPES)}")
  if (not isinstance(shape, list)
      or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
    raise ValueError(f"{path}: tensor {name!r}: shape must be a list of ints >= 0, got {shape!r:.200}")
  if (not isinstance(offsets, list) or len(offsets) != 2
      or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1] <= data_size):
    raise ValueError(f"{path}: tensor {name!r}: data_offsets {offsets!r:.200} lie outside the "
                     f"{data_size} data bytes of the file (truncated or corrupt)")
  expected = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
  if offsets[1] - offsets[0] != expected:
    raise ValueError(f"{path}: tensor {name!r} holds {offsets[1] - offsets[0]} bytes, shape "
                     f"{shape} of {dtype} needs {expected}")


def read_header(path: str) -> dict:
  """The JSON header of a .safetensors file (without '__metadata__'), every entry validated.

  Raises:
    ValueError naming the file and what is wrong: shorter than 8 bytes, a PyTorch zip/pickle
    file under a .safetensors name, a header length above MAX_HEADER_BYTES or the file size,
    a header that is not UTF-8 JSON, an unknown dtype, a bad shape, data offsets outside the
    file (truncated), a byte count that does not match shape x dtype.
  """
  header, size, file_size = _read_header_raw(path)
  header.pop("__metadata__", None)
  for name, info in header.items():
    _check_entry(path, name, info, file_size - 8 - size)
  return header


def load_tensors(path: str) -> dict[str, np.ndarray]:
  """name -> read-only memmap view for every tensor in `path` (validated by `read_header`)."""
  header = read_header(path)
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
  base = 8 + size
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    begin, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    out[name] = mm[base + begin:base + end].view(dtype).reshape(info["shape"])
  return out


def save_tensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
  """Write `tensors` (numpy arrays, bf16 via ml_dtypes) to one .safetensors file."""
  header, offset = {}, 0
  arrays = {}
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    arrays[name] = arr
    offset += arr.nbytes
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in sorted(arrays):
      f.write(arrays[name].tobytes())
  os.replace(tmp, path)
