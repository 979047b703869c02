"""Notebook 05's SQuAD controls over several seeds, without the rest of 05:

    PASTKIT_RUNS=... .venv/bin/python bench/controls_seeds.py --seeds 0 1 2

θ_T + λ·v beside θ_T − λ·v and θ_T + λ·r (r random with v's norm in every tensor), for every seed, each with its
own target SFT and skill vector: 05's controls cell at `seeds: [0, 1, 2]` (cpu profile, CPT regime). A whole 05 at
three seeds would also repeat Table 3's wide source round per seed and LooGLE's study per seed, hours on 2 cores;
the controls need only 02's stages (read back after `papermill notebooks/02_squad.ipynb out.ipynb -y 'seeds: [0,
1, 2]' -y 'regimes: [cpt]'`, trained here otherwise) plus an injection and an evaluation per model. Prints the
table 05 would print, and the conclusion's lines for the controls. Writes nothing outside the stage cache.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pastkit import ablations
from pastkit.ablations import SquadAblationParams
from pastkit.benchmarks.squad import Squad
from pastkit.past import Study
from pastkit.report import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    quiet_libraries()
    params = replace(SquadAblationParams(), seeds=args.seeds, regimes=["cpt"])
    params.check_inputs()
    bench = Squad()
    study = Study.run(bench, params)
    unit = bench.target_units(params, "cpt")[0]
    ctrl = ablations.table(ablations.controls(study, unit, random_seeds=(0, 1)))
    for flag in study.flags:
        print("⚠", flag)
    print(ablations.markdown(ctrl, study.engines[0].judge.name, params.caption()))
    print()
    print("\n".join(ablations.control_claims(ctrl, "SQuAD")))


if __name__ == "__main__":
    main()
