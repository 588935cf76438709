"""tokenrl/commands/common.py: the JSONL reader and flag types every analysis command shares."""

import argparse

import pytest

from tokenrl.commands import common


def test_read_prompt_rows(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "1+1=", "target": "2"}\n\n{"prompt": "3+4=", "answer": 7}\n')
  assert common.read_prompt_rows(str(path), "--pairs", ("target", "answer")) == [
      ("1+1=", "2"), ("3+4=", "7")]
  assert common.read_prompt_rows(str(path), "--refs", need_answer=False)[1] == ("3+4=", "7")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": 3}\n')
  with pytest.raises(SystemExit, match=r"bad.jsonl:2: expected \{\"prompt\": str, \"answer\": str\}"):
    common.read_prompt_rows(str(bad), "--prompts")
  bad.write_text('{"prompt": "1+1=",\n')
  with pytest.raises(SystemExit, match=r"bad.jsonl:1: malformed JSON"):
    common.read_prompt_rows(str(bad), "--prompts")
  with pytest.raises(SystemExit, match=r"--pairs: '.*nope.jsonl' does not exist"):
    common.read_prompt_rows(str(tmp_path / "nope.jsonl"), "--pairs")
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(SystemExit, match="holds no rows"):
    common.read_prompt_rows(str(tmp_path / "empty.jsonl"), "--refs", need_answer=False)


def test_int_list_and_table():
  assert common.int_list("4,6, 8,") == (4, 6, 8) and common.int_list("") == ()
  with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers, got '4,x'"):
    common.int_list("4,x")
  assert common.format_table(["a", "bb"], [[1, 0.5], ["xyz", 2]]).splitlines() == [
      "a    bb", "---  ------", "1    0.5000", "xyz  2"]


def test_cli_dispatches_analyze_and_audit(capsys):
  from tokenrl import cli
  assert cli._tool_command(["tokenrl", "analyze"]) == 2
  assert "tokenrl analyze {shapley|af1|control}" in capsys.readouterr().err
  assert cli._tool_command(["tokenrl", "audit", "nope"]) == 2
  assert "tokenrl audit {coin|palace}" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # argparse --help of the tool itself: exit 0
    cli._tool_command(["tokenrl", "analyze", "af1", "--help"])
  assert e.value.code == 0 and "tokenrl analyze af1" in capsys.readouterr().out
