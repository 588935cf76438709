"""`tokenrl analyze ...` and `tokenrl audit ...`: one module per tool, each `run(argv) -> int`.

These subcommands take argparse flags of their own (the absl flags of `tokenrl train|eval|...`
are not theirs), so tokenrl/cli.py hands them the argument list before absl parses it.
"""

ANALYZE = {"shapley": "tokenrl.commands.shapley", "af1": "tokenrl.commands.af1",
           "control": "tokenrl.commands.control"}
AUDIT = {"coin": "tokenrl.commands.coin", "palace": "tokenrl.commands.palace"}
