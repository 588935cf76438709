"""read_jsonl: every line is an example or an error naming file and line."""
import json

import pytest

from tokenrl.data.jsonl import read_jsonl, write_jsonl


def test_round_trip_keeps_extra_keys(tmp_path):
  path = tmp_path / "d.jsonl"
  rows = [{"prompt": "2+3=", "answer": "5", "source": "x"},
          {"prompt": [{"role": "user", "content": "hi"}], "answer": 7, "id": 3}]
  assert write_jsonl(path, rows) == 2
  path.write_text(path.read_text() + "\n  \n")  # blank lines are not examples
  got = read_jsonl(path)
  assert got == [rows[0], dict(rows[1], answer="7")]


@pytest.mark.parametrize("line,msg", [
    ('{"prompt": "a", "answer": ', "malformed JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"prompt": "a"}', r"missing key\(s\) \['answer'\]"),
    ('{"prompt": 3, "answer": "b"}', "'prompt' must be a string"),
    ('{"prompt": "a", "answer": true}', "'answer' must be a string or a number"),
    ('{"prompt": "a", "answer": null}', "'answer' must be a string or a number"),
    ('{"prompt": [{"role": "user"}], "answer": "b"}', r"'prompt'\[0\]\['content'\]"),
    ('{"prompt": [], "answer": "b"}', "'prompt' is an empty message list"),
])
def test_errors_name_file_and_line(tmp_path, line, msg):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"prompt": "ok", "answer": "1"}) + "\n\n" + line + "\n")
  with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {msg}"):
    read_jsonl(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
    read_jsonl(tmp_path / "nothing.jsonl")
