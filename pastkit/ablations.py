"""Ablations and controls on any benchmark's engine (paper Sec. 5.3 and Table 4; the referee's controls; λ).

* Iterative refinement (Table 3): PaST with the vector of one round on N, one round on 2N, two rounds on N.
* Transfer strategies (Table 4): Target SFT, Sequential fine-tuning, Pre-injection, Post-hoc composition (PaST),
  each the engine's `adapt` with one of `past.STRATEGIES`.
* Controls: the target model plus −λ·v and plus a random vector with v's norm in every tensor, beside +λ·v.
  If they help as much as v, the skill vector's direction is not what helps.
* Composition: the skill vectors of two benchmarks added together, scored on each benchmark beside each vector
  alone, so interference is measured rather than assumed.
* λ: chosen on a validation split (the target SFT of validation documents plus λ·v, for each λ of a grid), then
  reported on the test split beside λ = 1; never chosen on test. Likewise a λ per module group (attention, MLP,
  the rest), by coordinate search on validation.

Every comparison is scored by the benchmark's own `score` (cached answers) and summarised with intervals over
documents, paired against Target SFT.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pandas as pd

from .benchmarks.squad import SquadParams, load_passages, passage_domain
from .config import PastParams, load_profile
from .evaluation import paired_difference, summarize, verdict
from .judges import STRICT_METRICS
from .past import RANDOM_CONTROL, STRATEGIES, Domain, Engine, Round, Study
from .skill_vector import MODULE_GROUPS

TARGET = STRATEGIES["target_sft"].label
# Table 3 doubles a round's source documents: which parameter sets N, and where a domain keeps its documents
SOURCE_SIZE = {"squad": ("n_source", "passages"), "loogle": ("source_docs", "docs")}
METRICS = ("score", *STRICT_METRICS)


@dataclass(frozen=True)
class SquadAblationParams(SquadParams):
    """Notebook 05 on SQuAD: 02's parameters (so its stages are reused), plus the validation split and λ grid."""

    seeds: list = field(default_factory=lambda: [0])  # Tables 3, 4, λ and composition: the first seed's
    n_val: int = 8                              # validation passages: the target file's last, never its first
    lam_grid: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])  # λ values tried on validation
    loogle_tables: bool = True                  # Tables 3 and 4 on LooGLE too (about 15 min in cpu; README)
    control_seeds: list = field(default_factory=lambda: [0, 1, 2])  # the controls' seeds, each its own θ_T and v

    def __post_init__(self):
        super().__post_init__()
        if not self.control_seeds or len(set(self.control_seeds)) != len(self.control_seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in self.control_seeds):
            raise ValueError(f"control_seeds={self.control_seeds!r}: distinct integers")
        if not self.lam_grid or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                        for x in self.lam_grid):
            raise ValueError(f"lam_grid={self.lam_grid!r}: a non-empty list of finite numbers")

    def check_inputs(self) -> None:
        super().check_inputs()
        n = len(load_passages(self.target_passages))
        first = max(self.n_target, self.n_single)
        if n < first + self.n_val:
            raise ValueError(f"{self.target_passages}: has {n} passages, too few for {self.n_val} validation "
                             f"passages (its last) apart from the {first} target passages (its first)")


def squad_validation(p: SquadAblationParams) -> Domain:
    """The last n_val passages of the SQuAD target file, all at once (CPT regime): where λ is chosen."""
    passages = [{**x, "pid": i} for i, x in enumerate(load_passages(p.target_passages))]
    return passage_domain("validation", passages[len(passages) - p.n_val:], "cpt")


def transfer_strategies(engine: Engine, unit: Domain, source: Round) -> pd.DataFrame:
    """Answers of the four Table 4 strategies on `unit`, with the skill vector of `source`."""
    return pd.concat([engine.answers(engine.adapt(unit, s, source), unit).assign(method=s.label, seed=engine.seed)
                      for s in STRATEGIES.values()], ignore_index=True)


def iterative_refinement(study: Study, unit: Domain) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 (paper Sec. 5.3.1): PaST on `unit` with the skill vector of one round on N source documents, of one
    round on 2N (the same 2N documents the two rounds see, and twice the RL prompts: equal data and optimisation
    steps), and of two rounds on N (Algorithm 1). The 1×N and 2×N vectors are the study's own rounds; the 1×2N
    run is a study of its own with `rounds=1`, twice the source documents per round and twice `rl_prompts`.
    Returns (answers, the steps each variant took, read from its stages, so "equal steps" is checked, not
    assumed). What the 1×2N run flags (a zero vector, a reward that never varied) joins the study's flags."""
    p = study.params
    size, documents = SOURCE_SIZE[study.benchmark.name]
    n = getattr(p, size)
    double = dataclasses.replace(p, rounds=1, rl_prompts=2 * p.rl_prompts, **{size: 2 * n})
    frames, steps = [], []
    for engine in study.engines:
        rounds = study.rounds[engine.seed]
        wide_engine = Engine(study.benchmark, double, engine.seed, engine.log)
        [wide] = wide_engine.distill()
        for message in wide_engine.flags:
            engine.flag(f"1 round on {2 * n}: {message}")
        variants = {f"1 round (N = {n})": [rounds[0]], f"1 round (N = {2 * n})": [wide],
                    f"{len(rounds)} rounds (N = {n})": rounds}
        frames.append(engine.answers(engine.adapt(unit, "target_sft"), unit).assign(method=TARGET, seed=engine.seed))
        for name, used in variants.items():
            frames.append(engine.answers(engine.adapt(unit, "post_hoc", used[-1]), unit)
                          .assign(method=name, seed=engine.seed))
            steps.append({"seed": engine.seed, "variant": name,
                          "source documents": sum(len(r.domain.data[documents]) for r in used),
                          "SFT steps": sum(engine.sft_steps(r.sft) for r in used),
                          "GRPO steps": sum(engine.summary(r.rl)["steps"] for r in used)})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(steps)


def controls(study: Study, unit: Domain, random_seeds: tuple[int, ...] = (0,)) -> pd.DataFrame:
    """Answers of θ_T, θ_T + λ·v (PaST), θ_T − λ·v and θ_T + λ·r (r random, ‖r‖ = ‖v‖ per tensor, one per
    `random_seeds`) on `unit`, for every seed of `study`, each with its own θ_T and its last round's v. They cost
    an injection and an evaluation each, so unlike Table 4 they run on every seed the study trained."""
    frames = []
    for engine in study.engines:
        source = study.rounds[engine.seed][-1]
        lam, target = engine.p.lam, engine.adapt(unit, "target_sft")
        models = {TARGET: target, "+ λ·v (PaST)": engine.adapt(unit, "post_hoc", source),
                  "− λ·v": engine.model_of(target.stage, source.vector, -lam)}
        for s in random_seeds:
            models[f"{RANDOM_CONTROL} (draw {s})"] = engine.random_control(target, source, s)
        frames += [engine.answers(m, unit).assign(method=name, seed=engine.seed) for name, m in models.items()]
    return pd.concat(frames, ignore_index=True)


def over_seeds(study: Study, seeds: list[int]) -> Study:
    """`study`'s configuration on `seeds` instead of its own: the controls' seeds. A seed it shares with `study`
    reads back that seed's stages; any other trains its own source rounds (and, when asked, target SFT)."""
    if list(seeds) == list(study.params.seeds):
        return study
    return Study.run(study.benchmark, dataclasses.replace(study.params, seeds=list(seeds)))


def companion_params(cls: type[PastParams], params: PastParams) -> PastParams:
    """Another notebook's parameters in the same profile (params/<profile>.yaml over that notebook's defaults),
    with this notebook's model, seeds, λ, judge and vLLM switch: the configuration whose stages that notebook
    trained, so they are read back, not trained again."""
    try:
        values = load_profile(params.profile)
    except FileNotFoundError:
        raise ValueError(f"profile {params.profile!r}: the composition reads the other benchmark's parameters from "
                         f"params/{params.profile}.yaml, which does not exist") from None
    shared = {k: getattr(params, k) for k in ("profile", "model", "seeds", "lam", "judge", "use_vllm")}
    return cls.from_profile({**values, **shared})


def composition(sides: dict[str, tuple[Engine, Domain, Round]]) -> pd.DataFrame:
    """Two benchmarks' skill vectors, each side's (engine, target unit, last source round): on each side's
    target unit, θ_T; θ_T + λ·v_own (PaST); θ_T + λ·v_other; θ_T + λ·(v_own + v_other). Answers of every
    model, with a `benchmark` column. The vectors must come from the same base model."""
    if len(sides) != 2:
        raise ValueError(f"composition of two benchmarks' vectors, got {list(sides)}")
    if len({str(e.base_key) for e, _, _ in sides.values()}) != 1:
        raise ValueError(f"the skill vectors of {list(sides)} come from different base models; they do not add")
    vectors = {name: source.vector for name, (_, _, source) in sides.items()}
    first_engine = next(iter(sides.values()))[0]
    both = first_engine.derived_vector("sum", sorted(vectors.values(), key=lambda v: v.key))  # serves both sides
    frames = []
    for name, (engine, unit, _) in sides.items():
        [other] = [n for n in sides if n != name]
        lam, target = engine.p.lam, engine.adapt(unit, "target_sft")
        models = {TARGET: target, own_label(name): engine.model_of(target.stage, vectors[name], lam),
                  f"+ λ·v_{other}": engine.model_of(target.stage, vectors[other], lam),
                  f"+ λ·(v_{name} + v_{other})": engine.model_of(target.stage, both, lam)}
        frames += [engine.answers(m, unit).assign(method=method, seed=engine.seed, benchmark=name)
                   for method, m in models.items()]
    return pd.concat(frames, ignore_index=True)


def choose_lambda(engine: Engine, validation: Domain, source: Round, grid: list[float]) -> pd.DataFrame:
    """Mean validation score of target SFT + λ·v for each λ of `grid`; the chosen λ is the best (ties: nearest 1)."""
    target = engine.adapt(validation, "target_sft").stage
    rows = []
    for lam in grid:
        a = engine.answers(engine.model_of(target, source.vector, lam), validation, "validation")
        rows.append({"seed": engine.seed, "lam": lam, "validation score %": 100 * a["score"].mean(),
                     **{f"validation {m} %": 100 * a[m].mean() for m in STRICT_METRICS},
                     "validation questions": len(a)})
    table = pd.DataFrame(rows)
    best = max(rows, key=lambda r: (r["validation score %"], -abs(r["lam"] - 1.0)))["lam"]
    table["chosen"] = table["lam"] == best
    return table


def choose_group_lambdas(engine: Engine, validation: Domain, source: Round, grid: list[float],
                         start: float) -> tuple[dict, pd.DataFrame]:
    """λ per module group (attention, MLP, the rest), chosen on validation by coordinate search: from every group
    at `start` (the λ chosen for the whole vector), each group in turn tries every λ of `grid` with the others
    held, and keeps the best (ties: its current value). Returns (the chosen λs, every trial)."""
    target = engine.adapt(validation, "target_sft").stage
    scales, rows, seen = dict.fromkeys(MODULE_GROUPS, start), [], {}

    def score(sc: dict) -> float:
        key = tuple(sc[g] for g in MODULE_GROUPS)
        if key not in seen:
            vector = engine.derived_vector("groups", [source.vector], scales=dict(sc))
            seen[key] = 100 * engine.answers(engine.model_of(target, vector), validation, "validation")["score"].mean()
        return seen[key]

    for group in MODULE_GROUPS:
        current = score(scales)
        for lam in grid:
            trial = {**scales, group: lam}
            rows.append({"seed": engine.seed, "group": group, **{f"λ {g}": trial[g] for g in MODULE_GROUPS},
                         "validation score %": score(trial)})
        best = max(grid, key=lambda x: (score({**scales, group: x}), x == scales[group]))
        if score({**scales, group: best}) > current:
            scales[group] = best
    table = pd.DataFrame(rows)
    table["chosen"] = [all(r[f"λ {g}"] == scales[g] for g in MODULE_GROUPS) for r in rows]
    return scales, table


def group_lambdas_on_test(engine: Engine, unit: Domain, source: Round, scales: dict, chosen: float) -> pd.DataFrame:
    """Test answers of Target SFT, PaST at the one λ chosen on validation, and PaST with the per-group λs."""
    target = engine.adapt(unit, "target_sft")
    label = ", ".join(f"{g} {scales[g]:g}" for g in MODULE_GROUPS)
    models = {TARGET: target, f"PaST, λ = {chosen:g} (chosen on validation)": engine.adapt(unit, "post_hoc", source,
                                                                                       chosen),
              f"PaST, λ per group ({label}; chosen on validation)": engine.model_of(
                  target.stage, engine.derived_vector("groups", [source.vector], scales=scales))}
    return pd.concat([engine.answers(m, unit).assign(method=name, seed=engine.seed) for name, m in models.items()],
                     ignore_index=True)


def lambda_on_test(engine: Engine, unit: Domain, source: Round, chosen: float) -> pd.DataFrame:
    """Test answers of Target SFT, PaST at λ = 1 (the paper's) and PaST at the λ chosen on validation (one row if
    validation chose 1)."""
    models = {TARGET: engine.adapt(unit, "target_sft")}
    if chosen != 1.0:
        models["PaST, λ = 1"] = engine.adapt(unit, "post_hoc", source, 1.0)
    models[f"PaST, λ = {chosen:g} (chosen on validation)"] = engine.adapt(unit, "post_hoc", source, chosen)
    return pd.concat([engine.answers(m, unit).assign(method=name, seed=engine.seed) for name, m in models.items()],
                     ignore_index=True)


def table(answers: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows per method (within each `by` group): score and strict metrics with intervals over documents, paired
    against Target SFT. Strict metrics a benchmark does not score are left out."""
    return summarize(answers, baseline=TARGET, metrics=tuple(m for m in METRICS if m in answers), by=by)


def markdown(t: pd.DataFrame, judge: str, caption: str) -> str:
    rows = []
    for r in t.itertuples():
        diff = "—" if r.method == TARGET else (f"{r.score_vs_baseline:+.1f} [{r.score_vs_baseline_ci_low:+.1f}, "
                                              f"{r.score_vs_baseline_ci_high:+.1f}]")
        rows.append({"method": r.method, f"{judge} % [95% CI]": f"{r.score:.1f} [{r.score_ci_low:.1f}, "
                     f"{r.score_ci_high:.1f}]", "vs Target SFT [95% CI]": diff,
                     **{label: f"{getattr(r, m):.1f}" for m, label in (("contains", "contains gold %"),
                                                                       ("exact", "exact %")) if hasattr(r, m)},
                     "questions / documents": f"{r.n_items} / {r.n_documents}"})
        if r.seeds > 1:  # the seeds' spread beside the documents'
            rows[-1]["vs Target SFT, over seeds [95% CI]"] = "—" if r.method == TARGET else (
                f"{r.score_vs_baseline:+.1f} [{r.score_vs_baseline_seed_ci_low:+.1f}, "
                f"{r.score_vs_baseline_seed_ci_high:+.1f}]")
            rows[-1]["per seed"] = r.score_per_seed
    return f"{pd.DataFrame(rows).to_markdown(index=False)}\n\n{caption}"


def composition_table(answers: pd.DataFrame) -> pd.DataFrame:
    """`table` per benchmark, plus each row's paired difference to that benchmark's own vector alone (PaST),
    with its interval over documents: the interference of adding the other benchmark's vector."""
    t = table(answers, by=("benchmark",))
    diffs = []
    for r in t.itertuples():
        g = answers[answers.benchmark == r.benchmark]
        per_item = g.groupby(["method", "item"], sort=False).agg(score=("score", "mean"),
                                                                 document=("document", "first"))
        x, own = per_item.loc[r.method], per_item.loc[own_label(r.benchmark)]
        diffs.append([100 * v for v in paired_difference(x["score"], own["score"].reindex(x.index), x["document"])])
    t[["score_vs_own", "score_vs_own_ci_low", "score_vs_own_ci_high"]] = diffs
    return t.round(2)


def own_label(benchmark: str) -> str:
    return f"+ λ·v_{benchmark} (PaST)"


def markdown_by(t: pd.DataFrame, judges: dict[str, str], caption: str) -> str:
    """`markdown` for a table with a `benchmark` column: one block per benchmark, each with its judge."""
    blocks = [f"**Scored on {b}**\n\n" + markdown(g, judges[b], "").rstrip()
              for b, g in t.groupby("benchmark", sort=False)]
    return "\n\n".join(blocks) + f"\n\n{caption}"


def plot(t: pd.DataFrame, title: str, caption: str):
    """Paired difference to Target SFT per method, with intervals; one panel per benchmark if `t` has several."""
    import matplotlib.pyplot as plt

    groups = list(t.groupby("benchmark", sort=False)) if "benchmark" in t else [("", t)]
    n = max(len(g[g.method != TARGET]) for _, g in groups)
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, len(groups) * (0.9 + 0.45 * n)), squeeze=False)
    for ax, (name, g) in zip(axes[:, 0], groups):
        rows = g[g.method != TARGET]
        y = list(range(len(rows)))[::-1]
        seeds = int(rows.seeds.max()) if "seeds" in rows else 1
        ax.errorbar(rows.score_vs_baseline, y, xerr=[rows.score_vs_baseline - rows.score_vs_baseline_ci_low,
                                                     rows.score_vs_baseline_ci_high - rows.score_vs_baseline],
                    fmt="o", color="#b2182b", capsize=3, label="95% CI over documents")
        if seeds > 1:  # the seeds' spread, just below the documents'
            ax.errorbar(rows.score_vs_baseline, [v - 0.25 for v in y],
                        xerr=[rows.score_vs_baseline - rows.score_vs_baseline_seed_ci_low,
                              rows.score_vs_baseline_seed_ci_high - rows.score_vs_baseline],
                        fmt="s", color="#2166ac", capsize=3, label=f"95% CI over {seeds} seeds")
            ax.legend(fontsize=7, loc="best")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, rows.method)
        ax.set_title(f"{title}{f', scored on {name}' if name else ''}", fontsize=10)
    spread = "" if "seeds" in t and t.seeds.max() > 1 else ", 95% CI over documents"
    axes[-1, 0].set_xlabel(f"paired difference to Target SFT (points{spread})")
    fig.suptitle(caption, fontsize=8, y=0.0, va="top")
    fig.tight_layout()
    return fig


def _diff(t: pd.DataFrame, method: str) -> tuple[str, str]:
    """The paired difference to Target SFT with its interval over documents, and in words; with several seeds,
    also its interval over seeds, and the words say whether the two intervals agree."""
    r = t.set_index("method").loc[method]
    d = f"{r.score_vs_baseline:+.1f} [{r.score_vs_baseline_ci_low:+.1f}, {r.score_vs_baseline_ci_high:+.1f}] points"
    v = verdict(r.score_vs_baseline, r.score_vs_baseline_ci_low, r.score_vs_baseline_ci_high)
    if r.seeds > 1:
        lo, hi = r.score_vs_baseline_seed_ci_low, r.score_vs_baseline_seed_ci_high
        d += f" (interval over documents; [{lo:+.1f}, {hi:+.1f}] over {int(r.seeds)} seeds)"
        v = f"over documents, {v}; over seeds, {verdict(r.score_vs_baseline, lo, hi)}"
    return d, v


def table_claims(table3: pd.DataFrame | None, strategies: pd.DataFrame, where: str = "") -> list[str]:
    """The paper's Table 3 and Table 4 claims, checked in words against the tables (`where`: a benchmark name)."""
    at, lines = f" on {where}" if where else "", []
    if table3 is not None:
        t3 = table3[table3.method != TARGET].set_index("method")["score"]
        lines.append(f"Iterative refinement (Table 3){at}, PaST score per source schedule: "
                     + ", ".join(f"{m} {x:.1f}" for m, x in t3.items())
                     + (f"; best: {t3.idxmax()}" if (t3 == t3.max()).sum() == 1 else "; the best ones tie")
                     + ". The paper's claim is that 2 rounds on N beat 1 round on 2N at equal steps.")
        for m in t3.index:
            d, v = _diff(table3, m)
            lines.append(f"  {m} − Target SFT = {d}: {v}.")
    s = strategies.set_index("method")["score"]
    order = " > ".join(f"{m} ({s[m]:.1f})" for m in s.sort_values(ascending=False).index)
    lines.append(f"Transfer strategies{at}, ordered by score: {order}. The paper's order is post-hoc > "
                 "pre-injection > sequential.")
    return lines


def control_claims(ctrl: pd.DataFrame, where: str) -> list[str]:
    """Each control's paired difference to Target SFT, in words (`where`: a benchmark name)."""
    return [f"Control ({where}): {m} − Target SFT = {d}: {v}."
            for m in ctrl.method if m != TARGET for d, v in [_diff(ctrl, m)]]


def conclusion(strategies: pd.DataFrame, ctrl: pd.DataFrame, lam: pd.DataFrame, on_test: pd.DataFrame,
               groups_on_test: pd.DataFrame | None = None, table3: pd.DataFrame | None = None,
               composed: pd.DataFrame | None = None, loogle: tuple[pd.DataFrame, pd.DataFrame] | None = None,
               loogle_ctrl: pd.DataFrame | None = None) -> str:
    """One line per claim, from the numbers (`loogle`: Tables 3 and 4 on LooGLE, when they were run;
    `loogle_ctrl`: the controls on LooGLE)."""
    lines = table_claims(table3, strategies, "SQuAD" if loogle else "") + (table_claims(*loogle, "LooGLE")
                                                                          if loogle else [])
    for bench, table in (("SQuAD", ctrl), ("LooGLE", loogle_ctrl)):
        lines += control_claims(table, bench) if table is not None else []
    chosen = lam.loc[lam.chosen, "lam"].iloc[0]
    lines.append(f"λ chosen on validation: {chosen:g} (grid {', '.join(f'{x:g}' for x in lam.lam)}).")
    for m in [m for m in on_test.method if m != TARGET]:
        d, v = _diff(on_test, m)
        lines.append(f"On test: {m} − Target SFT = {d}: {v}.")
    if groups_on_test is not None:
        m = groups_on_test.method.iloc[-1]
        d, v = _diff(groups_on_test, m)
        lines.append(f"On test: {m} − Target SFT = {d}: {v}.")
    for bench, g in composed.groupby("benchmark", sort=False) if composed is not None else []:
        own, both = g[g.method == own_label(bench)].iloc[0], g.iloc[-1]
        lines.append(f"Composition, scored on {bench}: {both.method} {both.score:.1f}, {own.method} {own.score:.1f}; "
                     f"the difference {both.score_vs_own:+.1f} [{both.score_vs_own_ci_low:+.1f}, "
                     f"{both.score_vs_own_ci_high:+.1f}] points is the other vector's interference: "
                     f"{verdict(both.score_vs_own, both.score_vs_own_ci_low, both.score_vs_own_ci_high)}.")
    return "\n".join(lines)
