"""Hostile HF folders and safetensors files: each fails with the file named and what is wrong."""
import json
import os
import pickle
import struct
import zipfile

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import safetensors_io as st

CONFIG = models.tiny("qwen3", vocab_size=40, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf"))
  models.save_hf(path, CONFIG, models.init_params(CONFIG, jax.random.key(0)))
  return path


def _copy(good_folder, tmp_path):
  for name in os.listdir(good_folder):
    with open(os.path.join(good_folder, name), "rb") as f:
      (tmp_path / name).write_bytes(f.read())
  return str(tmp_path), tmp_path / "model.safetensors"


def _raw(header: dict, data: bytes = b"", *, size: int | None = None, enc="utf-8") -> bytes:
  blob = json.dumps(header).encode(enc)
  return struct.pack("<Q", len(blob) if size is None else size) + blob + data


def test_transposed_tensor_with_right_element_count_is_refused(good_folder, tmp_path):
  folder, path = _copy(good_folder, tmp_path)
  tensors = {k: np.array(v) for k, v in st.load_tensors(str(path)).items()}
  key = "model.layers.1.mlp.up_proj.weight"
  assert tensors[key].shape == (48, 32)  # HF [out=F, in=D]
  tensors[key] = np.ascontiguousarray(tensors[key].T)  # same 1536 elements, wrong layout
  st.save_tensors(str(path), tensors)
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.up_proj"
                                       r"\.weight' has shape \(32, 48\), expected \(48, 32\)"):
    models.load_hf(folder)


def test_norm_with_wrong_rank_is_refused(good_folder, tmp_path):
  folder, path = _copy(good_folder, tmp_path)
  tensors = {k: np.array(v) for k, v in st.load_tensors(str(path)).items()}
  tensors["model.norm.weight"] = tensors["model.norm.weight"].reshape(4, 8)
  st.save_tensors(str(path), tensors)
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \(4, 8\), expected \(32,\)"):
    models.load_hf(folder)


def test_pytorch_zip_named_safetensors(good_folder, tmp_path):
  folder, path = _copy(good_folder, tmp_path)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match=r"model\.safetensors: this is a zip archive \(a PyTorch.*"
                                       r"not safetensors.*save_file"):
    models.load_hf(folder)


def test_pickle_named_safetensors(tmp_path):
  path = tmp_path / "model.safetensors"
  path.write_bytes(pickle.dumps({"w": [1.0] * 10}, protocol=4))
  with pytest.raises(ValueError, match=r"model\.safetensors: this is a Python pickle"):
    st.load_tensors(str(path))


def test_truncated_file(good_folder, tmp_path):
  _, path = _copy(good_folder, tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[:-100])
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* lie outside the \d+ data "
                                       r"bytes of the file \(truncated"):
    st.load_tensors(str(path))
  path.write_bytes(data[:200])  # cut inside the header
  with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated.*header length"):
    st.load_tensors(str(path))
  path.write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file \(5 bytes"):
    st.load_tensors(str(path))


def test_huge_header_length_is_bounded(tmp_path):
  path = tmp_path / "x.safetensors"
  path.write_bytes(_raw({}, size=10**12))
  with pytest.raises(ValueError, match=r"x\.safetensors: corrupt or truncated .*header length "
                                       r"1000000000000 bytes"):
    st.read_header(str(path))


def test_header_not_utf8_json(tmp_path):
  path = tmp_path / "x.safetensors"
  path.write_bytes(_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                        b"\0" * 4, enc="utf-32"))
  with pytest.raises(ValueError, match=r"x\.safetensors: corrupt safetensors header: not UTF-8"):
    st.read_header(str(path))
  path.write_bytes(struct.pack("<Q", 5) + b"[1,2]")
  with pytest.raises(ValueError, match=r"a JSON list, expected an object"):
    st.read_header(str(path))


@pytest.mark.parametrize("entry,msg", [
    ({"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}, r"unsupported dtype 'F8_E9'"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, r"shape must be a list of ints"),
    ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, r"shape must be a list of ints"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, r"data_offsets \[4, 0\] lie outside"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 10**9]}, r"lie outside"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, r"holds 4 bytes, shape \[2\] of F32 "
                                                           r"needs 8"),
    ({"dtype": "F32", "shape": [1]}, r"must have dtype, shape and data_offsets"),
    ("oops", r"must have dtype, shape and data_offsets"),
])
def test_bad_entries_named(tmp_path, entry, msg):
  path = tmp_path / "x.safetensors"
  path.write_bytes(_raw({"w": entry}, b"\0" * 4))
  with pytest.raises(ValueError, match=r"x\.safetensors: tensor 'w'.*" + msg):
    st.load_tensors(str(path))


def test_good_file_round_trips(tmp_path):
  path = str(tmp_path / "ok.safetensors")
  want = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0,), np.int8)}
  st.save_tensors(path, want)
  got = st.load_tensors(path)
  assert set(got) == {"a", "b"} and np.array_equal(got["a"], want["a"]) and got["b"].shape == (0,)
