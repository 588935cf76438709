"""Layers import downward only (DESIGN §1): every `import` of every tokenrl module, including
the ones inside functions, goes to its own layer or a lower one, so there are no import circles.

  0  data, models, objectives, kernels, envs, optim, types   (the pure / host building blocks)
  1  rollout                                                 (the sampler over models)
  2  methods, config                                         (hooks over objectives + rollout;
                                                              tokenrl/config.py is the base
                                                              config, whose `rl` section holds
                                                              one sub-section per method)
  3  eval, analysis, audit                                 (tools over models, rollout, methods)
  4  train
  5  cli, commands                                          (commands: `tokenrl analyze|audit`)

`optim` and `types` are shared low-level modules (they import nothing of tokenrl but each
other); `config` sits with `methods` because it builds the `rl` section from the registered
methods (tokenrl/methods/config.py).
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "tokenrl")

LAYERS = {
    "data": 0, "models": 0, "objectives": 0, "kernels": 0, "envs": 0, "optim": 0, "types": 0,
    "rollout": 1,
    "methods": 2, "config": 2,
    "eval": 3, "analysis": 3, "audit": 3,
    "train": 4,
    "cli": 5, "commands": 5,
}

def _component(module: str) -> str | None:
  """'tokenrl.train.rl_loop' -> 'train'; 'tokenrl' itself -> None (the package root)."""
  parts = module.split(".")
  if parts[0] != "tokenrl" or len(parts) == 1:
    return None
  return parts[1]


def _modules():
  for dirpath, _, files in os.walk(ROOT):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, os.path.join(ROOT, ".."))
        module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
        yield module, path


def imported_modules(path: str, module: str) -> list[tuple[int, str]]:
  """(line, absolute module) of every import in the file, at any depth (functions included)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the package
        pkg = package.split(".")
        pkg = pkg[:len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
      out.append((node.lineno, base))
      # `from tokenrl import train` imports the subpackage train.
      out += [(node.lineno, f"{base}.{a.name}") for a in node.names if base == "tokenrl"]
  return out


def test_every_component_has_a_layer():
  names = {n.removesuffix(".py") for n in os.listdir(ROOT)
           if not n.startswith(("_", ".")) and n != "__pycache__"}
  assert names <= set(LAYERS), f"give these a layer in tests/test_layers.py: {names - set(LAYERS)}"


def test_imports_go_downward_only():
  bad = []
  for module, path in _modules():
    mine = _component(module)
    if mine is None:
      continue
    for line, target in imported_modules(path, module):
      theirs = _component(target)
      if theirs is None or theirs == mine:
        continue
      if LAYERS[theirs] > LAYERS[mine]:
        bad.append(f"{os.path.relpath(path, os.path.join(ROOT, '..'))}:{line} ({mine}, layer "
                   f"{LAYERS[mine]}) imports {target} ({theirs}, layer {LAYERS[theirs]})")
  assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("source,expected", [
    ("from tokenrl.train import rl_loop\n", ["tokenrl.train"]),
    ("def f():\n  import tokenrl.cli\n", ["tokenrl.cli"]),
    ("from tokenrl import train\n", ["tokenrl", "tokenrl.train"]),
    ("from . import steps\n", ["tokenrl.methods"]),
])
def test_import_parser_sees_function_level_and_relative_imports(tmp_path, source, expected):
  path = tmp_path / "mod.py"
  path.write_text(source)
  assert [m for _, m in imported_modules(str(path), "tokenrl.methods.mod")] == expected
