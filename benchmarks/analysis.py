"""Every analysis / audit demonstration of issue 18 on the quickstart model, one after another.

  python benchmarks/analysis.py                        # trains runs/quickstart first if absent
  python benchmarks/analysis.py --workdir W --only shapley,af1

Runs benchmarks/analysis_{shapley,af1,control,coin,palace}.py (each writes
benchmarks/results/analysis_<tool>.{json,png}); the quickstart-based ones read --workdir, the
main job's run (`./dev.sh train`, ~7 min on 2 CPU cores), trained here when it is missing.
PALACE trains its own estimator (configs/palace.py settings). About 45 min on 2 quiet CPU cores
in all (PALACE's four trainings are most of it); the per-tool figures are in each JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("shapley", "af1", "control", "coin", "palace")
USES_WORKDIR = {"shapley", "af1", "control", "coin"}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "quickstart"),
                 help="a trained quickstart run (trained here when missing)")
  p.add_argument("--only", default=",".join(TOOLS), help=f"comma-separated subset of {TOOLS}")
  args = p.parse_args()
  tools = [t for t in args.only.split(",") if t]
  unknown = sorted(set(tools) - set(TOOLS))
  if unknown:
    p.error(f"--only: unknown tools {unknown}; choose from {TOOLS}")
  exe = os.path.join(os.path.dirname(sys.executable), "tokenrl")
  if USES_WORKDIR & set(tools) and not os.path.isfile(os.path.join(args.workdir, "summary.json")):
    print(f"training the quickstart model into {args.workdir}", flush=True)
    subprocess.run([exe if os.path.exists(exe) else sys.executable, *([] if os.path.exists(exe)
                    else ["-m", "tokenrl.cli"]), "train", "--config",
                    os.path.join(REPO, "configs", "quickstart.py"), "--workdir", args.workdir],
                   check=True)
  failed = []
  for tool in tools:
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", f"analysis_{tool}.py")]
    if tool in USES_WORKDIR:
      cmd += ["--workdir", args.workdir]
    start = time.time()
    print(f"== {tool}: {' '.join(cmd)}", flush=True)
    rc = subprocess.run(cmd).returncode
    print(f"== {tool}: exit {rc}, {time.time() - start:.0f} s", flush=True)
    if rc:
      failed.append(tool)
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
