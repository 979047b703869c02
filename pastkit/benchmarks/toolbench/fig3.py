"""Fig. 3 (paper Sec. 5.2) and what a reader checks beside it: Target SFT, PaST and the random control on every
target category and seed, the table with its intervals and minimum detectable effects, its Markdown and plot; the
knowledge check (does the SFT teach the tools' parameters?) and the validation check that chose the SFT settings
(bench/toolbench_settings.py); what the agents did, run for run; the conclusion.

Everything here reads stages that `benchmark` and the engine build (answers, models) and builds none of their
contents, so this module is not part of any stage's key: editing a table, a plot or a sentence re-runs no stage.
"""

from __future__ import annotations

import re

import pandas as pd

from ...console import say
from ...evaluation import (
    against_paper,
    bootstrap_interval,
    detectable_cell,
    minimum_detectable_effect,
    paired_difference,
    verdict,
)
from ...generation import generate, load_model
from ...past import RANDOM_CONTROL, Engine, Study
from .benchmark import PAIR_PROMPTS, Toolbench, ToolbenchParams

# Fig. 3 / Sec. 5.2 as reported (Qwen2.5-7B, PPO, GPT-4.1 judge): average success rate over the 20 targets, %.
PAPER_FIG3 = {"Target SFT": 21.9, "PaST": 32.2}

TARGET, PAST = "Target SFT", "PaST"
# the compared methods' columns in Fig. 3's table: (value, interval low, high, − Target SFT, its low, high, mde)
COLUMNS = {PAST: ("PaST %", "PaST low", "PaST high", "PaST − Target SFT", "diff low", "diff high", "mde"),
           RANDOM_CONTROL: ("random %", "random low", "random high", "random − Target SFT", "random diff low",
                            "random diff high", "random mde")}


def run_fig3(study: Study) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Target SFT, PaST (Target SFT + λ·v from the source category) and the random control (Target SFT + λ·r, r
    of v's norm per tensor) on every target category, every seed. Returns (per-category table with the average
    row, every run of every query)."""
    p, bench = study.params, study.benchmark
    frames = []
    for engine in study.engines:
        source = study.rounds[engine.seed][-1]
        for unit in bench.target_units(p):
            target = engine.adapt(unit, "target_sft")
            for method, model in {TARGET: target, PAST: engine.adapt(unit, "post_hoc", source),
                                  RANDOM_CONTROL: engine.random_control(target, source)}.items():
                frames.append(engine.answers(model, unit).assign(method=method, seed=engine.seed))
    answers = pd.concat(frames, ignore_index=True)
    return fig3_table(answers), answers


def fig3_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per category: each method's success rate (%) with a bootstrap interval over queries (runs and seeds
    averaged per query first), and PaST − Target SFT (and the random control − Target SFT, where `answers` has
    it) paired by query with its minimum detectable effect; then the average over categories."""
    rows = []
    per_query = answers.groupby(["category", "method", "document"], sort=False)["score"].mean().reset_index()
    compared = [m for m in COLUMNS if m in set(per_query.method)]
    for cat, g in per_query.groupby("category", sort=False):
        t = g[g.method == TARGET].set_index("document")["score"]
        m, lo, hi = bootstrap_interval(t)
        row = {"category": cat, "queries": len(t), "Target SFT %": 100 * m, "Target SFT low": 100 * lo,
               "Target SFT high": 100 * hi}
        for method in compared:
            s = g[g.method == method].set_index("document")["score"].reindex(t.index)
            value, low, high, diff, dlow, dhigh, mde = COLUMNS[method]
            m, lo, hi = bootstrap_interval(s)
            d, dlo, dhi = paired_difference(s, t)
            row.update({value: 100 * m, low: 100 * lo, high: 100 * hi, diff: 100 * d, dlow: 100 * dlo,
                        dhigh: 100 * dhi, mde: 100 * minimum_detectable_effect(s - t)})
        rows.append(row)
    table = pd.DataFrame(rows)
    cats = per_query.pivot_table(index=["category", "document"], columns="method", values="score").reset_index()
    avg = {"category": "Average (over categories)", "queries": int(table["queries"].sum())}
    avg.update(_category_mean(cats, TARGET))  # mean of category means, resampling queries within each category
    for method in compared:
        value, low, high, diff, dlow, dhigh, mde = COLUMNS[method]
        x = _category_mean(cats, method)
        d = _category_mean(cats.assign(diff=cats[method] - cats[TARGET]), "diff")
        avg.update({value: x[f"{method} %"], low: x[f"{method} low"], high: x[f"{method} high"],
                    diff: d["diff %"], dlow: d["diff low"], dhigh: d["diff high"],
                    mde: 100 * minimum_detectable_effect(cats[method] - cats[TARGET])})  # queries pooled
    table = pd.concat([table, pd.DataFrame([avg])], ignore_index=True)
    table["paper Target SFT % (reported, avg)"] = PAPER_FIG3[TARGET]
    table["paper PaST % (reported, avg)"] = PAPER_FIG3[PAST]
    table["paper_effect"] = PAPER_FIG3[PAST] - PAPER_FIG3[TARGET]
    return table.round(1)


def _category_mean(df: pd.DataFrame, column: str, n_boot: int = 10_000) -> dict:
    """The mean over categories of each category's mean `column`, with a stratified bootstrap interval."""
    import numpy as np
    rng = np.random.default_rng(0)
    groups = [g[column].to_numpy(float) for _, g in df.groupby("category", sort=False)]
    point = float(np.mean([g.mean() for g in groups]))
    boots = np.mean([g[rng.integers(0, len(g), (n_boot, len(g)))].mean(1) for g in groups], axis=0)
    return {f"{column} %": 100 * point, f"{column} low": 100 * float(np.quantile(boots, 0.025)),
            f"{column} high": 100 * float(np.quantile(boots, 0.975))}


def markdown_fig3(table: pd.DataFrame, caption: str) -> str:
    def interval(r, value, low, high, sign=""):
        return f"{r[value]:{sign}.1f} [{r[low]:{sign}.1f}, {r[high]:{sign}.1f}]"

    rows = []
    for r in table.to_dict("records"):
        row = {"category": r["category"], "queries": r["queries"],
               "Target SFT % [95% CI]": interval(r, "Target SFT %", "Target SFT low", "Target SFT high")}
        for value, low, high, diff, dlow, dhigh, mde in COLUMNS.values():
            if value in r:
                name = value.removesuffix(" %")
                row.update({f"{name} % [95% CI]": interval(r, value, low, high),
                            f"{diff} [95% CI]": interval(r, diff, dlow, dhigh, "+"),
                            f"{name}: detectable (80% power)": detectable_cell(r[mde])})
        rows.append(row)
    random = (f"\n\nrandom: {RANDOM_CONTROL}, the control that says whether PaST's difference comes from v's "
              "direction or would come from any vector of its size." if "random %" in table else "")
    return (f"{pd.DataFrame(rows).to_markdown(index=False)}{random}\n\nPaper (reported, Qwen2.5-7B, PPO, GPT-4.1 "
            f"judge, 20 categories): Target SFT {PAPER_FIG3[TARGET]} %, PaST {PAPER_FIG3[PAST]} % on average."
            f"\n\n{caption}")


def plot_fig3(table: pd.DataFrame, caption: str):
    """Per category, Target SFT beside PaST (and the random control, where the table has it) with intervals; the
    average; the paper's averages marked as reported."""
    import matplotlib.pyplot as plt
    import numpy as np

    bars_of = [(TARGET, TARGET, "#9aa5b1"), (PAST, PAST, "#2b6cb0")] + \
        [("random", f"Target SFT {RANDOM_CONTROL}", "#d69e2e")] * ("random %" in table)
    width = 0.8 / len(bars_of)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(bars_of) * len(table) + 2) + 2.5, 3.6))
    x = np.arange(len(table))
    for i, (name, label, color) in enumerate(bars_of):
        m = table[f"{name} %"].to_numpy()
        err = [m - table[f"{name} low"].to_numpy(), table[f"{name} high"].to_numpy() - m]
        bars = ax.bar(x + (i - (len(bars_of) - 1) / 2) * width, m, width * 0.95, yerr=err, capsize=3, color=color,
                      label=f"{label} (measured)")
        flat = table[f"{name} high"].to_numpy() - table[f"{name} low"].to_numpy() == 0
        # every bar labelled (a 0 % bar is otherwise invisible); * where every run scored alike: no spread to
        # estimate from, which is not precision
        ax.bar_label(bars, [f"{v:.0f}{'*' if f else ''}" for v, f in zip(m, flat)], fontsize=7, padding=2)
    for name, style in ((TARGET, ":"), (PAST, "--")):
        ax.axhline(PAPER_FIG3[name], color="#444444", ls=style, lw=1,
                   label=f"paper, {name} average {PAPER_FIG3[name]} % (reported, 7B)")
    ax.set_xticks(x, [f"{c}\n({q} q)" for c, q in zip(table["category"].str.replace("_", " "), table["queries"])],
                  fontsize=7)
    ax.set_ylabel("success rate % (Solved 1, Partially 0.5)\n* every run alike: no interval")
    ax.set_ylim(0, 112)  # room above 100 for the labels of full bars and their intervals
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside: bars reach 100
    ax.set_title("ToolBench closed-book, Fig. 3: Target SFT vs PaST (skill vector from the source category)"
                 + "\nand Target SFT + a random vector of its norm" * (len(bars_of) > 2), fontsize=9)
    fig.suptitle(caption, fontsize=7, y=0.0, va="top")
    fig.tight_layout()
    return fig


def recall_rows(tools: dict, apis: list[str], model_and_tok) -> pd.DataFrame:
    """Per API with required parameters: asked for its definition closed-book (type D prompt, greedy), the share
    of its required parameter names the model writes (quoted, as JSON keys or values)."""
    names = [n for n in apis if tools[n]["required_parameters"]]
    outs = generate(None, [PAIR_PROMPTS["D"].format(name=n) for n in names], max_new_tokens=160, desc="recall",
                    model_and_tok=model_and_tok)
    rows = []
    for n, o in zip(names, outs):
        required = [q["name"] for q in tools[n]["required_parameters"]]
        named = [r for r in required if f'"{r}"' in o[0]]
        rows.append({"api": n, "required": ", ".join(required), "recalled": len(named) / len(required),
                     "output": o[0][:300]})
    return pd.DataFrame(rows, columns=["api", "required", "recalled", "output"])


def parameter_recall(study: Study) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Does the knowledge SFT teach the tools? For every API with required parameters that a domain's SFT covered,
    the model is asked for its definition closed-book (type D prompt, greedy) and scored by the share of the
    API's required parameter names it names; the base model against that domain's SFT model, paired by API
    (first seed). Domains: the source category (its SFT before RL: where the cpu settings were chosen) and each
    target category (its Target SFT). Returns (summary per domain and over the targets, per-API rows)."""
    engine, p, bench = study.engines[0], study.params, study.benchmark
    tools = bench.data(p)["tools"]
    source = study.rounds[engine.seed][0]
    domains = [(f"{source.domain.name} (source)", source.domain, engine.model_of(source.sft))]
    domains += [(unit.name, unit, engine.adapt(unit, "target_sft")) for unit in bench.target_units(p)]
    base = load_model(engine.base)
    per_api = pd.concat([recall_rows(tools, unit.data["apis"], mt).assign(domain=label, method=method)
                         for label, unit, model in domains for method, mt in (("Base", base), ("SFT", model.load()))],
                        ignore_index=True)[["domain", "api", "method", "required", "recalled", "output"]]
    targets = per_api[~per_api.domain.str.endswith("(source)")]
    summary = []
    for label, g in [*per_api.groupby("domain", sort=False), ("All targets", targets)]:
        b = g[g.method == "Base"]["recalled"].to_numpy()
        t = g[g.method == "SFT"]["recalled"].to_numpy()
        d, lo, hi = paired_difference(t, b)
        summary.append({"domain": label, "APIs": len(b), "Base %": round(100 * b.mean(), 1),
                        "SFT %": round(100 * t.mean(), 1),
                        "SFT − Base [95% CI]": f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                        "verdict": verdict(100 * d, 100 * lo, 100 * hi)})
    return pd.DataFrame(summary), per_api


def validation_check(variants: dict[str, ToolbenchParams], seed: int = 0, log=say
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How SFT settings are chosen without target queries: for each named variant of the params, the two SFT
    stages on the source category's validation unit (`Toolbench.validation`), then closed-book episodes on
    its queries and the parameter recall of its APIs, beside the base model's recall. Stages are cached like
    any other. Returns (one row per variant, every episode)."""
    bench, rows, frames, base_recall = Toolbench(), [], [], {}
    for name, p in variants.items():
        engine = Engine(bench, p, seed, log)
        unit = bench.validation(p)
        model = engine.adapt(unit, "target_sft")
        answers = engine.answers(model, unit, "validation").assign(method=name, seed=seed)
        tools = bench.data(p)["tools"]
        recall = recall_rows(tools, unit.data["apis"], model.load())["recalled"]
        if (engine.base, unit.key) not in base_recall:  # the base model's recall: once per model and unit
            base_recall[engine.base, unit.key] = recall_rows(tools, unit.data["apis"],
                                                             load_model(engine.base))["recalled"]
        base = base_recall[engine.base, unit.key]
        row = behaviour(answers).iloc[0].to_dict()
        rows.append({"variant": name, "queries": len(unit.data["queries"]), "APIs": len(unit.data["apis"]),
                     "success %": round(100 * answers["score"].mean(), 1),
                     **{k: row[k] for k in ("finished %", "calls ok % of turns", "failed calls %", "bad format %",
                                            "unknown API %", "mean reward")},
                     "recall %": round(100 * recall.mean(), 1), "base recall %": round(100 * base.mean(), 1)})
        frames.append(answers)
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)


def trajectories(answers: pd.DataFrame, n: int = 2) -> str:
    """Full trajectories of Target SFT and PaST on the same first run of `n` queries (the paper's Appendix A.1)."""
    out = []
    first = answers[(answers.run == 0) & (answers.seed == answers.seed.min())]
    for qid in list(dict.fromkeys(first.document))[:n]:
        rows = first[first.document == qid]
        out.append(f"=== query {qid} ({rows.category.iloc[0]}): {rows['query'].iloc[0]}")
        for r in rows.itertuples():
            out.append(f"--- {r.method}: {r.status}, reward {r.reward}, {r.turns} turns\n{r.trajectory}")
    return "\n".join(out)


def behaviour(answers: pd.DataFrame) -> pd.DataFrame:
    """What the agents did, per method: share of runs finished, solved, and per-turn outcomes."""
    g = answers.groupby("method", sort=False)
    turns = g["turns"].sum()
    return pd.DataFrame({"runs": g.size(), "finished %": 100 * g["finished"].mean(),
                         "Solved %": 100 * g["status"].apply(lambda s: (s == "Solved").mean()),
                         "Partially %": 100 * g["status"].apply(lambda s: (s == "Partially Solved").mean()),
                         "turns": turns, "calls ok % of turns": 100 * g["calls_ok"].sum() / turns,
                         "failed calls %": 100 * g["calls_failed"].sum() / turns,
                         "bad format %": 100 * g["bad_format"].sum() / turns,
                         "unknown API %": 100 * g["unknown_api"].sum() / turns,
                         "mean reward": g["reward"].mean()}).round(1).reset_index()


def paired_runs(answers: pd.DataFrame) -> pd.DataFrame:
    """Target SFT and PaST run for run (same seed, query and run index, so the same sampling seed), per category
    and over all: how often they took the same actions (every `Action` / `Action Input` line), wrote identical
    text and reached the same outcome, and in how many runs PaST scored higher or lower. Fig. 3's differences
    come only from the runs whose outcome differs; identical runs mean the vector did not change behaviour."""
    key = ["seed", "category", "item"]
    target = answers[answers.method == TARGET].set_index(key).sort_index()
    past = answers[answers.method == PAST].set_index(key).reindex(target.index)
    if past["trajectory"].isna().any():
        raise ValueError("paired_runs: a Target SFT run has no PaST run with the same seed, category and item")
    same = pd.DataFrame({"category": target.index.get_level_values("category"),
                         "same actions": (target.trajectory.map(_actions) == past.trajectory.map(_actions)).to_numpy(),
                         "identical text": (target.trajectory == past.trajectory).to_numpy(),
                         "same outcome": (target.status == past.status).to_numpy(),
                         "PaST higher": (past.score > target.score).to_numpy(),
                         "PaST lower": (past.score < target.score).to_numpy()})
    rows = [*same.groupby("category", sort=False), ("all", same)]
    return pd.DataFrame([{"category": name, "runs": len(g), **g.drop(columns="category").sum().astype(int)}
                         for name, g in rows])


def _actions(trajectory: str) -> list[str]:
    """The `Action` and `Action Input` lines of a trajectory, in order (what the agent did, without its thoughts)."""
    return re.findall(r"^Action(?: Input)?: .*$", str(trajectory), flags=re.M)


def conclusion(table: pd.DataFrame, recall: pd.DataFrame, rounds: pd.DataFrame) -> str:
    """PaST against Target SFT, whether the knowledge SFT taught the tools, and whether RL moved, in words."""
    avg = table.iloc[-1]
    allr = recall[recall.domain == "All targets"].iloc[0]
    lines = [f"Knowledge check: Target SFT names {allr['SFT %']}% of the required parameters of its category's "
             f"APIs, the base model {allr['Base %']}% (difference {allr['SFT − Base [95% CI]']}: {allr['verdict']})."]
    lines.append(f"Average over {len(table) - 1} target categories: Target SFT {avg['Target SFT %']:.1f}%, PaST "
                 f"{avg['PaST %']:.1f}%; PaST − Target SFT = {avg['PaST − Target SFT']:+.1f} "
                 f"[{avg['diff low']:+.1f}, {avg['diff high']:+.1f}] points: "
                 f"{verdict(avg['PaST − Target SFT'], avg['diff low'], avg['diff high'])}. "
                 f"(Paper, reported: {PAPER_FIG3[TARGET]}% → {PAPER_FIG3[PAST]}%.)")
    if pd.notna(avg.get("paper_effect")):
        lines[-1] += " " + against_paper(avg["PaST − Target SFT"], avg["diff low"], avg["diff high"], avg["mde"],
                                         avg["paper_effect"])
    better = int((table.iloc[:-1]["PaST − Target SFT"] > 0).sum())
    lines.append(f"PaST scored higher in {better} of {len(table) - 1} categories (paper: 20 of 20).")
    if "random %" in table:
        lines.append(f"The random control ({RANDOM_CONTROL}): {avg['random %']:.1f}%; random − Target SFT = "
                     f"{avg['random − Target SFT']:+.1f} [{avg['random diff low']:+.1f}, "
                     f"{avg['random diff high']:+.1f}] points. What PaST does beyond it is v's direction; what "
                     "both do alike, any vector of v's size would do.")
    if avg["Target SFT %"] == 0 and avg["PaST %"] == 0:
        lines.append("Neither model solved any query: at this scale the comparison says nothing about PaST.")
    r = rounds.iloc[-1]
    if r.reward_never_varied:
        lines.append("GRPO's reward never varied within a group: the skill vector is what the KL term moved.")
    return "\n".join(lines)
