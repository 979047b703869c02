"""Intervals every reported number carries, and the table rows built from per-item scores.

Items cluster: questions about one passage (or document) succeed or fail together, so intervals resample
documents, not questions (a cluster bootstrap; with one question per document it is the ordinary
bootstrap). A comparison of two methods on the same items is the paired bootstrap of the per-item
difference, resampled by document too. With several seeds, an item's score is first averaged over seeds
(the document interval), and each seed's own mean is reported beside it with a t-interval over seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEVEL = 0.95
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
# Student t quantiles by degrees of freedom: 0.975 (two-sided 5 % test) and 0.80 (80 % power); normal beyond 30.
_T975 = {**_T95, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048, 30: 2.042}
_T80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
        11: 0.876, 12: 0.873, 13: 0.870, 14: 0.868, 15: 0.866, 16: 0.865, 17: 0.863, 18: 0.862, 19: 0.861,
        20: 0.860, 22: 0.858, 24: 0.857, 26: 0.856, 28: 0.855, 30: 0.854}


def _t(table: dict, df: int, normal: float) -> float:
    """A tabulated t quantile, the next tabulated smaller df (a wider interval) between rows, normal past 30."""
    if df > 30:
        return normal
    return table[max(k for k in table if k <= df)]


def minimum_detectable_effect(diffs, groups=None) -> float:
    """The smallest true mean paired difference a two-sided 5 % test detects with 80 % power, given the spread
    of these paired differences over documents: (t.975 + t.80, df = documents − 1) × the cluster-robust standard
    error of their mean. A null result says nothing about effects below it. NaN with fewer than 2 documents, and
    where every document's differences sum to the same multiple of its size (no spread to estimate it from, e.g. a
    metric both models score 0 on everywhere): "detectable ±0" would claim a precision the data does not have."""
    x = np.asarray(diffs, dtype=float)
    g = np.arange(len(x)) if groups is None else pd.factorize(np.asarray(groups))[0]
    docs = int(g.max()) + 1 if len(x) else 0
    if docs < 2:
        return float("nan")
    sums, counts = np.bincount(g, weights=x), np.bincount(g).astype(float)
    mean = sums.sum() / counts.sum()
    se = np.sqrt(docs / (docs - 1) * ((sums - mean * counts) ** 2).sum()) / counts.sum()
    if not se > 0:
        return float("nan")
    return float((_t(_T975, docs - 1, 1.960) + _t(_T80, docs - 1, 0.8416)) * se)


def bootstrap_interval(scores, groups=None, level: float = LEVEL, n_boot: int = 10_000,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over groups (documents) of items, or over items if no groups."""
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    g = np.arange(len(x)) if groups is None else pd.factorize(np.asarray(groups))[0]
    sums, counts = np.bincount(g, weights=x), np.bincount(g).astype(float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(a, b, groups=None, level: float = LEVEL, n_boot: int = 10_000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean of a − b, low, high) over paired items (same items, same order), resampled by group."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    return bootstrap_interval(a - b, groups, level, n_boot, seed)


def seed_interval(means) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed means: a t-interval over seeds (NaN bounds with one seed)."""
    m = np.asarray(means, dtype=float)
    if len(m) < 2:
        return float(m.mean()) if len(m) else float("nan"), float("nan"), float("nan")
    half = _T95.get(len(m) - 1, 1.96) * m.std(ddof=1) / np.sqrt(len(m))
    return float(m.mean()), float(m.mean() - half), float(m.mean() + half)


def summarize(answers: pd.DataFrame, baseline: str, metrics: tuple[str, ...] = ("score",),
              by: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per method (within each `by` group): each metric in % with its document interval, the paired
    difference to `baseline` with its interval, the minimum detectable effect of that comparison (paired, over
    documents, 80 % power: `mde` for the first metric, the table's headline, `<metric>_mde` for the others; NaN on
    the baseline's own row), and per-seed means with an interval over seeds, for the metric and for the difference
    (each seed's difference of means; t-interval, NaN with one seed).

    `answers` has a row per (method, seed, item) with columns method, seed, item, document and the metrics.
    """
    rows = []
    for keys, part in answers.groupby(list(by), sort=False) if by else [((), answers)]:
        keys = keys if isinstance(keys, tuple) else (keys,)
        ref_part = part[part.method == baseline]
        for method, df in part.groupby("method", sort=False):
            row = dict(zip(by, keys))
            row.update({"method": method, "n_items": df["item"].nunique(), "n_documents": df["document"].nunique(),
                        "seeds": df["seed"].nunique()})
            for i, m in enumerate(metrics):
                per_item = df.groupby("item", sort=False).agg(v=(m, "mean"), document=("document", "first"))
                mean, lo, hi = bootstrap_interval(per_item["v"], per_item["document"])
                ref = ref_part.groupby("item", sort=False)[m].mean().reindex(per_item.index)
                d, dlo, dhi = paired_difference(per_item["v"], ref, per_item["document"])
                mde = float("nan") if method == baseline else \
                    minimum_detectable_effect(per_item["v"] - ref, per_item["document"])
                row["mde" if i == 0 else f"{m}_mde"] = 100 * mde
                per_seed = df.groupby("seed")[m].mean()
                _, slo, shi = seed_interval(per_seed)
                seed_diffs = (per_seed - ref_part.groupby("seed")[m].mean()).dropna()
                _, dslo, dshi = seed_interval(seed_diffs)
                row.update({m: 100 * mean, f"{m}_ci_low": 100 * lo, f"{m}_ci_high": 100 * hi,
                            f"{m}_vs_baseline": 100 * d, f"{m}_vs_baseline_ci_low": 100 * dlo,
                            f"{m}_vs_baseline_ci_high": 100 * dhi,
                            f"{m}_seed_ci_low": 100 * slo, f"{m}_seed_ci_high": 100 * shi,
                            f"{m}_vs_baseline_seed_ci_low": 100 * dslo, f"{m}_vs_baseline_seed_ci_high": 100 * dshi,
                            f"{m}_per_seed": "; ".join(f"{s}: {100 * v:.1f}" for s, v in per_seed.items())})
            if "prediction" in df:  # how long the answers are: token F1 pays for precision as well as recall
                row["words"] = float(df["prediction"].fillna("").astype(str).str.split().str.len().mean())
            rows.append(row)
    return pd.DataFrame(rows).round(2)


def length_note(table: pd.DataFrame, baseline: str, by: tuple[str, ...] = ()) -> str:
    """For each method that beats `baseline` on the score (interval above zero): its answers' length against the
    baseline's, and its difference on the strict metric `contains`. Token F1 rewards a shorter answer that keeps
    the gold words, so a score gain with shorter answers and no gain in `contains` is a change in the form of the
    answers (RL's brevity carried over), not more facts recalled; the sentence says which it is."""
    if "words" not in table or "contains_vs_baseline" not in table:
        return ""
    lines = []
    for keys, t in table.groupby(list(by), sort=False) if by else [((), table)]:
        label = f"[{', '.join(map(str, keys if isinstance(keys, tuple) else (keys,)))}] " if by else ""
        base = t[t.method == baseline].iloc[0]
        for r in t[(t.method != baseline) & (t.score_vs_baseline_ci_low > 0)].itertuples():
            strict = (f"{r.contains_vs_baseline:+.1f} [{r.contains_vs_baseline_ci_low:+.1f}, "
                      f"{r.contains_vs_baseline_ci_high:+.1f}]")
            if r.contains_vs_baseline_ci_low > 0:
                what = "it also contains the gold answer more often, so more facts are recalled, not only shorter"
            elif r.words < base.words:
                what = ("shorter answers that contain the gold answer no more often: the gain is in the form of the "
                        "answers (token F1's precision), not in facts recalled")
            else:
                what = "its answers are no shorter, so length does not explain the gain"
            lines.append(f"{label}{r.method} answers in {r.words:.1f} words against {base.words:.1f} for {baseline}, "
                         f"and contains the gold answer {strict} points: {what}.")
    return "\n".join(lines)


def verdict(diff: float, low: float, high: float) -> str:
    """Words for a paired difference with its interval."""
    if low > 0:
        return "better: the interval excludes zero"
    if high < 0:
        return "worse: the interval excludes zero"
    return "this run cannot tell them apart (the interval includes zero)"


def against_paper(diff: float, low: float, high: float, mde: float, paper: float) -> str:
    """A sentence on a paired difference beside the paper's effect for the same comparison: whether the paper's
    effect lies inside this run's interval, and whether this evaluation could have seen an effect of that size
    (its minimum detectable effect at 80 % power, `minimum_detectable_effect`, against the paper's)."""
    if low <= paper <= high:
        where = "lies inside this interval: this run neither confirms nor rules it out"
    elif paper > high:
        where = "lies above this interval: this run rules out an effect of the paper's size"
    else:
        where = "lies below this interval: the effect here is larger than the paper's"
    if pd.isna(mde):
        power = "no spread to say what effect this evaluation could detect"
    elif mde <= abs(paper):
        power = f"this evaluation detects {mde:.1f} points with 80 % power, so it could have seen an effect that large"
    else:
        power = f"this evaluation detects only {mde:.1f} points with 80 % power: too small to see an effect that large"
    return f"Against the paper: the paper's effect (7B), {paper:+.1f} points, {where}; {power}."


def detectable_cell(mde: float, paper: float | None = None) -> str:
    """A table's "detectable (80% power)" cell: the minimum detectable effect in points, with the paper's effect for
    the same comparison beside it where there is one."""
    if pd.isna(mde):
        return "—"
    return f"±{mde:.1f}" + ("" if paper is None or pd.isna(paper) else f" (paper's effect {paper:+.1f})")


def draw_method_rows(ax, dax, t: pd.DataFrame, title: str, unit: str, baseline: str) -> None:
    """One panel pair of a methods table: score bars with intervals (PaST rows in red) on `ax`, and each row's
    paired difference to `baseline` with its interval on `dax`. `unit` names what the intervals resample."""
    y = list(range(len(t)))[::-1]
    colors = ["#b2182b" if m.startswith("PaST") else "#4d4d4d" for m in t.method]
    ax.barh(y, t.score, xerr=[t.score - t.score_ci_low, t.score_ci_high - t.score], color=colors, alpha=0.85,
            capsize=3)
    ax.set_yticks(y, t.method)
    metric = str(t["judge"].iloc[0]) if "judge" in t else "score"
    n = int(t["n_documents"].min())
    few = f"; n = {n} < 5: too few for a trustworthy interval" if n < 5 else ""
    ax.set_xlabel(f"{metric} % (95% CI over {n} {unit}{few})")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(5.0, float(t.score_ci_high.max()) * 1.15))
    dax.errorbar(t.score_vs_baseline, y, xerr=[t.score_vs_baseline - t.score_vs_baseline_ci_low,
                                                t.score_vs_baseline_ci_high - t.score_vs_baseline],
                 fmt="o", color="#2166ac", capsize=3)
    dax.axvline(0, color="grey", lw=0.8)
    dax.set_yticks(y, [""] * len(y))
    dax.set_xlabel(f"paired difference to {baseline} (points, 95% CI)")
