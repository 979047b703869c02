"""RL's gate for GRPO settings given on the command line: the source rounds only, never a target or test item.
Prints the reward per round, the gate table and its verdict.

    .venv/bin/python bench/rl_gate.py --set rl_prompts_per_step=8 --set rl_beta=0 --set rl_lr=5e-5
    .venv/bin/python bench/rl_gate.py --benchmark toolbench --set rl_prompts_per_step=4 --set rl_epochs=8

Each --set KEY=VALUE overrides the profile (`--profile`, default cpu); values are read as YAML (numbers, lists).
Stages are cached like a notebook's, so settings that share the SFT reuse it, and θ_init's answers on the gate.

SQuAD runs and what they showed (the cpu settings' own run is beside `SquadParams.rl_prompts`):
- `--set n_source=18 --set rounds=1 --set rl_prompts=32 --set rl_epochs=4 --set 'seeds=[0,1,2]'` (45 min): a
  larger gate, 52 held-out questions on 18 passages a seed, and twice the RL prompts. Reward, first to last
  quarter, 0.09 -> 0.19, 0.08 -> 0.13, 0.10 -> 0.28; held-out token F1 +7.5 [+2.6, +12.9] (passes), +0.5
  [-2.3, +2.9], +5.4 [-2.0, +12.9]: inconclusive, 1 of 3. Gold answers contained 7 -> 7, 7 -> 7, 3 -> 5 of 52;
  words an answer 20.4 -> 12.0, 20.5 -> 23.3, 18.4 -> 10.8: the F1 gains are the seeds whose answers got
  shorter. A larger gate gives the same answer as the cpu one: RL teaches concision, not recall.
- The same with `--set rl_reward=contains` (the gold answer contained pays 1, extra words cost nothing; 30 min,
  SFT from the run above): reward 0.13 -> 0.24, 0.14 -> 0.34, 0.12 -> 0.28; held-out contains 7 -> 8, 7 -> 8,
  3 -> 6 of 52 (+1.9 [-9.6, +13.2], +1.9 [-4.8, +7.7], +5.8 [-4.6, +16.4]), token F1 -1.0, +2.6, -3.1, none
  passing: fails. Words an answer 20.4 -> 19.5, 20.5 -> 23.6, 18.4 -> 23.9: this reward undoes the shortening and
  moves about one gold answer in 52 a seed, within the noise.
- The token-F1 run with `--set rl_lr=1e-4` (28 min, same SFT): reward 0.10 -> 0.18, 0.06 -> 0.06, 0.10 -> 0.26;
  held-out F1 +7.0 [+2.9, +10.5] (passes), -2.2 [-5.8, +1.8], -0.2 [-5.3, +4.8]: inconclusive, 1 of 3. Every seed
  shortens (words 20.4 -> 10.7, 20.5 -> 14.9, 18.4 -> 14.3), but seed 1 breaks down (contains 7 -> 0 of 52: it
  restates the question, "What Age's ideas allowed Estonian writings to gain significance?").
- The same with the KL term, `--set rl_lr=1e-4 --set rl_beta=0.04` (32 min; a step 38-40 s against 31-33):
  reward 0.09 -> 0.23, 0.08 -> 0.14, 0.11 -> 0.28; held-out F1 +9.5 [+3.0, +16.2] (passes), +1.0 [-1.4, +3.6],
  -1.1 [-5.9, +3.6]: inconclusive, 1 of 3. No breakdown (contains 7 -> 8, 7 -> 9, 3 -> 5 of 52, none passing);
  words 20.4 -> 11.3, 20.5 -> 22.1, 18.4 -> 12.9. Four settings on these passages: a round passes only on token F1
  and only where answers got shorter; gold answers contained never rise measurably. Defaults unchanged.
"""

from __future__ import annotations

import argparse
import time

from pastkit.benchmarks import Loogle, Squad, Toolbench
from pastkit.config import load_profile, read_yaml
from pastkit.past import Study, gate_verdict, rl_gate, rounds_table

BENCHMARKS = {b.name: b for b in (Squad, Loogle, Toolbench)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="squad")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    bench = BENCHMARKS[args.benchmark]()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: KEY=VALUE")
        overrides[key] = read_yaml(value)
    unknown = set(overrides) - bench.params.names()
    if unknown:
        raise SystemExit(f"not {args.benchmark} parameters: {sorted(unknown)}")
    params = bench.params.from_profile({**load_profile(args.profile), **overrides})
    t0 = time.time()
    study = Study.run(bench, params)
    gate = rl_gate(study)
    print(f"\n{args.benchmark} settings: {overrides} (profile {args.profile}); {time.time() - t0:.0f} s")
    print(rounds_table(study).to_markdown(index=False))
    print(gate.to_markdown(index=False))
    print(gate_verdict(gate))


if __name__ == "__main__":
    main()
