"""Notebook 05's Tables 3 and 4 on LooGLE, without the rest of 05:

    PASTKIT_RUNS=... .venv/bin/python bench/loogle_tables.py

Table 3 (one round on N source documents, one round on 2N, two rounds on N) and Table 4 (Target SFT, sequential
fine-tuning, pre-injection, post-hoc composition) on 03's study in the profile, as 05's `loogle_tables` cell
makes them, alone: 05 first runs every SQuAD ablation and the controls over three seeds, hours on a CPU without
AMX, before it reaches these. Same stage keys as 05's (the LooGLE params are `ablations.companion_params` of 05's,
as there), so either reads back what the other built. Prints the two tables, the steps Table 3's schedules took,
the study's flags and the conclusion's lines for the two tables. Writes nothing outside the stage cache."""

from __future__ import annotations

import argparse

from pastkit import ablations
from pastkit.ablations import SquadAblationParams
from pastkit.benchmarks.loogle import Loogle, LoogleParams
from pastkit.config import load_profile
from pastkit.past import Study
from pastkit.report import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="a params profile (smoke: seconds, numbers mean nothing)")
    args = ap.parse_args()
    quiet_libraries()
    params = ablations.companion_params(LoogleParams, SquadAblationParams.from_profile(load_profile(args.profile)))
    params.check_inputs()  # every input file opened before the first stage, as a notebook's `collect` does
    study = Study.run(Loogle(), params)
    (unit,) = study.benchmark.target_units(params)
    source = study.rounds[params.seeds[0]][-1]
    judge, caption = study.engines[0].judge.name, params.caption()
    iterative, steps = ablations.iterative_refinement(study, unit)
    table3 = ablations.table(iterative)
    strategies = ablations.table(ablations.transfer_strategies(study.engines[0], unit, source))
    for flag in study.flags:
        print("⚠", flag)
    print(steps.to_string(index=False), end="\n\n")
    print(ablations.markdown(table3, judge, caption), end="\n\n")
    print(ablations.markdown(strategies, judge, caption), end="\n\n")
    print("\n".join(ablations.table_claims(table3, strategies, "LooGLE")))


if __name__ == "__main__":
    main()
