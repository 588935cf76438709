"""One GRPO step of tokenrl vs TRL's `GRPOTrainer`, side by side on CPU.

  python benchmarks/rl_step.py            # 2 rounds x 6 steps per library
  python benchmarks/rl_step.py --quick    # 1 round x 4 steps

Workload (both libraries): the tiny Qwen2 checkpoint of common.py (D=256, L=4, Q=4, K=2, F=1024,
V=70, tied, f32) and its char-level tokenizer; 8 prompts of 16 characters (= 16 tokens) x 8
completions = 64 sequences, at most 16 new tokens at temperature 1 (top-k/top-p off, EOS id 1
stops a row, as in both libraries' defaults); a cheap Python reward (fraction of digits); GRPO
group-normalized advantages; beta = 0 (no reference model); one update per rollout (ratio = 1);
loss aggregated per sequence then averaged ('seq-mean-token-mean' = TRL loss_type='grpo');
AdamW (lr 1e-6, no weight decay) after global-norm clipping at 1.0; gradient checkpointing off.

tokenrl runs the real pieces: `HFTokenizer` + `tokenize_prompts`, `rollout.sample`,
`decode_completions`, the reward, `objectives.group_relative_advantages`, `batches.pg_batch`,
`train.steps.make_pg_step`. TRL runs `GRPOTrainer.train()` (HF_HUB_OFFLINE, report_to='none',
use_cpu); its phases are timed by wrapping `_generate_and_score_completions` (the rollout:
tokenize, generate, decode, reward, advantages) and a callback at each `on_step_end` (the whole
step, data loading and logging included). For both: update = step − rollout (forward + backward
of the loss, clipping, AdamW). Medians over steps 2..N of each process (step 1 holds tokenrl's
compile, reported separately as step 1 − median step); each library runs in its own process,
pinned to the same `--threads` cores, alternating `--rounds` times.

FLOPs (common.py convention): rollout = common.generate_flops(N=64, P=16, T=16); update =
3 x the forward over the N·(P+T−1) teacher-forced positions (2·P_layers per position, 2·V·D per
completion position, attention over visible keys; backward = 2 x forward). GFLOP/s is given as a
fraction of this machine's f32 matmul rate measured in the same run (jitted 2048² matmul). Goal:
tokenrl step time <= 0.75 x TRL's at f32. Any error exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

B, G, P, T = 8, 8, 16, 16
LR = 1e-6
GOAL = 0.75
# 16 characters each, so 16 tokens under the char-level tokenizer in both libraries.
PROMPTS = ["12+34*5-67=?abcd", "sort:9,3,7,1,5=>", "what(2*3)+4-1?=x", "count:aaabbbccd=",
           "reverse:abcdefg>", "max(4,9,2,7,1)=?", "17-8+6*2-3/1=?!!", "digits:8041;sum="]
assert all(len(p) == P for p in PROMPTS) and len(PROMPTS) == B


def digit_reward(texts):
  """Fraction of digit characters in each completion (a cheap, deterministic reward)."""
  return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def _forward_flops(config, n: int, positions: int, logit_positions: int) -> int:
  layers = 2 * common.layer_matmul_params(config) * n * positions
  head = 2 * config.vocab_size * config.dim * n * logit_positions
  attn = n * sum(common.attention_flops(config, i + 1) for i in range(positions))
  return layers + head + attn


def worker_tokenrl(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from tokenrl import objectives as obj
  from tokenrl.methods.config import resolve_objective, rl_config
  from tokenrl.data.hf_tokenizer import HFTokenizer
  from tokenrl.data.prompts import decode_completions, tokenize_prompts
  from tokenrl.models import load_hf
  from tokenrl.rollout import sample
  from tokenrl.train import batches
  from tokenrl.train import steps as steps_lib

  config, params = load_hf(args.ckpt, dtype=jnp.float32)
  tok = HFTokenizer(args.ckpt)
  opts = resolve_objective(rl_config())  # objective 'grpo', beta 0
  loss_options = {k: opts[k] for k in obj.POLICY_LOSS_OPTIONS}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.0))
  state = steps_lib.create_state(params, tx)
  pg_step = None
  rollout_s, step_s, lengths = [], [], []
  key = jax.random.key(0)
  for i in range(args.steps):
    t0 = time.perf_counter()
    prompt_ids = tokenize_prompts(tok, PROMPTS, use_chat_template=False)
    rollout = sample(state.params, prompt_ids, config=config, rng=jax.random.fold_in(key, i),
                     max_new_tokens=T, temperature=1.0, top_k=0, top_p=1.0, num_samples=G,
                     stop_tokens=tuple(tok.eos_token_ids))
    tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
    texts = decode_completions(tok, tokens, mask)
    rewards = np.asarray(digit_reward(texts), np.float32)
    advantages = np.asarray(obj.group_relative_advantages(
        jnp.asarray(rewards), G, scale_rewards="group", epsilon=opts["advantage_epsilon"],
        ddof=opts["advantage_std_ddof"]))
    t1 = time.perf_counter()
    batch = batches.pg_batch(rollout, advantages=advantages, mask=mask,
                             token_weights=np.ones(mask.shape, np.float32))
    if pg_step is None:
      prompt_len = batch["tokens"].shape[1] - T
      pg_step = steps_lib.make_pg_step(tx, config=config, prompt_len=prompt_len,
                                       loss_options=loss_options, temperature=1.0)
    state, metrics = pg_step(state, batch)
    jax.block_until_ready(metrics["loss"])
    t2 = time.perf_counter()
    rollout_s.append(t1 - t0)
    step_s.append(t2 - t0)
    lengths.append(float(mask.sum(axis=1).mean()))
  return {"rollout": rollout_s, "step": step_s, "completion_length": lengths,
          "prompt_len": int(np.asarray(rollout.prompt_tokens).shape[1])}


def worker_trl(args) -> dict:
  import torch
  import transformers
  from datasets import Dataset
  from trl import GRPOConfig, GRPOTrainer
  common.torch_threads(args.threads)
  transformers.logging.set_verbosity_error()

  model = transformers.AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.ckpt)
  dataset = Dataset.from_dict({"prompt": PROMPTS})
  rollout_s, step_ends, lengths, prompt_lens = [], [], [], []

  def reward(completions, **kwargs):
    del kwargs
    return digit_reward(completions)

  class StepTimer(transformers.TrainerCallback):
    def on_train_begin(self, *a, **k):
      step_ends.append(time.perf_counter())

    def on_step_end(self, *a, **k):
      step_ends.append(time.perf_counter())

  with tempfile.TemporaryDirectory() as out:
    cfg = GRPOConfig(
        output_dir=out, per_device_train_batch_size=B * G, num_generations=G,
        max_completion_length=T, temperature=1.0, top_k=0, top_p=1.0, beta=0.0, num_iterations=1,
        loss_type="grpo", scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant",
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, gradient_checkpointing=False,
        bf16=False, fp16=False, use_cpu=True, report_to="none", logging_steps=1,
        save_strategy="no", max_steps=args.steps, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    original = trainer._generate_and_score_completions

    def timed_rollout(inputs):
      out, dt = common.timed(lambda: original(inputs))
      rollout_s.append(dt)
      lengths.append(float(out["completion_mask"].sum(dim=1).float().mean()))
      prompt_lens.append(int(out["prompt_ids"].shape[1]))
      return out

    trainer._generate_and_score_completions = timed_rollout
    trainer.train()
  step_s = [b - a for a, b in zip(step_ends[:-1], step_ends[1:])]
  if len(step_s) != args.steps or len(rollout_s) != args.steps:
    raise RuntimeError(f"TRL ran {len(step_s)} steps and {len(rollout_s)} rollouts, expected "
                       f"{args.steps} (one rollout per update)")
  return {"rollout": rollout_s, "step": step_s, "completion_length": lengths,
          "prompt_len": max(prompt_lens)}


def parent(args) -> int:
  from tokenrl.models import load_hf
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = common.build_checkpoint(os.path.join(tmp, "tiny_qwen2"))
    config, _ = load_hf(ckpt)
    rates = [common.matmul_gflops()]
    worker_args = ["--ckpt", ckpt, "--threads", str(args.threads), "--steps", str(args.steps)]
    worker_args += ["--omp-passive"] if args.omp_passive else []
    results = {"tokenrl": [], "trl": []}
    for r in range(args.rounds):
      for lib in ("tokenrl", "trl"):
        print(f"[round {r + 1}/{args.rounds}] {lib} ...", file=sys.stderr, flush=True)
        results[lib].append(common.run_worker(__file__, ["--worker", lib, *worker_args]))
    rates.append(common.matmul_gflops())
  peak = common.median(rates)

  n = B * G
  flops = {"rollout": common.generate_flops(config, n, P, T),
           "update": 3 * _forward_flops(config, n, P + T - 1, T)}
  flops["step"] = flops["rollout"] + flops["update"]
  med = {}
  for lib, runs in results.items():
    # Steps 2..N of every process; update = step - rollout per step.
    per = {"step": [], "rollout": [], "update": []}
    first = []
    for res in runs:
      for i in range(1, len(res["step"])):
        per["step"].append(res["step"][i])
        per["rollout"].append(res["rollout"][i])
        per["update"].append(res["step"][i] - res["rollout"][i])
      first.append(res["step"][0])
    med[lib] = {k: common.median(v) for k, v in per.items()}
    med[lib]["first_extra"] = common.median(first) - med[lib]["step"]
    med[lib]["length"] = common.median([x for res in runs for x in res["completion_length"]])
    med[lib]["prompt_len"] = max(res["prompt_len"] for res in runs)

  rows = []
  for phase in ("step", "rollout", "update"):
    a, b = med["tokenrl"][phase], med["trl"][phase]
    g = lambda t: f"{flops[phase] / t / 1e9:.1f} ({flops[phase] / t / 1e9 / peak:.0%})"
    rows.append((phase, f"{a * 1e3:.0f}", f"{b * 1e3:.0f}", f"**{a / b:.2f}x**", g(a), g(b)))
  ratio = med["tokenrl"]["step"] / med["trl"]["step"]

  print("## One GRPO step: tokenrl vs TRL GRPOTrainer (CPU, f32)\n")
  print(common.table(("field", "value"), common.env_rows(args.threads, load_before,
                                                         args.omp_passive) + [
      ("workload", f"tiny Qwen2 (D=256, L=4, Q=4, K=2, F=1024, V=70, tied); {B} prompts x {G} "
                   f"completions, prompt {P} tokens, <= {T} new tokens (EOS stops), temperature 1, "
                   "beta 0, one update per rollout, AdamW, no gradient checkpointing"),
      ("method", f"{args.rounds} rounds x {args.steps} steps per library (alternating processes), "
                 "medians of steps 2..N; update = step − rollout"),
      ("mean completion length (tokenrl / TRL)",
       f"{med['tokenrl']['length']:.1f} / {med['trl']['length']:.1f} tokens"),
      ("prompt width (tokenrl bucket / TRL padded)",
       f"{med['tokenrl']['prompt_len']} / {med['trl']['prompt_len']}"),
      ("f32 matmul rate", f"{peak:.1f} GFLOP/s (jitted 2048² matmul, median; runs: "
                          + ", ".join(f"{r:.1f}" for r in rates) + ")"),
      ("FLOPs per step", f"rollout {flops['rollout'] / 1e9:.2f} G, update "
                         f"{flops['update'] / 1e9:.2f} G (3 x forward)"),
      ("step 1 − median step (compile / warm-up)",
       f"tokenrl {med['tokenrl']['first_extra']:.1f} s, TRL {med['trl']['first_extra']:.1f} s"),
  ]))
  print()
  print(common.table(("phase", "tokenrl ms", "TRL ms", "tokenrl / TRL",
                      "tokenrl GFLOP/s (of matmul)", "TRL GFLOP/s (of matmul)"), rows))
  print(f"\nGoal: tokenrl step <= {GOAL}x TRL step (f32): "
        f"{'MET' if ratio <= GOAL else 'NOT MET'} ({ratio:.2f}x)")
  return 0


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="1 round x 4 steps")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--steps", type=int, default=None, help="steps per process (N)")
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--omp-passive", action="store_true",
                 help="OMP_WAIT_POLICY=PASSIVE for torch (see common.pin_threads; not for "
                      "headline numbers)")
  p.add_argument("--worker", choices=("tokenrl", "trl"), help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  args = p.parse_args()
  args.steps = args.steps or (4 if args.quick else 6)
  args.rounds = args.rounds or (1 if args.quick else 2)
  if args.steps < 2:
    p.error("--steps must be >= 2 (step 1 is the warm-up)")
  common.pin_threads(args.threads, omp_passive=args.omp_passive)
  if args.worker:
    common.emit((worker_tokenrl if args.worker == "tokenrl" else worker_trl)(args))
    return 0
  return parent(args)


if __name__ == "__main__":
  sys.exit(main())
