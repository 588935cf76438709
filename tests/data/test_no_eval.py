"""Static check: no code in tokenrl evaluates text (eval/exec/sympify/parse_expr).

Scans Python tokens, so the words may appear in comments and docstrings (e.g. "never eval").
Attribute calls such as `jax.eval_shape(...)` or `module.eval()` are not the builtins.
"""
import io
import pathlib
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN_CALLS = {"eval", "exec"}
FORBIDDEN_NAMES = {"sympify", "parse_expr"}


def _violations(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
  out = []
  toks = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
          if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT)]
  for i, t in enumerate(toks):
    if t.type != tokenize.NAME:
      continue
    prev = toks[i - 1].string if i else ""
    nxt = toks[i + 1].string if i + 1 < len(toks) else ""
    prev_name = toks[i - 2].string if i >= 2 else ""
    builtin = prev != "." or prev_name == "builtins"
    if (t.string in FORBIDDEN_CALLS and nxt == "(" and builtin) or t.string in FORBIDDEN_NAMES:
      out.append(f"{path.relative_to(root)}:{t.start[0]}: {t.string}")
  return out


def test_detector_catches_and_ignores(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("x = eval('1')\nimport builtins\nbuiltins.exec('y=1')\n"
                 "from sympy import sympify\n")
  ok = tmp_path / "ok.py"
  ok.write_text('"""never eval( text"""\n# exec( no\nm.eval()\njax.eval_shape(f)\ns = "eval("\n')
  assert [v.split(": ")[1] for v in _violations(bad, tmp_path)] == ["eval", "exec", "sympify"]
  assert _violations(ok, tmp_path) == []


def test_no_eval_in_sources():
  files = sorted((ROOT / "tokenrl").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
  assert files
  violations = [v for f in files for v in _violations(f)]
  assert not violations, "text evaluation found:\n" + "\n".join(violations)
