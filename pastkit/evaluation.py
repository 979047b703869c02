"""Closed-book evaluation (paper Appendix D.4.2) and the intervals every reported number carries.

Intervals are bootstrap percentile intervals over questions, so they serve the binary LLM judge and the
continuous token-F1 judge alike. Comparisons between two methods on the same questions use the paired
bootstrap of the per-question difference, which is far tighter than two overlapping marginal intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .generation import generate
from .squad import QA_PROMPT


def closed_book_answers(model_dir, items: list[dict], judge, max_new_tokens: int, use_vllm: bool = False,
                        model_and_tok=None) -> pd.DataFrame:
    """Greedy answers to `items` ({question, answer}) without the passage, each scored by `judge`."""
    prompts = [QA_PROMPT.format(question=it["question"]) for it in items]
    preds = generate(model_dir, prompts, max_new_tokens=max_new_tokens, use_vllm=use_vllm, desc="answer",
                     model_and_tok=model_and_tok)
    rows = [{"question": it["question"], "gold": it["answer"], "prediction": p[0],
             "score": judge.score(it["question"], it["answer"], p[0])} for it, p in zip(items, preds)]
    return pd.DataFrame(rows)


def bootstrap_interval(scores, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over the items."""
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(a, b, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean of a − b, low, high) over paired items (same questions, same order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same questions: {a.shape} vs {b.shape}")
    return bootstrap_interval(a - b, level, n_boot, seed)
