"""How notebook 04's cpu SFT settings are chosen: on Movies queries RL does not use, never on target queries.

    PASTKIT_RUNS=... .venv/bin/python bench/toolbench_settings.py            # Stage 2 variants
    PASTKIT_RUNS=... .venv/bin/python bench/toolbench_settings.py --turns    # the turn limit, same SFT
    PASTKIT_RUNS=... .venv/bin/python bench/toolbench_settings.py --batching # how the SFT's batches are cut
    PASTKIT_RUNS=... .venv/bin/python bench/toolbench_settings.py --precision # fp32 or bf16 autocast

Each variant of the Stage 2 (ReAct alignment) settings is trained on the source category's validation unit
(`Toolbench.validation`: the held-out Movies queries listing the fewest APIs, with the same two SFT stages
a target category gets) and scored as a target is: closed-book episodes (success = the solution reward), what
the turns were, and how many of the APIs' required parameters the model still names (the knowledge Stage 1
taught and Stage 2 can erase). Stages are cached in the runs folder ($PASTKIT_RUNS), so variants share Stage 1.
Prints a Markdown table, then each variant's outcome per query.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pastkit.benchmarks.toolbench import ToolbenchParams
from pastkit.benchmarks.toolbench.fig3 import validation_check
from pastkit.report import quiet_libraries

# The rule, fixed before any run: highest success, then more successful calls, then recall; a tie keeps the
# default. At d31355a "2 epochs, Stage 1 replayed" beat 1 epoch with and without replay (README) and became the
# default; those two are not re-run. At 3a252cb the recovery variant won by successful calls (README); it became
# the default at 62621e7, and the rule's "tie keeps the default" now keeps it.
VARIANTS = {
    "Stage 2: 2 epochs, Stage 1 replayed (the cpu default until 62621e7)": {"stage2_recovery": False},
    "Stage 2: the same plus failed calls corrected (stage2_recovery, the cpu default)": {"stage2_recovery": True},
}
# The turn limit, checked after the recovery examples became the default (they cost a turn per retry): the same
# SFT models, episodes of at most 3 turns (the cpu default, for time) against the paper's 5. Same rule. A longer
# limit also makes every GRPO episode longer, which this check does not measure.
TURN_VARIANTS = {
    "max_turns 3 (the cpu default)": {},
    "max_turns 5 (paper F.3.1)": {"max_turns": 5},
}

# The SFT's batching, checked after the knowledge SFT's batches were sorted over the whole set (e051131) and
# ToolBench's format fell apart in the reference run at 92352fb (a target result: it prompted this check, the check
# decides). Same rule; a tie keeps transformers' batching, the one the Stage 2 recipe above was chosen with.
BATCHING_VARIANTS = {
    "SFT batches: transformers' group_by_length (tool_sft_batching megabatches, the cpu default)": {},
    "SFT batches: sorted over the whole set (tool_sft_batching sorted, as SQuAD and LooGLE)":
        {"tool_sft_batching": "sorted"},
}

# The precision, checked when bf16 autocast on the CPU (`cpu_bf16`) became a parameter: it is a speed setting
# (Stage 2 of Text_Analysis trained in 127 s against 227 s in fp32, same losses to two digits), so it has to be
# no worse, not better. Same rule, but a tie goes to bf16, the cheaper. Its GRPO is not part of this check. At
# 0fa9174 bf16 (then also scoring in bf16) won and became ToolBench's default; since then models are scored in fp32
# and the check was run again (README). The other checks above ran in fp32 and now train in bf16.
PRECISION_VARIANTS = {
    "fp32 (the cpu default until bf16 won this check)": {"cpu_bf16": False},
    "bf16 autocast on the CPU (cpu_bf16, the cpu default)": {"cpu_bf16": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group()
    for flag, variants, what in (("--turns", TURN_VARIANTS, "the turn limit, on the default SFT"),
                                 ("--batching", BATCHING_VARIANTS, "the SFT's batching, on the default Stage 2"),
                                 ("--precision", PRECISION_VARIANTS, "fp32 against bf16 autocast, on the defaults")):
        which.add_argument(flag, dest="variants", action="store_const", const=variants, help=what)
    args = ap.parse_args()
    quiet_libraries()
    base = ToolbenchParams()
    variants = args.variants or VARIANTS
    table, answers = validation_check({name: replace(base, **change) for name, change in variants.items()})
    print(table.to_markdown(index=False))
    print(answers.groupby(["method", "query"], sort=False)["status"].agg(lambda s: ", ".join(s)).to_markdown())


if __name__ == "__main__":
    main()
