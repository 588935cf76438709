"""`tokenrl audit coin`: the CoIn hidden-token audit (tokenrl.audit.coin), end to end on a model.

  tokenrl audit coin --workdir runs/quickstart [--num_traces 400 --block_size 8 --out coin.png]
  tokenrl audit coin --model HF_DIR ...

The model plays both roles. As the provider's reasoning model it writes hidden traces: for an
arithmetic prompt, G sampled attempts (`tokenrl.rollout.sample`), each restating the problem,
concatenated [recon fixture]; the visible answer is the prompt and the most frequent attempt.
As the auditor's frozen encoder it embeds blocks, tokens and answers. Half the traces are
inflated (naive: random or repeated tokens appended; adaptive: blocks spliced in from another
prompt's trace), Models A and B train on honest traces, the DeepSet verifier on honest vs
inflated ones, and held-out traces are audited. Printed: detection AUC per attack (and, for
reference, the AUC of the trace length alone), commit/verify round trips of honest traces, and
the detection rate against s; the PNG plots the last one.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import numpy as np

from tokenrl.audit import coin, merkle
from tokenrl.commands.common import add_model_args, format_table, int_list, load_model, save_figure

ATTACKS = ("naive_random", "naive_repeat", "splice")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every knob of one experiment (the CLI flags)."""
  num_traces: int = 400
  attempts: tuple[int, int] = (4, 12)   # G per trace, uniform in [lo, hi]
  max_new_tokens: int = 8
  temperature: float = 1.0
  block_size: int = 8
  samples: tuple[int, ...] = (2, 4, 8, 16, 32)  # s values; the verifier trains on all of them
  main_samples: int = 16                # s of the reported AUCs
  extra: tuple[float, ...] = (0.25, 0.5, 1.0)  # inflated tokens as a fraction of m
  features: str = "hidden"              # FrozenEncoder features: 'hidden' | 'input'
  head_steps: int = 3000
  verifier_steps: int = 3000
  pairs: int = 8192                     # training pairs for each of Models A and B
  tiers: str = "add:1-2,sub:1-2"
  seed: int = 0


def sample_attempts(params: Any, config: Any, tokenizer: Any, prompts: Sequence[str], *,
                    settings: Settings, rng: np.random.Generator,
                    batch: int = 64) -> list[tuple[list[int], list[list[int]]]]:
  """(prompt ids without bos, attempts[hi] of completion ids up to and including the stop
  token) per prompt, sampled with the tokenrl sampler."""
  from tokenrl.rollout import sample
  hi = settings.attempts[1]
  out = []
  for start in range(0, len(prompts), batch):
    part = prompts[start:start + batch]
    roll = sample(params, [tokenizer.encode(p) for p in part], config=config,
                  rng=jax.random.key(int(rng.integers(2**31))),
                  max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                  num_samples=hi)
    tokens, mask = np.asarray(roll.tokens), np.asarray(roll.mask)  # [B·G, T], row b·G + g
    for b, p in enumerate(part):
      out.append((tokenizer.encode(p, add_special_tokens=False),
                  [tokens[b * hi + g][mask[b * hi + g] > 0].tolist() for g in range(hi)]))
  return out


def compose(prompt: list[int], attempts: Sequence[list[int]], stop: set[int]
            ) -> tuple[np.ndarray, np.ndarray]:
  """(hidden [m], visible [n]): the attempts, each after the restated prompt, concatenated;
  the visible text is the prompt followed by the most frequent attempt (stop tokens dropped)."""
  hidden = sum((prompt + a for a in attempts), [])
  answers = collections.Counter(tuple(t for t in a if t not in stop) for a in attempts)
  return (np.asarray(hidden, np.int32),
          np.asarray(prompt + list(answers.most_common(1)[0][0]), np.int32))


def _leaf_batch(traces: Sequence[coin.EncodedTrace], s_per_trace: Sequence[int], width: int,
                rng: np.random.Generator, block_size: int):
  """Sampled fingerprints [n,width,2E], slots [n,width], leaf masks [n,width], answers [n,E]."""
  n, e = len(traces), traces[0].block_emb.shape[1]
  fps = np.zeros((n, width, 2 * e), np.float32)
  slot = np.zeros((n, width), np.int32)
  mask = np.zeros((n, width), np.float32)
  for r, (t, s) in enumerate(zip(traces, s_per_trace)):
    s = min(s, t.tokens.size)
    idx = coin.sample_indices(rng, t.tokens.size, s)
    fps[r, :s] = t.fingerprints[idx]  # what the provider would open for these leaves
    slot[r, :s], _ = coin.block_slots(idx, fps[r, :s], block_size=block_size)
    slot[r, s:] = np.arange(s, width)  # unused slots point at themselves, masked out
    mask[r, :s] = 1.0
  return fps, slot, mask, np.stack([t.answer_emb for t in traces])


@jax.jit
def _scores(head_a, head_b, fps, slot, mask, answers):
  return jax.vmap(coin.block_scores, (None, None, 0, 0, 0, 0))(head_a, head_b, fps, slot, mask,
                                                              answers)


_verify_batch = jax.jit(jax.vmap(coin.deepset_verifier_apply, (None, 0, 0)))
_head_batch = jax.jit(coin.head_apply)


def _p_benign(verifier, scores, masks) -> np.ndarray:
  return np.asarray(_verify_batch(verifier, scores, masks))


@dataclasses.dataclass(frozen=True)
class Cases:
  """The traces of one experiment: kind [n] ('honest' or an attack), extra [n] (inflated tokens
  as a fraction of the honest part), train [n] (False = held out), hidden and visible token
  ids, and traces [n] (encoded; `encode_cases` re-encodes them with another encoder)."""
  kind: np.ndarray
  extra: np.ndarray
  train: np.ndarray
  hidden: list[np.ndarray]
  visible: list[np.ndarray]
  traces: list[coin.EncodedTrace]


def encode_cases(cases: Cases, params: Any, config: Any, settings: Settings,
                 log=print) -> Cases:
  """The same cases encoded with FrozenEncoder(features=settings.features)."""
  t0 = time.time()
  encoder = coin.FrozenEncoder(params, config=config, features=settings.features)
  enc = coin.encode_traces(encoder, cases.hidden, cases.visible, block_size=settings.block_size)
  log(f"encoded {len(enc)} traces ({settings.features}) in {time.time() - t0:.1f}s")
  return dataclasses.replace(cases, traces=enc)


def build_cases(params: Any, config: Any, tokenizer: Any, settings: Settings,
                rng: np.random.Generator, log=print) -> Cases:
  """Sample hidden traces, inflate half of them, encode them all."""
  from tokenrl.data import task_arith
  st = settings
  t0 = time.time()
  examples = task_arith.make_examples("train", st.num_traces, st.seed, tiers=st.tiers)
  raw = sample_attempts(params, config, tokenizer, [e["prompt"] for e in examples],
                        settings=st, rng=rng)
  log(f"sampled {len(raw)} x {st.attempts[1]} attempts in {time.time() - t0:.1f}s")

  # Half the prompts give honest traces, half inflated ones. Every run of six inflated traces
  # holds each attack twice (once per side of the split) at one amount, so both sides see every
  # attack and amount however few traces there are; honest traces alternate sides.
  # Trace lengths are matched: an honest trace uses G ~ U[lo, hi] attempts, an inflated one
  # about G / (1 + extra) before inflation, so the length alone says little (reported as the
  # length-only AUC) and the verifier has to read the content.
  lo, hi = st.attempts
  stop = set(tokenizer.eos_token_ids)
  order = rng.permutation(len(raw))
  honest_ids, inflated_ids = order[: len(raw) // 2], order[len(raw) // 2:]
  special = {tokenizer.pad_id, *stop} | (
      {tokenizer.bos_id} if tokenizer.bos_id is not None else set())
  vocab = [t for t in range(config.vocab_size) if t not in special]
  cases = []  # (kind, extra fraction, hidden tokens, visible tokens, training side?)
  for k, i in enumerate(honest_ids):
    prompt, attempts = raw[i]
    cases.append(("honest", 0.0, *compose(prompt, attempts[:rng.integers(lo, hi + 1)], stop),
                  k % 2 == 0))
  n_attacks = len(ATTACKS)
  for k, i in enumerate(inflated_ids):
    kind, train = ATTACKS[k % n_attacks], (k // n_attacks) % 2 == 0
    frac = st.extra[(k // (2 * n_attacks)) % len(st.extra)]
    prompt, attempts = raw[i]
    g = max(1, round(rng.integers(lo, hi + 1) / (1 + frac)))
    hidden, visible = compose(prompt, attempts[:g], stop)
    extra = max(1, round(frac * hidden.size))
    if kind == "splice":  # the donor: an honest trace on the same side of the split
      same_side = honest_ids[int(not train)::2]
      d_prompt, d_attempts = raw[same_side[rng.integers(len(same_side))]]
      donor, _ = compose(d_prompt, d_attempts, stop)
      hidden = coin.inflate_splice(rng, hidden, donor, extra, block_size=st.block_size)
    else:
      hidden = coin.inflate_naive(rng, hidden, extra, vocab=vocab, mode=kind.split("_")[1])
    cases.append((kind, frac, hidden, visible, train))

  raw_cases = Cases(np.array([c[0] for c in cases]), np.array([c[1] for c in cases]),
                    np.array([c[4] for c in cases]), [c[2] for c in cases],
                    [c[3] for c in cases], [])
  return encode_cases(raw_cases, params, config, st, log)


def evaluate(cases: Cases, settings: Settings, rng: np.random.Generator,
             log=print) -> dict[str, Any]:
  """Train Models A, B and the verifier on the training cases, audit the held-out ones."""
  st, enc, kinds, is_train = settings, cases.traces, cases.kind, cases.train
  honest_train = [t for t, k, tr in zip(enc, kinds, is_train) if k == "honest" and tr]

  t0 = time.time()
  key = jax.random.key(st.seed)
  k_a, k_b, k_v = jax.random.split(key, 3)
  head_a = coin.train_head(k_a, *coin.token_block_pairs(rng, honest_train, st.pairs),
                           steps=st.head_steps)
  head_b = coin.train_head(k_b, *coin.block_answer_pairs(rng, honest_train, st.pairs),
                           steps=st.head_steps)
  width = max(st.samples)
  # Every training trace is sampled once at each s, so the verifier learns every set size.
  train_idx = np.repeat(np.flatnonzero(is_train), len(st.samples))
  s_train = [st.samples[k % len(st.samples)] for k in range(train_idx.size)]
  fps, slot, mask, ans = _leaf_batch([enc[i] for i in train_idx], s_train, width, rng,
                                     st.block_size)
  scores, masks = _scores(head_a, head_b, fps, slot, mask, ans)
  verifier = coin.train_verifier(k_v, scores, masks, (kinds[train_idx] == "honest"),
                                 steps=st.verifier_steps)
  log(f"trained Models A, B and the verifier in {time.time() - t0:.1f}s")

  # Held-out traces, audited at every s.
  test_idx = np.flatnonzero(~is_train)
  test_kinds = kinds[test_idx]
  test_extra = cases.extra[test_idx]
  lengths = np.array([enc[i].tokens.size for i in test_idx], np.float64)
  by_s = {}
  for s in st.samples:
    fps, slot, mask, ans = _leaf_batch([enc[i] for i in test_idx], [s] * test_idx.size, width,
                                       rng, st.block_size)
    by_s[s] = _p_benign(verifier, *_scores(head_a, head_b, fps, slot, mask, ans))
  p_main = by_s[st.main_samples]
  honest = test_kinds == "honest"
  result: dict[str, Any] = {"settings": dataclasses.asdict(st), "auc": {}, "length_auc": {},
                            "detection": {}, "false_positive": {}}
  # Models A and B on pairs from held-out honest traces (how well each head alone separates).
  honest_test = [enc[i] for i in test_idx[test_kinds == "honest"]]
  for name, head, pairs in (("model_a_auc", head_a, coin.token_block_pairs),
                            ("model_b_auc", head_b, coin.block_answer_pairs)):
    a, b, y = pairs(rng, honest_test, 2048)
    result[name] = coin.auc(np.asarray(_head_batch(head, a, b)), y)
  for attack in ATTACKS:
    sel = honest | (test_kinds == attack)
    result["auc"][attack] = coin.auc(1.0 - p_main[sel], ~honest[sel])
    result["length_auc"][attack] = coin.auc(lengths[sel], ~honest[sel])
  for s in st.samples:
    flagged = by_s[s] < 0.5
    result["false_positive"][s] = _mean(flagged[honest])
    result["detection"][s] = {
        f"{frac:g}": _mean(flagged[(~honest) & (test_extra == frac)]) for frac in st.extra}
  # The chance that s samples hit at least one fabricated leaf: the ceiling for any detector
  # that needs to see a fake leaf (fake fraction f/(m+f) = frac/(1+frac)).
  result["closed_form"] = {
      s: {f"{frac:g}": coin.detection_probability(1000, round(1000 * frac / (1 + frac)), s,
                                                  replace=False) for frac in st.extra}
      for s in st.samples}

  # Commit/verify round trips of every held-out honest trace through the full audit.
  auditor = coin.CoinAuditor(head_a, head_b, verifier, block_size=st.block_size)
  passed, benign = 0, 0
  for i in test_idx[honest]:
    committed = merkle.CommittedTrace(enc[i].fingerprints, count=enc[i].tokens.size)
    res = coin.audit(committed.commitment, committed.open, enc[i].answer_emb, auditor=auditor,
                     num_samples=st.main_samples, rng=rng)
    passed += res.verified
    benign += res.benign
  result["round_trip"] = {"traces": int(honest.sum()), "verified": passed, "benign": benign}
  result["test_counts"] = {k: int((test_kinds == k).sum()) for k in ("honest", *ATTACKS)}
  return result


def _mean(x: np.ndarray) -> float:
  return float(x.mean()) if x.size else float("nan")


def run_experiment(params: Any, config: Any, tokenizer: Any, settings: Settings,
                   log=print) -> dict[str, Any]:
  """The whole CoIn pipeline on one model; returns every measured number (JSON-ready)."""
  rng = np.random.default_rng(settings.seed)
  return evaluate(build_cases(params, config, tokenizer, settings, rng, log), settings, rng, log)


def result_table(result: dict[str, Any]) -> str:
  rows = [[attack, result["auc"][attack], result["length_auc"][attack],
           result["test_counts"][attack]] for attack in ATTACKS]
  s = result["settings"]["main_samples"]
  return (format_table([f"attack (s={s})", "detection AUC", "length-only AUC", "held-out"], rows)
          + f"\nheld-out pair AUC: Model A (token in block) {result['model_a_auc']:.4f}, "
          f"Model B (block to answer) {result['model_b_auc']:.4f}")


def detection_table(result: dict[str, Any]) -> str:
  fracs = list(next(iter(result["detection"].values())))
  headers = ["s", "honest flagged"] + [f"det +{f}m" for f in fracs] + [
      f"P(hit) +{f}m" for f in fracs]
  rows = [[s, result["false_positive"][s], *result["detection"][s].values(),
           *result["closed_form"][s].values()] for s in result["detection"]]
  return format_table(headers, rows)


def plot(results: Sequence[dict[str, Any]], path: str) -> str:
  """Detection rate vs s per inflated fraction (mean over runs; closed-form ceiling dashed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  samples = list(results[0]["detection"])
  fracs = list(results[0]["detection"][samples[0]])
  for k, frac in enumerate(fracs):
    det = [np.mean([r["detection"][s][frac] for r in results]) for s in samples]
    ceil = [results[0]["closed_form"][s][frac] for s in samples]
    ax.plot(samples, det, "o-", color=f"C{k}", label=f"verifier, +{frac}·m inflated")
    ax.plot(samples, ceil, "--", color=f"C{k}", alpha=0.6, label=f"P(≥1 fake sampled), +{frac}·m")
  fp = [np.mean([r["false_positive"][s] for r in results]) for s in samples]
  ax.plot(samples, fp, "k^:", label="honest traces flagged")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("sampled leaves s")
  ax.set_ylabel("flagged fraction")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("CoIn audit: detection rate vs s")
  ax.legend(fontsize=7)
  return save_figure(fig, path)


def run(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="tokenrl audit coin", description=__doc__.split("\n")[0])
  add_model_args(parser)
  d = Settings()
  parser.add_argument("--num_traces", type=int, default=d.num_traces)
  parser.add_argument("--block_size", type=int, default=d.block_size)
  parser.add_argument("--samples", default=",".join(map(str, d.samples)),
                      help="comma-separated s values (the verifier trains on all)")
  parser.add_argument("--main_samples", type=int, default=d.main_samples)
  parser.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
  parser.add_argument("--attempts", default=f"{d.attempts[0]},{d.attempts[1]}",
                      help="LO,HI sampled attempts per hidden trace")
  parser.add_argument("--features", choices=coin.FEATURES, default=d.features,
                      help="encoder: mean-pooled final hidden states or input embeddings")
  parser.add_argument("--head_steps", type=int, default=d.head_steps)
  parser.add_argument("--verifier_steps", type=int, default=d.verifier_steps)
  parser.add_argument("--pairs", type=int, default=d.pairs)
  parser.add_argument("--seed", type=int, default=d.seed)
  parser.add_argument("--out", default="coin.png", help="PNG path (detection rate vs s)")
  parser.add_argument("--json", default="", help="also write every number to this JSON file")
  args = parser.parse_args(argv)
  samples, attempts = int_list(args.samples), int_list(args.attempts)
  problems = [name for name, bad in [
      ("--num_traces must be >= 12 (every attack on both sides of the split)",
       args.num_traces < 12),
      ("--block_size must be >= 1", args.block_size < 1),
      ("--samples must be positive integers", min(samples) < 1),
      ("--main_samples must be one of --samples", args.main_samples not in samples),
      ("--attempts must be LO,HI with 1 <= LO <= HI", len(attempts) != 2 or
       not 1 <= attempts[0] <= attempts[-1]),
      ("--head_steps, --verifier_steps and --pairs must be >= 1",
       min(args.head_steps, args.verifier_steps, args.pairs) < 1)] if bad]
  if problems:
    parser.error("; ".join(problems))
  settings = Settings(num_traces=args.num_traces, attempts=attempts, block_size=args.block_size,
                      samples=samples, main_samples=args.main_samples, features=args.features,
                      max_new_tokens=args.max_new_tokens, head_steps=args.head_steps,
                      verifier_steps=args.verifier_steps, pairs=args.pairs, seed=args.seed)
  loaded = load_model(model=args.model, workdir=args.workdir)
  result = run_experiment(loaded.params, loaded.config, loaded.tokenizer, settings)
  print(result_table(result))
  print()
  print(detection_table(result))
  rt = result["round_trip"]
  print(f"\nround trips: {rt['verified']}/{rt['traces']} honest commitments verified, "
        f"{rt['benign']}/{rt['traces']} judged benign")
  print(f"wrote {plot([result], args.out)}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.json}")
  return 0
