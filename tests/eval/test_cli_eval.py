"""`tokenrl eval` end to end on tiny checkpoints: an HF folder with --task and a control, a
workdir, the report files, the frontier of earlier result files, and the errors a researcher
hits first (k > n, a task without a verifier, a workdir without a model, budget without a head)."""

import json
import os

import jax
import pytest
from absl import app, flags

from tests.eval.test_suite import TINY, _result, tiny_params
from tests.robustness.conftest import tiny_config
from tokenrl import cli, models
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.eval import report



def _cli(*args):
  """Run `tokenrl <args>` in this process (absl flags reparsed)."""
  f = flags.FLAGS
  f.unparse_flags()
  return cli.main(f(["tokenrl", *args]))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf"))
  models.save_hf(path, TINY, tiny_params(), tokenizer=CharTokenizer())
  return path


def test_eval_hf_model_writes_the_report(hf_folder, tmp_path, capsys):
  out = str(tmp_path / "report")
  _cli("eval", f"--model={hf_folder}", "--task=arith", "--n=4", "--k=1,4", "--limit=3",
       "--max_new_tokens=5", "--prices=in=1,out=2", f"--out={out}")
  got = capsys.readouterr()
  assert "| greedy |" in got.out and "| bom@4 |" in got.out and "| pass@4 (oracle) |" in got.out
  assert "control: none" in got.out and "wrote " in got.err
  assert sorted(os.listdir(out)) == ["accuracy_vs_tokens.png", "cost_of_pass.png",
                                     "results.json", "results.md"]
  (res,) = report.load_results(os.path.join(out, "results.json"))
  assert res["label"] == os.path.basename(hf_folder) and res["task"] == "arith"
  assert res["num_problems"] == 3 and res["control"] == {"method": "none"}
  assert res["prices"] == {"in": 1.0, "out": 2.0} and res["temperature"] == 1.0
  assert [r["name"] for r in res["strategies"]] == [
      "greedy", "pass@1", "pass@4", "maj@1", "maj@4", "bon@1", "bon@4", "bom@1", "bom@4",
      "ffs@1", "ffs@4"]
  for row in res["strategies"]:
    assert 0 < row["completion_tokens"] <= row["k"] * 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir as `tokenrl train` leaves it (config.json + one checkpoint), without training."""
  from tokenrl.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from tokenrl.train.setup import build_model, build_tokenizer  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("workdir"))
  cfg = tiny_config()
  cfg.model.mlp_dim = 48  # the shapes of TINY: load_workdir's throwaway init reuses its ops
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(cfg.to_json_best_effort(indent=2))
  config, _ = build_model(cfg, build_tokenizer(cfg), jax.random.key(0))
  assert config == TINY
  ckpt = Checkpointer(path, async_save=False)
  ckpt.save(1, {"params": tiny_params()}, {"params_path": ["params"]})
  ckpt.close()
  return path


def test_eval_workdir_uses_its_task_and_sampler_with_a_control(workdir, capsys):
  _cli("eval", f"--workdir={workdir}", "--strategies=greedy", "--limit=2",
       "--control=cyclic_reflex")
  out = capsys.readouterr().out
  # The run's own settings: task arith, sampler.max_new_tokens 4; the control from the flag
  # over the run's sampler.control defaults ('?' reflection, '#' think end).
  assert f"### {os.path.basename(workdir)}" in out
  assert "task arith, 2 problems, n=0 samples" in out and "max 4 new tokens" in out
  assert "control: cyclic_reflex (think_end='#', reflection='?'" in out
  assert "| greedy |" in out and "maj@" not in out


def test_workdir_without_a_model(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    f.write(tiny_config().to_json_best_effort())
  with pytest.raises(app.UsageError, match=r"has no model to evaluate \(no checkpoint in .*train "
                                           r"it first"):
    _cli("eval", f"--workdir={tmp_path}", "--strategies=greedy")
  with pytest.raises(app.UsageError, match="not a tokenrl workdir"):
    _cli("eval", f"--workdir={tmp_path / 'missing'}")


@pytest.mark.parametrize("args,message", [
    (["--n=4", "--k=1,8"], r"every k must be in \[1, n=4\].*got \[8\]"),
    (["--strategies=greedy,best"], "strategies: expected a non-empty subset"),
    (["--alpha=2"], r"--alpha must be a frequency in \[0, 1\], got 2"),
    (["--prices=in=1"], r"--prices: .*missing field\(s\) \['out'\]"),
    (["--temperature=0"], "--temperature must be > 0"),
    (["--task=poetry"], "--task 'poetry' has no verifier"),
    (["--task=arith", "--control=budget"], "sampler.control.head: budget guidance needs"),
    (["--task=arith", "--control=budget", "--head=/nonexistent/h.safetensors"],
     "sampler.control.head: no such file '/nonexistent/h.safetensors'"),
    ([], r"an HF folder has no task; pass --task"),
])
def test_eval_errors_name_the_fix(hf_folder, args, message):
  with pytest.raises(app.UsageError, match=message):
    _cli("eval", f"--model={hf_folder}", "--limit=2", *args)


def test_eval_needs_something_to_evaluate():
  with pytest.raises(app.UsageError, match="eval needs --workdir"):
    _cli("eval")


def test_frontier_of_earlier_results(tmp_path, capsys):
  paths = []
  for label, v in (("A", {"greedy": [2.0, float("inf"), 5.0]}), ("B", {"maj@4": [3.0, 4.0, 6.0]})):
    paths.append(report.write_report(str(tmp_path / label), [_result(label, v)])["results.json"])
  out = str(tmp_path / "both")
  _cli("eval", f"--results={','.join(paths)}", f"--out={out}")
  text = capsys.readouterr().out
  assert "### Frontier cost-of-pass" in text and "frontier cost-of-pass **3.67**" in text
  assert "| A:greedy | 2 | 0.667 |" in text and "| B:maj@4 | 1 | ∞ |" in text
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert [r["label"] for r in saved["results"]] == ["A", "B"]
  assert saved["frontier"]["per_problem"] == [2.0, 4.0, 5.0]
