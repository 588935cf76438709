"""tokenrl.data: tokenizers, embedded tasks, input pipelines, rewards.

Names are imported lazily (PEP 562): `import tokenrl.data` costs nothing, and reward worker
processes (which import this package) do not pull in grain, tfds or jax.

  tokenizers  Tokenizer, CharTokenizer, HFTokenizer, load_tokenizer
  prompts     left_pad, bucket_length, tokenize_prompts, decode_completions
  tasks       TASKS, Task, get_task, make_examples
              (arith, sort, copy, countdown, hidden_length, arith_cot)
  pipelines   load_examples, default_reward_name, make_dataset (grain), read_jsonl, write_jsonl,
              prepare_task_dataset, task_source, gsm8k_source, prepare_gsm8k (tfds)
  rewards     REWARD_FNS, exact_answer_reward, math_answer_reward, format_reward,
              countdown_reward, task_reward, RegexReward, extract_final_answer,
              numbers_equal, parse_number, parse_int_expression, ExpressionError,
              RewardRunner, RewardOutput
"""
import importlib

_EXPORTS = {
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "CharTokenizer": "char_tokenizer",
    "HFTokenizer": "hf_tokenizer",
    "left_pad": "prompts", "bucket_length": "prompts", "tokenize_prompts": "prompts",
    "decode_completions": "prompts",
    "TASKS": "tasks", "Task": "tasks", "get_task": "tasks", "make_examples": "tasks",
    "make_dataset": "pipeline",
    "load_examples": "sources", "default_reward_name": "sources",
    "read_jsonl": "jsonl", "write_jsonl": "jsonl",
    "prepare_task_dataset": "tfds_tasks", "task_source": "tfds_tasks",
    "gsm8k_source": "tfds_tasks", "prepare_gsm8k": "tfds_tasks",
    "REWARD_FNS": "rewards", "TASK_VERIFIERS": "rewards",
    "exact_answer_reward": "rewards", "math_answer_reward": "rewards",
    "format_reward": "rewards", "countdown_reward": "rewards", "task_reward": "rewards",
    "RegexReward": "rewards", "extract_final_answer": "rewards", "numbers_equal": "rewards",
    "parse_number": "rewards",
    "parse_int_expression": "expr_parser", "ExpressionError": "expr_parser",
    "RewardRunner": "reward_runner", "RewardOutput": "reward_runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'tokenrl.data' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"tokenrl.data.{module}"), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
