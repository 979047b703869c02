"""Notebook 05's controls over several seeds, without the rest of 05:

    PASTKIT_RUNS=... .venv/bin/python bench/controls_seeds.py --benchmark squad --seeds 0 1 2
    PASTKIT_RUNS=... .venv/bin/python bench/controls_seeds.py --benchmark loogle --seeds 0 1 2

θ_T + λ·v beside θ_T − λ·v and θ_T + λ·r (r random with v's norm in every tensor), for every seed, each with its
own target SFT and skill vector: 05's controls cells (its `control_seeds`, three in the cpu profile; SQuAD's CPT
regime, LooGLE's test documents), alone. The rest of 05 also runs Table 3's wide source rounds, Table 4's target
SFTs, λ and the composition; the controls need only the stages of 02 or 03 per seed, read back if those ran and
trained here otherwise, plus an injection and an evaluation per model. Same stage keys as 05's, so either reads
back what the other built. Prints the table 05 writes (its Target SFT and "+ λ·v" rows are Table 1's CPT or
Table 2's main comparison over the same seeds) and the conclusion's lines for the controls. Writes nothing
outside the stage cache."""

from __future__ import annotations

import argparse

from pastkit import ablations
from pastkit.ablations import SquadAblationParams
from pastkit.benchmarks.loogle import Loogle, LoogleParams
from pastkit.benchmarks.squad import Squad
from pastkit.config import load_profile
from pastkit.past import Study
from pastkit.report import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", choices=["squad", "loogle"], default="squad")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--profile", default="cpu", help="a params profile (smoke: seconds, numbers mean nothing)")
    args = ap.parse_args()
    quiet_libraries()
    values = {**load_profile(args.profile), "seeds": args.seeds}
    if args.benchmark == "squad":
        bench, params = Squad(), SquadAblationParams.from_profile({**values, "regimes": ["cpt"]})
    else:
        bench, params = Loogle(), LoogleParams.from_profile(values)
    params.check_inputs()  # every input file opened before the first stage, as a notebook's `collect` does
    if args.benchmark == "squad":
        unit = bench.target_units(params, "cpt")[0]
    else:
        (unit,) = bench.target_units(params)
    study = Study.run(bench, params)
    ctrl = ablations.table(ablations.controls(study, unit, random_seeds=(0, 1)))
    for flag in study.flags:
        print("⚠", flag)
    print(ablations.markdown(ctrl, study.engines[0].judge.name, params.caption()))
    print()
    print("\n".join(ablations.control_claims(ctrl, {"squad": "SQuAD", "loogle": "LooGLE"}[args.benchmark])))


if __name__ == "__main__":
    main()
