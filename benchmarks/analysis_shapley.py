"""Shapley attribution of prompt parts (issue 18, spec analysis-and-auditing §1(e)): does it find
the parts a model uses, what does the sampled estimator cost in accuracy, what does exact cost?

  python benchmarks/analysis_shapley.py                         # all three parts (~3-5 min, 2 cores)
  python benchmarks/analysis_shapley.py --workdir runs/quickstart --seeds 0,1,2,3,4

(1) Price game (spec §1(e)). A tiny decoder (L=2, D=64, V=32) is trained in this script on
    `<bos> f f A pA B pB ?` -> the cheaper option (A or B; prices 1-9, never equal), where f f
    are two filler words. Clean set: fillers uniform over 16 words. Spurious set: the fillers
    come from the answer's half of the filler words 80% of the time. Exact Shapley over the five
    parts (filler, 'A', pA, 'B', pB; BOS and '?' permanent), value = P(A), P(B) renormalized,
    on the same 64 evaluation prompts for both models: fillers from one half chosen at random,
    independent of the answer (so any attribution to them is token noise). Reported per seed
    and training length (--steps, default 40 and 400 Adam steps of 128 examples: early, and
    converged): the share of |φ| of the chosen option on the two prices, the filler share, the
    spurious / clean filler-share ratio, accuracy, the efficiency error; expected [recon]:
    clean >= 80% on the prices, ratio >= 3. Then the sampled estimator (antithetic orderings)
    against exact on the first seed's clean model (16 prompts, 6 repetitions per M): RMS
    error vs M orderings, the fitted slope of log error on log M (1/√M is -0.5), and the mean
    stated standard error against the RMS error.
(2) The quickstart model (a trained quickstart workdir, --workdir; skipped when absent) on
    held-out 2-digit ± 2-digit problems: Shapley of the answer's first digit (value over the
    ten digits, renormalized) by prompt part, at two granularities (first operand, operator,
    second operand; and per digit), in 'drop' and 'mask' modes.
(3) Cost of exact Shapley over 10 parts (1024 coalitions): one chunked jitted pass (chunk 256
    and one 1024-row batch) against the same scoring one row per call, side by side.

Writes benchmarks/results/analysis_shapley.json and .png. Absolute times depend on the machine
and its load (recorded); the ratios of part (3) are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from tokenrl import models  # noqa: E402
from tokenrl.analysis import shapley as S  # noqa: E402
from tokenrl.analysis import shapley_rows as R  # noqa: E402

OUT = os.path.join(REPO, "benchmarks", "results", "analysis_shapley")

# ---------------------------------------------------------------- (1) price game

PAD, BOS, QMARK, TOK_A, TOK_B = 0, 1, 2, 3, 4
PRICE0 = 5  # price k (1..9) is id PRICE0 + k - 1
FILLER0, NUM_FILLER = 14, 16  # fillers 14..29: the first half "votes" A, the second half B
GAME_V = 32
PART_NAMES = ["filler", "'A'", "pA", "'B'", "pB"]
GAME_CFG = models.tiny("qwen2", vocab_size=GAME_V, dim=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, mlp_dim=128, max_seq_len=32, pad_id=PAD, bos_id=BOS,
                       eos_ids=(QMARK,))


def draw_games(rng: np.random.Generator, n: int, spurious: float | None
               ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [n,8] = bos f f A pA B pB ?, label [n] in {0: A, 1: B}).

  spurious=None: each filler word uniform over all 16. A float q: both words from the label's
  half with probability q, else from the other half. Evaluation prompts use q = 0.5 (one half,
  independent of the label)."""
  pa = rng.integers(1, 10, n)
  pb = (pa + rng.integers(1, 9, n) - 1) % 9 + 1  # uniform over the 8 prices != pa
  label = (pb < pa).astype(np.int64)  # 1 = B is cheaper
  if spurious is None:
    fill = rng.integers(0, NUM_FILLER, (n, 2))
  else:
    half = np.where(rng.random(n) < spurious, label, 1 - label)
    fill = half[:, None] * (NUM_FILLER // 2) + rng.integers(0, NUM_FILLER // 2, (n, 2))
  tokens = np.stack([np.full(n, BOS), FILLER0 + fill[:, 0], FILLER0 + fill[:, 1],
                     np.full(n, TOK_A), PRICE0 + pa - 1, np.full(n, TOK_B), PRICE0 + pb - 1,
                     np.full(n, QMARK)], 1)
  return tokens.astype(np.int32), label


def _answer_logits(params, tokens):
  logits, _ = models.forward(params, tokens, config=GAME_CFG)
  return logits[:, -1, :]  # [N,V] at '?'


_OPT = optax.adam(3e-3)


@jax.jit
def _train_step(params, state, tokens, label):
  """One Adam step on the answer's cross-entropy at '?' (module level: compiled once for
  every model this script trains)."""
  def loss_fn(p):
    logp = jax.nn.log_softmax(_answer_logits(p, tokens))
    target = jnp.where(label == 0, TOK_A, TOK_B)
    return -jnp.mean(jnp.take_along_axis(logp, target[:, None], 1))
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, state = _OPT.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


def train_game(seed: int, spurious: float | None, *, steps: int, batch: int = 128):
  """params of the tiny decoder after `steps` Adam steps on fresh batches of the game."""
  rng = np.random.default_rng(seed)
  params = models.init_params(GAME_CFG, jax.random.key(seed))
  state = _OPT.init(params)
  loss = float("nan")
  for _ in range(steps):
    tokens, label = draw_games(rng, batch, spurious)
    params, state, loss = _train_step(params, state, tokens, label)
  return params, float(loss)


_accuracy_logits = jax.jit(_answer_logits)


def game_accuracy(params, tokens, label) -> float:
  logits = np.asarray(_accuracy_logits(params, tokens))
  return float(np.mean((logits[:, TOK_B] > logits[:, TOK_A]) == (label == 1)))


def game_shapley(params, tokens: np.ndarray, **kw) -> list[S.ShapleyResult]:
  fn = S.option_value_fn([TOK_A, TOK_B])
  out = []
  for row in tokens:
    parts = [[BOS], row[1:3].tolist(), [TOK_A], [int(row[4])], [TOK_B], [int(row[6])], [QMARK]]
    out.append(S.shapley_attribution(params, parts, config=GAME_CFG, value_fn=fn,
                                     permanent=(0, 6), **kw))
  return out


def shares(results: list[S.ShapleyResult]) -> dict[str, float]:
  """Mean over prompts of the |φ| shares of the chosen option c* (argmax v_full)."""
  price, filler, per_part = [], [], []
  for r in results:
    c = int(np.argmax(r.v_full))
    mag = np.abs(r.phi[:, c])
    per_part.append(mag / mag.sum())
    price.append(S.token_noise_share(r.phi, np.array([0, 0, 1, 0, 1], bool), c))
    filler.append(S.token_noise_share(r.phi, np.array([1, 0, 0, 0, 0], bool), c))
  return {"price_share": float(np.mean(price)), "filler_share": float(np.mean(filler)),
          "part_share": np.mean(per_part, 0).tolist(),
          "efficiency_error": float(max(r.efficiency_error for r in results))}


def price_game(seeds: list[int], steps: list[int], num_eval: int) -> dict:
  """Per seed and training length: both models' shares, accuracy and the filler ratio."""
  rows = []
  for seed in seeds:
    eval_tokens, _ = draw_games(np.random.default_rng(10_000 + seed), num_eval, 0.5)
    test_tokens, test_label = draw_games(np.random.default_rng(20_000 + seed), 2048, 0.5)
    for k in steps:
      t0 = time.perf_counter()
      row = {"seed": seed, "steps": k}
      for name, spurious in (("clean", None), ("spurious", 0.8)):
        params, loss = train_game(seed, spurious, steps=k)
        res = game_shapley(params, eval_tokens)
        row[name] = {"final_train_loss": loss,
                     "accuracy_filler_uninformative": game_accuracy(params, test_tokens,
                                                                    test_label),
                     **shares(res)}
        if seed == seeds[0] and k == steps[-1] and name == "clean":
          clean0 = (params, eval_tokens[:16], res[:16])
      row["filler_ratio"] = row["spurious"]["filler_share"] / row["clean"]["filler_share"]
      row["seconds"] = time.perf_counter() - t0
      rows.append(row)
      c, sp = row["clean"], row["spurious"]
      print(f"  seed {seed}, {k} steps: clean price share {c['price_share']:.3f}, filler "
            f"{c['filler_share']:.3f} (acc {c['accuracy_filler_uninformative']:.3f}); spurious "
            f"filler {sp['filler_share']:.3f} (acc {sp['accuracy_filler_uninformative']:.3f}); "
            f"ratio {row['filler_ratio']:.2f}; {row['seconds']:.0f} s", flush=True)
  return {"runs": rows, "sampled": sampled_error(*clean0)}


def sampled_error(params, tokens, exact: list[S.ShapleyResult],
                  ms=(2, 4, 8, 16, 32, 64, 128, 256), reps: int = 6) -> dict:
  """RMS error of the antithetic permutation estimate vs exact, over prompts × players × reps
  (option c* of each prompt), and the RMS of the stated standard error."""
  out = []
  for m in ms:
    errs, stated = [], []
    for rep in range(reps):
      res = game_shapley(params, tokens, num_permutations=m, rng=1000 * m + rep)
      for r, e in zip(res, exact):
        c = int(np.argmax(e.v_full))
        errs.append(r.phi[:, c] - e.phi[:, c])
        if m >= 4:
          stated.append(r.stderr[:, c])
    out.append({"M": m, "rms_error": float(np.sqrt(np.mean(np.square(errs)))),
                "rms_stated_stderr": float(np.sqrt(np.mean(np.square(stated)))) if stated
                else None})
  logm = np.log([o["M"] for o in out])
  loge = np.log([o["rms_error"] for o in out])
  slope = float(np.polyfit(logm, loge, 1)[0])
  return {"by_M": out, "slope_log_error_vs_log_M": slope, "prompts": len(tokens), "reps": reps}


# ---------------------------------------------------------------- (2) quickstart

def quickstart(workdir: str, num_prompts: int) -> dict:
  from tokenrl.commands import common
  loaded = common.load_model(workdir=workdir)
  tok, config, params = loaded.tokenizer, loaded.config, loaded.params
  examples = [ex for ex in loaded.run.eval_examples
              if all(10 <= x <= 99 for x in ex["operands"]) and ex["op"] in ("add", "sub")]
  digits = [tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
  fn = S.option_value_fn(digits)
  enc = lambda s: tok.encode(s, add_special_tokens=False)
  out = {"workdir": workdir, "model": str(config), "num_prompts": {}}
  split = {"operands": (["first operand", "operator", "second operand"],
                        lambda a, op, b: [enc(a), enc(op), enc(b)]),
           "digits": (["a tens", "a ones", "operator", "b tens", "b ones"],
                      lambda a, op, b: [enc(a[0]), enc(a[1]), enc(op), enc(b[0]), enc(b[1])])}
  for op in ("add", "sub"):
    chosen = [ex for ex in examples if ex["op"] == op][:num_prompts]
    out["num_prompts"][op] = len(chosen)
    for gran, (names, make) in split.items():
      for mode in ("drop", "mask"):
        phis, correct, p_true = [], [], []
        for ex in chosen:
          a, b = (str(x) for x in ex["operands"])
          sym = "+" if op == "add" else "-"
          parts = [[tok.bos_id]] + make(a, sym, b) + [enc("=")]
          res = S.shapley_attribution(params, parts, config=config, value_fn=fn,
                                      permanent=(0, len(parts) - 1), absent_mode=mode)
          c = int(ex["answer"][0])  # the answer's first digit (answers are >= 0)
          phis.append(res.phi[:, c])
          correct.append(int(np.argmax(res.v_full)) == c)
          p_true.append(res.v_full[c])
        phis = np.array(phis)
        out[f"{op}/{gran}/{mode}"] = {
            "parts": names, "mean_phi_true_digit": phis.mean(0).tolist(),
            "sem_phi": (phis.std(0, ddof=1) / np.sqrt(len(phis))).tolist(),
            "mean_abs_share": (np.abs(phis) / np.abs(phis).sum(1, keepdims=True)).mean(0).tolist(),
            "first_digit_accuracy": float(np.mean(correct)),
            "mean_v_full_true_digit": float(np.mean(p_true))}
        print(f"  {op} {gran:8s} {mode:4s}: mean φ(true first digit) "
              + ", ".join(f"{n} {v:+.3f}" for n, v in zip(names, phis.mean(0)))
              + f"; first-digit acc {np.mean(correct):.2f}", flush=True)
  return out


# ---------------------------------------------------------------- (3) cost

def cost(params, config, label: str) -> dict:
  """Exact Shapley over 10 parts (1024 coalitions): chunked jitted pass vs one row per call."""
  rng = np.random.default_rng(0)
  lengths = [2, 1, 3, 2, 1, 2, 3, 1, 2, 2]
  parts = [[config.bos_id if config.bos_id is not None else 3]]
  parts += [rng.integers(3, min(config.vocab_size, 40), k).tolist() for k in lengths]
  parts += [[4]]
  permanent = (0, len(parts) - 1)
  fn = S.option_value_fn([5, 6, 7])
  out = {"model": label, "parts": 10, "coalitions": 1024, "prompt_tokens": sum(map(len, parts))}
  for name, chunk in (("chunk256", 256), ("batch1024", 1024)):
    t = time.perf_counter()
    first = S.shapley_attribution(params, parts, config=config, value_fn=fn,
                                  permanent=permanent, chunk=chunk)
    out[f"{name}_first_call_s"] = time.perf_counter() - t
    times = []
    for _ in range(3):
      t = time.perf_counter()
      S.shapley_attribution(params, parts, config=config, value_fn=fn, permanent=permanent,
                            chunk=chunk)
      times.append(time.perf_counter() - t)
    out[f"{name}_s"] = statistics.median(times)
    out["efficiency_error"] = first.efficiency_error
  # The same scoring one row per call (one compile, 1024 dispatches): the unbatched baseline.
  rows = S.coalition_tokens(parts, S.coalition_masks(10), permanent=permanent)
  t = time.perf_counter()
  R.score_coalitions(params, rows._replace(**{k: v[:1] for k, v in rows._asdict().items()}),
                     config=config, value_fn=fn, hide=False, chunk=1)
  out["row_by_row_compile_s"] = time.perf_counter() - t
  t = time.perf_counter()
  single = R.score_coalitions(params, rows, config=config, value_fn=fn, hide=False, chunk=1)
  out["row_by_row_s"] = time.perf_counter() - t
  np.testing.assert_allclose(S.exact_shapley(single), first.phi, atol=1e-5)
  out["speedup_chunk256_vs_row_by_row"] = out["row_by_row_s"] / out["chunk256_s"]
  out["rows_per_s_chunk256"] = 1024 / out["chunk256_s"]
  print(f"  {label}: exact over 10 parts: chunk 256 {out['chunk256_s']:.2f} s "
        f"(first call {out['chunk256_first_call_s']:.1f} s with compile), one batch of 1024 "
        f"{out['batch1024_s']:.2f} s, row by row {out['row_by_row_s']:.2f} s "
        f"({out['speedup_chunk256_vs_row_by_row']:.1f}x slower than chunk 256)", flush=True)
  return out


# ---------------------------------------------------------------- report

def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  game = result["price_game"]
  last = max(r["steps"] for r in game["runs"])
  runs = [r for r in game["runs"] if r["steps"] == last]
  panels = 3 if result.get("quickstart") else 2
  fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8))
  ax = axes[0]
  x = np.arange(len(PART_NAMES))
  for k, name in enumerate(("clean", "spurious")):
    shares_ = np.array([r[name]["part_share"] for r in runs])  # [seeds,5]
    ax.bar(x + (k - 0.5) * 0.38, shares_.mean(0), 0.38, label=name,
           yerr=[shares_.mean(0) - shares_.min(0), shares_.max(0) - shares_.mean(0)], capsize=2)
  ax.set_xticks(x, PART_NAMES)
  ax.set_ylabel("mean share of |φ| (chosen option)")
  ax.set_title(f"price game, {last} steps, exact Shapley ({len(runs)} seeds, min-max)",
               fontsize=9)
  ax.legend(fontsize=8)
  ax = axes[1]
  by = game["sampled"]["by_M"]
  ms = np.array([b["M"] for b in by])
  ax.loglog(ms, [b["rms_error"] for b in by], "o-", label="RMS error vs exact")
  stated = [(b["M"], b["rms_stated_stderr"]) for b in by if b["rms_stated_stderr"]]
  ax.loglog(*zip(*stated), "s--", label="RMS stated standard error")
  ref = by[0]["rms_error"] * np.sqrt(ms[0] / ms)
  ax.loglog(ms, ref, "k:", label="∝ 1/√M")
  ax.set_xlabel("M orderings (antithetic pairs)")
  ax.set_title(f"sampled estimator, slope {game['sampled']['slope_log_error_vs_log_M']:.2f}",
               fontsize=9)
  ax.legend(fontsize=8)
  if panels == 3:
    ax = axes[2]
    qs = result["quickstart"]
    for k, op in enumerate(("add", "sub")):
      for j, mode in enumerate(("drop", "mask")):
        entry = qs[f"{op}/digits/{mode}"]
        xs = np.arange(len(entry["parts"])) + (2 * k + j - 1.5) * 0.2
        ax.bar(xs, entry["mean_phi_true_digit"], 0.2, yerr=2 * np.array(entry["sem_phi"]),
               capsize=2, label=f"{op}, {mode}")
    ax.set_xticks(np.arange(5), qs["add/digits/drop"]["parts"], fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("mean φ of the true first answer digit")
    ax.set_title("quickstart model, 2-digit ± 2-digit (±2 s.e.)", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", default="0,1,2", help="price-game seeds (comma-separated)")
  p.add_argument("--steps", default="40,400",
                 help="price-game training lengths (comma-separated; the last is the headline)")
  p.add_argument("--num_eval", type=int, default=64, help="price-game evaluation prompts")
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "quickstart"),
                 help="trained quickstart workdir for part (2) (skipped when absent)")
  p.add_argument("--num_prompts", type=int, default=60, help="quickstart prompts per operator")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  start, load = time.perf_counter(), os.getloadavg()
  result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                     capture_output=True, text=True).stdout.strip(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "jax": jax.__version__, "load_average_start": load}
  print("(1) price game", flush=True)
  steps = [int(k) for k in args.steps.split(",")]
  result["price_game"] = price_game(seeds, steps, args.num_eval)
  result["price_game"]["summary_median_min_max"] = {}
  for k in steps:
    runs = [r for r in result["price_game"]["runs"] if r["steps"] == k]
    summary = {name: (statistics.median(v), min(v), max(v)) for name, v in {
        "clean_price_share": [r["clean"]["price_share"] for r in runs],
        "clean_filler_share": [r["clean"]["filler_share"] for r in runs],
        "spurious_filler_share": [r["spurious"]["filler_share"] for r in runs],
        "filler_ratio": [r["filler_ratio"] for r in runs],
        "clean_accuracy": [r["clean"]["accuracy_filler_uninformative"] for r in runs],
        "spurious_accuracy": [r["spurious"]["accuracy_filler_uninformative"] for r in runs],
        "efficiency_error": [max(r["clean"]["efficiency_error"],
                                 r["spurious"]["efficiency_error"]) for r in runs]}.items()}
    result["price_game"]["summary_median_min_max"][str(k)] = summary
    print(f"  {k} steps, {len(runs)} seeds:")
    for name, (med, lo, hi) in summary.items():
      print(f"    {name}: median {med:.4g} (min {lo:.4g}, max {hi:.4g})")
  sm = result["price_game"]["sampled"]
  print("  sampled: " + ", ".join(f"M={b['M']} rms {b['rms_error']:.4f}" for b in sm["by_M"])
        + f"; slope {sm['slope_log_error_vs_log_M']:.3f}")
  if os.path.isdir(os.path.join(args.workdir, "checkpoints")):
    print(f"(2) quickstart model {args.workdir}", flush=True)
    result["quickstart"] = quickstart(args.workdir, args.num_prompts)
    from tokenrl.commands import common
    loaded = common.load_model(workdir=args.workdir)
    cost_model = (loaded.params, loaded.config, "quickstart model (D=128, L=2)")
  else:
    print(f"(2) skipped: no trained quickstart workdir at {args.workdir}")
    result["quickstart"] = None
    params, _ = train_game(0, None, steps=1)
    cost_model = (params, GAME_CFG, "price-game model (D=64, L=2)")
  print("(3) cost", flush=True)
  result["cost"] = cost(*cost_model)
  result["wall_seconds"] = time.perf_counter() - start
  result["load_average_end"] = os.getloadavg()
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT + ".json", "w") as f:
    json.dump(result, f, indent=1)
  plot(result, OUT + ".png")
  print(f"wrote {OUT}.json and .png ({result['wall_seconds']:.0f} s; load average "
        f"{load[0]:.1f} at start, {result['load_average_end'][0]:.1f} at end)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
