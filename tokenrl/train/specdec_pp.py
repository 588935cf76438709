"""SpecDec++ acceptance-head trainer (spec decoding-and-test-time §3(b)): `rl.objective=specdec_pp`.

`train_specdec_pp(cfg, workdir)` is what `tokenrl train` runs for `rl.objective=specdec_pp`.
Target p = the run's model (model.preset / model.hf_path / model.init_workdir), the policy whose
rollouts the speculative sampler will draw. Draft q = sampler.speculative.draft_model (an HF
folder or a tokenrl workdir with the same vocabulary) or, when that is empty, a tiny preset of
the same family and tokenizer shaped by rl.specdec_pp.draft_*. Phases of the run skeleton
(checkpointed, resumable):

  sft        train.sft_steps SFT steps of the target on the task (0 = none; a loaded model).
  draft_sft  rl.specdec_pp.draft_sft_steps SFT steps of the draft (same batch size / lr).
  head       train.max_steps steps of the acceptance head (tokenrl.models.accept_head) on the
             frozen draft's final hidden states; optimizer = the `optimizer` section
             (configs/specdec_pp.py: AdamW, cosine, 3% warm-up). Each step:
               1. the target samples one response X to each of data.batch_size training prompts
                  (tokenrl.rollout.sample at rl.temperature, sampler.top_k/top_p);
               2. teacher-forced draft and target forwards over prompt+X give the processed
                  q(·|X_<i), p(·|X_<i) at every response position; Y_i ~ q(·|X_<i);
                  labels a_i = min(1, p(Y_i)/q(Y_i)) (`acceptance_labels`);
               3. Z = X with probability rl.specdec_pp.mix_ratio, else Y (`mix_sequences`);
                  the frozen draft runs on prompt+Z (return_hidden) and the head is trained
                  on the hidden state at each position holding a Y_i with the weighted BCE
                  (`acceptance_loss`, w = rl.specdec_pp.rejection_weight).
             Evaluated at its start (the untrained head) and end on labels of
             rl.specdec_pp.eval_prompts held-out prompts (fixed draws): soft BCE (w = 1), the
             weighted loss, and the Pearson correlation of ĥ with a.

At the end the head is written to WORKDIR/accept_head/ (head.safetensors + head.json: blocks,
dims, where the draft came from); `load_accept_head(WORKDIR)` reads it back for
sampler.speculative.head. The checkpoints keep {'target', 'draft', 'head'}; their params_path is
the target, so `tokenrl eval|sample|export --workdir` see the target model as for any run.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl import models
from tokenrl.models import accept_head as ah
from tokenrl.models import safetensors_io
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import specdec_pp as sp
from tokenrl.optim import build_optimizer
from tokenrl.rollout.sampler import sample
from tokenrl.rollout.sampling import filter_top_k, filter_top_p
from tokenrl.train import steps as steps_lib
from tokenrl.train import workdir as workdir_lib
from tokenrl.train.phases import adam, sampled_sft_batch
from tokenrl.train.setup import _DTYPES, build_run, encode_prompts
from tokenrl.train.skeleton import NumpyRng, Phase, RunSpec, run_job

HEAD_DIR = "accept_head"


def processed_logprobs(logits: jax.Array, *, temperature: float, top_k: int, top_p: float
                       ) -> jax.Array:
  """log of the processed distribution [..., V] f32: logits/τ → top-k → top-p → log-softmax
  (the sampler's order, tokenrl.rollout.sampling); filtered tokens get −inf."""
  shape = logits.shape
  z = logits.reshape(-1, shape[-1]).astype(jnp.float32) / temperature
  z = filter_top_p(filter_top_k(z, top_k), top_p)
  return jax.nn.log_softmax(z, axis=-1).reshape(shape)


def _completion_logits(params, tokens, segment_ids, prompt_len, config):
  """logits [N,T,V] f32 predicting tokens[:, P:] (teacher-forced on tokens[:, :-1])."""
  hidden, _ = transformer.forward(params, tokens[:, :-1], config=config,
                                  segment_ids=segment_ids[:, :-1], return_hidden=True)
  return transformer.unembed(params, hidden[:, prompt_len - 1:], config=config)


@functools.partial(jax.jit, static_argnames=("target_config", "draft_config", "temperature",
                                             "top_k", "top_p", "mix_ratio"))
def acceptance_batch(target_params: Any, draft_params: Any, prompt_tokens: jax.Array,
                     prompt_mask: jax.Array, x_tokens: jax.Array, x_mask: jax.Array,
                     key: jax.Array, *, target_config: ModelConfig, draft_config: ModelConfig,
                     temperature: float, top_k: int, top_p: float, mix_ratio: float
                     ) -> dict[str, jax.Array]:
  """The head's training arrays for target responses X (SpecDec++ data, §3(b) steps 2-4).

  prompt_tokens / prompt_mask [N,P] (left-padded), x_tokens / x_mask [N,T] (the target's
  responses; mask 1 up to and including EOS). Returns (all [N,T] but hidden):
    y        int32  Y_i ~ q(· | prompt, X_<i) (processed draft distribution, key fold 0)
    target_logp, draft_logp f32   log p(Y_i | ·), log q(Y_i | ·) (processed)
    labels   f32    a_i = min(1, p/q)
    z        int32  the mixed response (X_i w.p. mix_ratio, else Y_i; key fold 1)
    loss_mask int32 1 where z holds a Y_i inside the response
    hidden   f32 [N,T,D_draft]  frozen draft's final-normed state at the position holding z_i
  """
  P = prompt_tokens.shape[1]
  full = jnp.concatenate([prompt_tokens, x_tokens], axis=1)
  seg = jnp.concatenate([prompt_mask, jnp.ones_like(x_tokens)], axis=1)
  proc = functools.partial(processed_logprobs, temperature=temperature, top_k=top_k, top_p=top_p)
  logq = proc(_completion_logits(draft_params, full, seg, P, draft_config))       # [N,T,V]
  logp = proc(_completion_logits(target_params, full, seg, P, target_config))
  y = jax.random.categorical(jax.random.fold_in(key, 0), logq, axis=-1).astype(jnp.int32)
  take = lambda lp: jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
  target_logp, draft_logp = take(logp), take(logq)
  labels = sp.acceptance_labels(target_logp, draft_logp)
  z, loss_mask = sp.mix_sequences(x_tokens, y, mix_ratio, jax.random.fold_in(key, 1),
                                  mask=x_mask)
  # The head at a position scores the token *at* it: the hidden state there has read z_i.
  hidden, _ = transformer.forward(draft_params, jnp.concatenate([prompt_tokens, z], axis=1),
                                  config=draft_config, segment_ids=seg, return_hidden=True)
  return {"y": y, "target_logp": target_logp, "draft_logp": draft_logp, "labels": labels,
          "z": z, "loss_mask": loss_mask, "hidden": hidden[:, P:].astype(jnp.float32)}


def head_metrics(head: Any, batch: dict[str, jax.Array], *, num_blocks: int,
                 rejection_weight: float) -> dict[str, float]:
  """Held-out numbers of a head on `acceptance_batch` arrays (loss positions only): soft BCE
  (w = 1), the weighted loss, mean label / prediction, Pearson corr(ĥ, a)."""
  logits = ah.accept_logits(head, batch["hidden"], num_blocks=num_blocks)
  h = np.asarray(jax.nn.softmax(logits, axis=-1)[..., 1], np.float64)
  m = np.asarray(batch["loss_mask"]) > 0
  a = np.asarray(batch["labels"], np.float64)
  hv, av = h[m], a[m]
  corr = float(np.corrcoef(hv, av)[0, 1]) if hv.std() > 0 and av.std() > 0 else 0.0
  return {"bce": float(sp.acceptance_loss(logits, batch["labels"], batch["loss_mask"], 1.0)),
          "weighted_loss": float(sp.acceptance_loss(logits, batch["labels"], batch["loss_mask"],
                                                    rejection_weight)),
          "label_mean": float(av.mean()), "pred_mean": float(hv.mean()), "corr": corr,
          "positions": int(m.sum())}


def make_head_step(tx, *, num_blocks: int, rejection_weight: float):
  """jitted step(state, batch) -> (state, metrics); state.params = the head, batch = hidden
  [N,T,D], labels [N,T], loss_mask [N,T]."""

  def loss_fn(head, mb):
    logits = ah.accept_logits(head, mb["hidden"], num_blocks=num_blocks)
    m = mb["loss_mask"].astype(jnp.float32)
    pred = jax.nn.softmax(logits, axis=-1)[..., 1]
    n = jnp.maximum(m.sum(), 1.0)
    return sp.acceptance_loss(logits, mb["labels"], mb["loss_mask"], rejection_weight), {
        "label_mean": (mb["labels"] * m).sum() / n, "pred_mean": (pred * m).sum() / n}

  def step(state, batch):
    loss, metrics, grads = steps_lib._accumulate(loss_fn, state.params, batch, 0)  # pylint: disable=protected-access
    return steps_lib._apply(state, tx, loss, grads, metrics)  # pylint: disable=protected-access

  return jax.jit(step, donate_argnums=0)


def build_draft(cfg: ml_collections.ConfigDict, tokenizer: Any, target: ModelConfig
                ) -> tuple[ModelConfig, Any, str]:
  """(draft config, params, source): sampler.speculative.draft_model (tokenrl workdir or HF
  folder) or a tiny preset shaped by rl.specdec_pp.draft_* (family and vocab of the target)."""
  path = cfg.sampler.speculative.draft_model
  sec = cfg.rl.specdec_pp
  if path:
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
        os.path.join(path, "checkpoints")):
      config, params = workdir_lib.load_params(path)
      params = workdir_lib.model_params(params, config)
    else:
      config, params = models.load_hf(path, dtype=_DTYPES[cfg.model.dtype])
    source = path
  else:
    config = models.tiny(target.family, vocab_size=target.vocab_size, dim=sec.draft_dim,
                         num_layers=sec.draft_num_layers, num_heads=sec.draft_num_heads,
                         num_kv_heads=sec.draft_num_kv_heads, mlp_dim=sec.draft_mlp_dim,
                         max_seq_len=target.max_seq_len, pad_id=tokenizer.pad_id,
                         bos_id=tokenizer.bos_id, eos_ids=tuple(tokenizer.eos_token_ids))
    params = models.init_params(config, jax.random.fold_in(jax.random.key(cfg.seed), 11),
                                dtype=_DTYPES[cfg.model.dtype])
    source = (f"tiny {target.family} preset: dim={sec.draft_dim} layers={sec.draft_num_layers} "
              f"(seed {cfg.seed})")
  if config.vocab_size != target.vocab_size:
    raise ValueError(f"sampler.speculative.draft_model={path!r} has vocab_size "
                     f"{config.vocab_size}, the target {target.vocab_size}: draft and target "
                     "must share the vocabulary")
  return config, params, source


def save_accept_head(directory: str, head: Any, info: dict[str, Any]) -> str:
  """Write head.safetensors (params flattened as 'blocks.w', ...) + head.json (info); the dir."""
  os.makedirs(directory, exist_ok=True)
  flat = {".".join(str(k.key) for k in path): np.asarray(v, np.float32)
          for path, v in jax.tree_util.tree_flatten_with_path(head)[0]}
  safetensors_io.save_tensors(os.path.join(directory, "head.safetensors"), flat)
  with open(os.path.join(directory, "head.json"), "w") as f:
    json.dump(info, f, indent=2)
  return directory


def load_accept_head(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(head params, info) from a specdec_pp workdir or its accept_head/ folder.

  info holds num_blocks (pass it to `accept_prob`), shared_blocks, dim (the draft's D), the
  draft's source and the training numbers. Raises FileNotFoundError naming the path.
  """
  directory = path if os.path.isfile(os.path.join(path, "head.json")) else os.path.join(path,
                                                                                         HEAD_DIR)
  if not os.path.isfile(os.path.join(directory, "head.json")):
    raise FileNotFoundError(f"{path!r} holds no acceptance head (no {HEAD_DIR}/head.json): train "
                            "one with `tokenrl train --config configs/specdec_pp.py`")
  with open(os.path.join(directory, "head.json")) as f:
    info = json.load(f)
  head: dict[str, Any] = {}
  tensors = safetensors_io.load_tensors(os.path.join(directory, "head.safetensors"))
  for name, value in tensors.items():
    node = head
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return head, info


def train_specdec_pp(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Target/draft warm-ups, then the acceptance head (module docstring)."""
  if cfg.rl.objective != "specdec_pp":
    raise ValueError(f"train_specdec_pp: rl.objective must be 'specdec_pp', got "
                     f"{cfg.rl.objective!r}")
  return run_job(cfg, workdir, build_specdec_pp)


def build_specdec_pp(cfg: ml_collections.ConfigDict, workdir: str) -> RunSpec:
  """Phases 'sft' (train.sft_steps > 0), 'draft_sft' (draft_sft_steps > 0), 'head' (max_steps)."""
  sec = cfg.rl.specdec_pp
  run = build_run(cfg)
  tok, model = run.tokenizer, run.model
  target_params = run.params
  if cfg.model.init_workdir:
    other, params = workdir_lib.load_params(cfg.model.init_workdir)
    workdir_lib.check_init_model(cfg.model.init_workdir, other, model)
    target_params = workdir_lib.model_params(params, model)
  draft_model, draft_params, draft_source = build_draft(cfg, tok, model)
  rng = NumpyRng(cfg.seed)
  key = jax.random.key(cfg.seed)
  T, B = cfg.sampler.max_new_tokens, cfg.data.batch_size
  opts = dict(temperature=float(cfg.rl.temperature), top_k=int(cfg.sampler.top_k),
              top_p=float(cfg.sampler.top_p))
  sft_tx = adam(cfg.train.sft_learning_rate)
  sft = {m: steps_lib.make_sft_step(sft_tx, config=m, micro_batch_size=cfg.train.micro_batch_size)
         for m in {model, draft_model}}
  head_steps = cfg.train.max_steps
  head_tx = build_optimizer(cfg.optimizer, max(head_steps, 1), key="train.max_steps")
  head_step = make_head_step(head_tx, num_blocks=sec.num_blocks,
                             rejection_weight=sec.rejection_weight)
  held = run.eval_examples[:sec.eval_prompts]
  cache: dict[str, Any] = {}

  def sft_batch():
    return sampled_sft_batch(cfg, tok, run.train_examples, rng.rng, cfg.train.sft_batch_size)

  def labels_for(target, draft, examples, k):
    """acceptance_batch arrays for one response per example (sampling key k)."""
    ro = sample(target, encode_prompts(cfg, tok, examples), config=model,
                rng=jax.random.fold_in(k, 0), max_new_tokens=T, num_samples=1,
                stop_tokens=tuple(tok.eos_token_ids), **opts)
    return acceptance_batch(target, draft, ro.prompt_tokens, ro.prompt_mask, ro.tokens, ro.mask,
                            jax.random.fold_in(k, 1), target_config=model,
                            draft_config=draft_model, mix_ratio=float(sec.mix_ratio), **opts)

  # Phase states: sft = TrainState(target); draft_sft = {'target', 'draft': TrainState};
  # head = {'target', 'draft', 'head': TrainState}. Each init reads whatever came before.
  def models_of(prev):
    if prev is None:
      return target_params, draft_params
    if isinstance(prev, steps_lib.TrainState):
      return prev.params, draft_params
    draft = prev["draft"]
    return prev["target"], draft.params if isinstance(draft, steps_lib.TrainState) else draft

  def sft_step(state, g, s):
    del g, s
    return sft[model](state, sft_batch())

  def draft_init(prev):
    target, draft = models_of(prev)
    return {"target": target, "draft": steps_lib.create_state(draft, sft_tx)}

  def draft_step(state, g, s):
    del g, s
    new, m = sft[draft_model](state["draft"], sft_batch())
    return {"target": state["target"], "draft": new}, m

  def head_init(prev):
    target, draft = models_of(prev)
    head = ah.init_accept_head(jax.random.fold_in(key, 5), draft_model.dim,
                               num_blocks=sec.num_blocks, shared_blocks=sec.shared_blocks)
    return {"target": target, "draft": draft, "head": steps_lib.create_state(head, head_tx)}

  def step(state, g, s):
    del s
    ex = [run.train_examples[i] for i in rng.rng.integers(len(run.train_examples), size=B)]
    batch = labels_for(state["target"], state["draft"], ex, jax.random.fold_in(key, 1000 + g))
    head, m = head_step(state["head"], {k: batch[k] for k in ("hidden", "labels", "loss_mask")})
    return {**state, "head": head}, {k: float(v) for k, v in m.items()}

  def evaluate(state, g, when):
    del g
    if "held" not in cache:  # the draft and target are frozen in this phase: labels once
      # In chunks of data.batch_size prompts (the last one padded with repeats, dropped after),
      # so the held-out labels reuse the step's compiled sampler and label function.
      chunks = []
      for c, i in enumerate(range(0, len(held), B)):
        part = held[i:i + B]
        out = labels_for(state["target"], state["draft"], part + [part[-1]] * (B - len(part)),
                         jax.random.fold_in(key, 2 ** 20 + c))
        chunks.append({k: np.asarray(out[k])[:len(part)]
                       for k in ("hidden", "labels", "loss_mask")})
      cache["held"] = {k: np.concatenate([ch[k] for ch in chunks]) for k in chunks[0]}
    out = head_metrics(state["head"].params, cache["held"], num_blocks=sec.num_blocks,
                       rejection_weight=sec.rejection_weight)
    return {"when": when, **out}

  def summarize(state, meta, g):
    heads = [e for e in meta["evals"] if "bce" in e]
    first, last = heads[0], heads[-1]
    summary = {"objective": "specdec_pp", "steps": g, "head_steps": head_steps,
               "heldout_bce_untrained": first["bce"], "heldout_bce": last["bce"],
               "heldout_weighted_loss_untrained": first["weighted_loss"],
               "heldout_weighted_loss": last["weighted_loss"], "heldout_corr": last["corr"],
               "heldout_label_mean": last["label_mean"], "heldout_pred_mean": last["pred_mean"],
               "heldout_positions": last["positions"], "draft": draft_source,
               "skipped_updates": int(state["head"].skipped)}
    info = {"num_blocks": sec.num_blocks, "shared_blocks": sec.shared_blocks,
            "dim": draft_model.dim, "draft": draft_source, "target_config": cfg.model.to_dict(),
            "temperature": opts["temperature"], "top_k": opts["top_k"], "top_p": opts["top_p"],
            "rejection_weight": sec.rejection_weight, "mix_ratio": sec.mix_ratio, "steps": g,
            "heldout_bce": last["bce"], "heldout_corr": last["corr"]}
    if jax.process_index() == 0:
      summary["head"] = save_accept_head(os.path.join(workdir, HEAD_DIR), state["head"].params,
                                         info)
    return summary

  phases = []
  if cfg.train.sft_steps:
    phases.append(Phase("sft", cfg.train.sft_steps,
                        lambda prev: steps_lib.create_state(models_of(prev)[0], sft_tx), sft_step))
  if sec.draft_sft_steps:
    phases.append(Phase("draft_sft", sec.draft_sft_steps, draft_init, draft_step,
                        params_path=("target",)))
  phases.append(Phase("head", head_steps, head_init, step, evaluate=evaluate, eval_at_start=True,
                      eval_at_end=True, eval_every=cfg.train.eval_every,
                      show=("loss", "label_mean", "pred_mean"), params_path=("target",)))
  prompt_len = max(len(p) for p in encode_prompts(cfg, tok, run.train_examples + held))
  return RunSpec(phases=phases, model=model, prompt_len=prompt_len, summarize=summarize,
                 iterators={"rng": rng}, plot=False)
