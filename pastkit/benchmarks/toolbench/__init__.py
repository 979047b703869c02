"""ToolBench (paper Sec. 5.2, Appendix F): the benchmark the engine runs (`benchmark`: data, tool-knowledge SFT,
multi-turn RL, scoring), the agent's world it plays in (`agent`: prompt, parser, simulators, rewards, solution
judges, the episode loop), and Fig. 3 with the checks read beside it (`fig3`: tables, plots, the knowledge check,
the conclusion). The first two build stages and are part of their keys; `fig3` only reads them."""

from .benchmark import Toolbench, ToolbenchParams
from .fig3 import (
    TARGET,
    behaviour,
    conclusion,
    markdown_fig3,
    paired_runs,
    parameter_recall,
    plot_fig3,
    run_fig3,
    trajectories,
)

__all__ = ["TARGET", "Toolbench", "ToolbenchParams", "behaviour", "conclusion", "markdown_fig3",
           "paired_runs", "parameter_recall", "plot_fig3", "run_fig3", "trajectories"]
