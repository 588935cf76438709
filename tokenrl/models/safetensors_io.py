"""Minimal safetensors reader/writer on numpy memmaps (bf16 through ml_dtypes).

The `safetensors` package's numpy backend cannot represent bf16; reading the format directly
gives zero-copy memmaps of every dtype, so a loader can place one tensor at a time on its
target devices without a second host copy. Format: u64 little-endian header length, a JSON
header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
"""

from __future__ import annotations

import json
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


def read_header(path: str) -> dict:
  """The JSON header of a .safetensors file (without '__metadata__')."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (size,) = struct.unpack("<Q", raw)
    try:
      header = json.loads(f.read(size))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  return header


def load_tensors(path: str) -> dict[str, np.ndarray]:
  """name -> read-only memmap view for every tensor in `path`."""
  header = read_header(path)
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
  base = 8 + size
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    expected = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
    if end - begin != expected:
      raise ValueError(f"{path}: tensor {name!r} holds {end - begin} bytes, shape "
                       f"{info['shape']} of {info['dtype']} needs {expected}")
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
