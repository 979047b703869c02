"""ToolBench (paper Sec. 5.2, Appendix F): the benchmark the engine runs (`benchmark`: data, tool-knowledge SFT,
multi-turn RL, scoring, Fig. 3) and the agent's world it plays in (`agent`: prompt, parser, simulators, rewards,
solution judges, the episode loop)."""

from .benchmark import (
    TARGET,
    Toolbench,
    ToolbenchParams,
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
