"""RL's gate on SQuAD for GRPO settings given on the command line: the source rounds only, never a target or test
passage. Prints the reward per round, the gate table and its verdict.

    .venv/bin/python bench/squad_rl_gate.py --set rl_prompts_per_step=8 --set rl_beta=0 --set rl_lr=5e-5

Each --set KEY=VALUE overrides the profile (`--profile`, default cpu); values are read as YAML (numbers, lists).
Stages are cached like a notebook's, so settings that share the SFT reuse it.
"""

from __future__ import annotations

import argparse
import time

import yaml

from pastkit.benchmarks.squad import Squad, SquadParams
from pastkit.config import load_profile
from pastkit.past import Study, gate_verdict, rl_gate, rounds_table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    params = SquadParams.from_profile({**load_profile(args.profile), **overrides})
    unknown = set(overrides) - SquadParams.names()
    if unknown:
        raise SystemExit(f"not SQuAD parameters: {sorted(unknown)}")
    t0 = time.time()
    study = Study.run(Squad(), params)
    gate = rl_gate(study)
    print(f"\nsettings: {overrides} (profile {args.profile}); {time.time() - t0:.0f} s")
    print(rounds_table(study).to_markdown(index=False))
    print(gate.to_markdown(index=False))
    print(gate_verdict(gate))


if __name__ == "__main__":
    main()
