"""The repo's folders never shadow another distribution's import name, however code is run.

`kernels` is both the repo's top-level folder of Pallas kernels (imported as `tokenrl.kernels`)
and the import name of Hugging Face's kernel-hub distribution, which transformers >= 5.25
imports at start-up (`from kernels import CUDAProperties, ...`). When the folder was a regular
package, every `from transformers import ...ForCausalLM` run from the repo root (pytest, a
notebook, `python -c`, a script there) failed with "cannot import name 'CUDAProperties' from
'kernels'". Now the folder has no __init__.py (at most a namespace portion, which any regular
package on sys.path beats) and tokenrl/kernels/__init__.py is the package.

`python benchmarks/x.py` puts benchmarks/ at sys.path[0], so a benchmark module named like a
distribution (benchmarks/kernels.py was) shadows it the same way.
"""
import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL_MODULES = ("_common", "logprobs", "paged", "softmax", "tokenselect")

# Run from the repo root: transformers' model classes (whose import pulls in the `kernels`
# distribution when it is installed) together with tokenrl.kernels and one kernel call.
CHECK = textwrap.dedent("""
    import os, sys
    root = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM
    import jax.numpy as jnp
    import tokenrl.kernels
    from tokenrl.kernels import token_logprobs_entropy
    from tokenrl.kernels.logprobs import token_logprobs_entropy as same
    assert token_logprobs_entropy is same
    logp, ent = token_logprobs_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 3]), impl="jnp")
    # uniform over V=4: log-prob = -log 4 = -1.3863, entropy = log 4
    assert abs(float(logp[0]) + 1.3862944) < 1e-5 and abs(float(ent[2]) - 1.3862944) < 1e-5
    import kernels
    where = getattr(kernels, "__file__", None)
    folder = os.path.join(os.path.realpath(root), "kernels")
    assert where is None or not os.path.realpath(where).startswith(folder + os.sep), where
    print("OK", where, sys.path[0])
""")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("PYTHONSAFEPATH", None)  # the point is the default sys.path[0]
  env.pop("PYTHONPATH", None)
  return env


def test_kernels_folder_is_not_a_regular_package():
  assert not (ROOT / "kernels" / "__init__.py").exists(), (
      "kernels/__init__.py makes the repo's kernels/ a regular package that shadows the `kernels` "
      "distribution transformers imports; the package file is tokenrl/kernels/__init__.py")
  assert (ROOT / "tokenrl" / "kernels" / "__init__.py").is_file()
  for name in KERNEL_MODULES:
    assert (ROOT / "kernels" / f"{name}.py").is_file(), name


def test_tokenrl_kernels_modules_come_from_the_kernels_folder():
  import tokenrl.kernels
  import tokenrl.kernels.logprobs
  import tokenrl.kernels.tokenselect
  assert callable(tokenrl.kernels.token_logprobs_entropy)
  assert callable(tokenrl.kernels.select_tokens)
  # Editable install / source tree: the modules are the repo's files (a wheel copies them).
  where = pathlib.Path(tokenrl.kernels.logprobs.__file__).resolve()
  assert where == ROOT / "kernels" / "logprobs.py", where


def test_kernels_name_in_this_process_is_not_the_repo_folder():
  """pytest puts the repo root on sys.path (rootdir insertion): the same rule holds here."""
  spec = importlib.util.find_spec("kernels")
  if spec is None:
    return
  if spec.origin not in (None, "namespace"):
    assert not pathlib.Path(spec.origin).resolve().is_relative_to(ROOT / "kernels"), spec.origin


def test_no_benchmark_module_is_named_like_an_installed_distribution():
  """`python benchmarks/x.py` makes every benchmarks/*.py importable as a top-level module."""
  taken = importlib.metadata.packages_distributions()  # import name -> distributions
  clashes = {p.stem: taken[p.stem] for p in (ROOT / "benchmarks").glob("*.py") if p.stem in taken}
  assert not clashes, f"rename these benchmark modules (they shadow distributions): {clashes}"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -c", "python - (stdin)", "script in the repo root"])
def test_transformers_and_tokenrl_kernels_import_together_from_the_repo_root(how):
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  if how == "python -c":  # sys.path[0] = '' = the repo root
    run = dict(args=[sys.executable, "-c", CHECK])
  elif how == "python - (stdin)":  # what a notebook kernel started in the repo root sees too
    run = dict(args=[sys.executable, "-"], input=CHECK)
  else:  # sys.path[0] = the script's folder = the repo root
    script = ROOT / f"_packaging_check_{uuid.uuid4().hex[:8]}.py"
    script.write_text(CHECK)
    run = dict(args=[sys.executable, str(script), str(ROOT)])
  try:
    out = subprocess.run(**run, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  finally:
    if how == "script in the repo root":
      script.unlink()
  assert out.returncode == 0, f"{how} from {ROOT} failed:\n{out.stderr[-3000:]}"
  assert out.stdout.startswith("OK"), out.stdout
